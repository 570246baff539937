"""Graceful shutdown: a real ``tts-server`` (espeak engine) stopped with SIGTERM or SIGINT mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest
import websockets

from tests.tts_server.test_cli import free_port

LONG_TEXT = "This reply goes on for a good while, sentence after sentence. " * 8


def start_server(port: int, tmp_path, extra_env: dict | None = None) -> subprocess.Popen:
    config = tmp_path / "config.toml"
    config.write_text("[engine]\nwarmup = false\n")
    return subprocess.Popen(
        [sys.executable, "-m", "tts_server", "--engine", "espeak", "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(extra_env or {})},
    )


def wait_healthy(port: int, server: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                json.load(r)
            return
        except OSError:
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)


async def speaking_client(url: str, started: asyncio.Event) -> tuple[int, str, float]:
    """Stream a long text, signal once audio flows, then read until the server closes; (code, reason, when)."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"token": LONG_TEXT, "flush": True}))
        assert isinstance(await asyncio.wait_for(ws.recv(), 30), bytes)
        started.set()
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason, time.monotonic()


async def speaking_http(url: str, started: asyncio.Event) -> bytes:
    """POST /api/speak a long text; once audio flows, read on: the body must end properly."""
    async with aiohttp.ClientSession() as http, http.post(url, json={"text": LONG_TEXT}) as r:
        assert r.status == 200
        head = await r.content.readexactly(4096)
        started.set()
        return head + await r.read()  # a chunked body cut off would raise ClientPayloadError


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_closes_both_streams_with_1001_and_exits_0_in_time(tmp_path, signum):
    port = free_port()
    server = start_server(port, tmp_path)
    try:
        await asyncio.to_thread(wait_healthy, port, server)
        url = f"ws://127.0.0.1:{port}/ws/stream"
        started = [asyncio.Event(), asyncio.Event(), asyncio.Event()]
        clients = [asyncio.create_task(speaking_client(url, event)) for event in started[:2]]
        speak = asyncio.create_task(speaking_http(f"http://127.0.0.1:{port}/api/speak", started[2]))
        async with asyncio.timeout(60):
            for event in started:
                await event.wait()
        sent = time.monotonic()
        server.send_signal(signum)
        results = await asyncio.gather(*clients)
        wav = await speak
        returncode = await asyncio.to_thread(server.wait, 10)
        exited = time.monotonic()
    finally:
        if server.poll() is None:
            server.kill()
        _, stderr = server.communicate(timeout=30)
    for code, reason, when in results:
        assert code == 1001 and reason == "server shutting down"
        assert when - sent < 5.0  # shutdown_timeout_s, the default
    assert wav[:4] == b"RIFF" and len(wav) > 4096  # the response ended after the audio already made
    assert returncode == 0, stderr
    assert exited - sent < 5.0, f"exited {exited - sent:.1f} s after the signal"
    assert "Traceback" not in stderr
    assert stderr.count("closed after") == 2 and "server shutting down" in stderr
