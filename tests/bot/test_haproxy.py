"""deploy/haproxy.cfg with a real HAProxy (skipped where it is not installed; CI installs it):
two espeak replicas behind it, leastconn with the agent check, and a replica killed mid-reply."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from bot.tts import RemoteTTS
from tests.bot.test_failover import REPLY, Replicas, done_segments, sentences
from tts_server.app import PIPELINE

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")

CONFIG = Path(__file__).parents[2] / "deploy" / "haproxy.cfg"


class HAProxy:
    """``haproxy -f deploy/haproxy.cfg`` in the foreground, on loopback ports."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        env = {
            **os.environ,
            "TTS_BIND": f"127.0.0.1:{ports['front']}",
            "STATS_BIND": f"127.0.0.1:{ports['stats']}",
            "TTS1_ADDR": f"127.0.0.1:{ports['a']}",
            "TTS2_ADDR": f"127.0.0.1:{ports['b']}",
            "TTS1_AGENT_PORT": str(ports["a_agent"]),
            "TTS2_AGENT_PORT": str(ports["b_agent"]),
        }
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(CONFIG)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.url = f"ws://127.0.0.1:{ports['front']}/ws/stream"

    async def servers(self, http: aiohttp.ClientSession) -> dict[str, dict[str, str]]:
        """The replicas' rows of HAProxy's CSV status (``status``: UP, DOWN, DRAIN...; ``weight``)."""
        async with http.get(f"http://127.0.0.1:{self.ports['stats']}/;csv") as r:
            text = (await r.text()).lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row for row in rows if row["pxname"] == "tts_replicas" and row["svname"].startswith("tts")
        }

    async def wait_for(self, http: aiohttp.ClientSession, check, timeout_s: float = 15.0) -> dict:
        """Poll the status until ``check(rows)`` holds; returns the rows."""
        rows: dict = {}
        async with asyncio.timeout(timeout_s):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    rows = await self.servers(http)
                    if rows and check(rows):
                        return rows
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
async def stack(unused_tcp_port_factory):
    """Two replicas (two stream slots each) with agent ports, and HAProxy in front."""
    ports = {name: unused_tcp_port_factory() for name in ("front", "stats", "a", "b", "a_agent", "b_agent")}
    replicas = Replicas()
    for name in ("a", "b"):
        await replicas.start(name, {"max_streams": 2, "agent_port": ports[f"{name}_agent"]}, port=ports[name])
    proxy = HAProxy(ports)
    try:
        yield replicas, proxy
    finally:
        proxy.stop()
        await replicas.close()


def active(replicas: Replicas) -> dict[str, int]:
    return {name: replicas.app(name)[PIPELINE].active_streams for name in replicas.servers}


async def test_leastconn_spreads_streams_and_a_full_replica_gets_none(stack):
    replicas, proxy = stack
    async with aiohttp.ClientSession() as http:
        await proxy.wait_for(http, lambda rows: all(r["status"] == "UP" for r in rows.values()))
        held = []
        for _ in range(4):
            held.append(await http.ws_connect(proxy.url))
            await asyncio.sleep(0.05)
        assert active(replicas) == {"a": 2, "b": 2}  # leastconn: two each
        # Both full: their agents say "drain" and HAProxy sends no new stream to them.
        await proxy.wait_for(http, lambda rows: all(r["status"].startswith("DRAIN") for r in rows.values()))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(proxy.url)
        assert refused.value.status == 503  # HAProxy's "no server available", not a replica's 1013
        await held.pop().close()
        await proxy.wait_for(http, lambda rows: any(r["status"] == "UP" for r in rows.values()))
        held.append(await http.ws_connect(proxy.url))  # a slot came free: taken
        for ws in held:
            await ws.close()


async def test_a_replica_killed_mid_reply_behind_haproxy(stack, harness):
    replicas, proxy = stack
    async with aiohttp.ClientSession() as http:
        await proxy.wait_for(http, lambda rows: all(r["status"] == "UP" for r in rows.values()))
        backend = RemoteTTS(proxy.url, connect_timeout_s=5.0, reconnect_max_s=1.0)
        h = await harness(backend, bot={"buffer_s": 1.0})
        g = h.guild()
        await h.invoke("say", g.ctx, text=REPLY)
        async with asyncio.timeout(30):
            while not (g.session.current and g.session.current.reply and len(g.session.current.reply.segments) >= 2):
                await asyncio.sleep(0.01)
        serving = next(name for name, streams in active(replicas).items() if streams)
        other = "b" if serving == "a" else "a"
        before = done_segments(replicas.app(other))
        await replicas.crash(serving)
        await g.wait_idle(90)
        job = g.session.last_job
        assert job is not None and job.outcome == "done", g.text.texts()
        assert [text for _, text in job.reply.segments] == sentences(REPLY)
        assert done_segments(replicas.app(other)) > before  # the rest came from the other replica
        # HAProxy marks the dead replica down and routes every new stream to the live one.
        server_name = {"a": "tts1", "b": "tts2"}
        await proxy.wait_for(http, lambda rows: rows[server_name[serving]]["status"].startswith("DOWN"))
        opened = replicas.app(other)[PIPELINE].metrics.streams_opened
        count = opened._value.get()
        for _ in range(3):
            async with http.ws_connect(proxy.url) as ws:
                await ws.send_json({"token": "Hi.", "flush": True})
                assert (await ws.receive()).type == aiohttp.WSMsgType.BINARY
        assert opened._value.get() == count + 3
