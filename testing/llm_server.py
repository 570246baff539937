"""A scripted OpenAI-compatible streaming chat server, for tests and the benchmark.

It serves ``POST /v1/chat/completions`` with ``"stream": true`` as llama.cpp's server,
Ollama and OpenAI do (server-sent ``chat.completion.chunk`` objects, then
``data: [DONE]``), so the real ``openai`` client talks to it unchanged. Each request is
answered by a :class:`Script`: the tokens and their pacing, or a fault (an HTTP error,
an error event mid-stream, a connection dropped mid-stream). Every request is logged
with the time each token was written and whether the client went away early.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tts_server import text_pieces


@dataclass
class Script:
    """How to answer one request.

    Attributes:
        tokens: the reply's pieces, in order.
        delay_s: pause before each token after the first (the LLM's token rate).
        first_delay_s: pause before the first token (time to first token).
        status: HTTP status; not 200 answers ``{"error": {...}}`` with it instead of streaming.
        fail_after: send an error event after this many tokens (and end the stream).
        drop_after: close the connection without finishing after this many tokens.
        repeat: stream ``tokens`` again and again until the client goes away.
    """

    tokens: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    first_delay_s: float = 0.0
    status: int = 200
    fail_after: int | None = None
    drop_after: int | None = None
    repeat: bool = False


@dataclass
class RequestLog:
    """One request as the server saw it (times are ``time.perf_counter()``)."""

    body: dict[str, Any]
    received_at: float
    token_times: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    finished_at: float | None = None
    client_gone_at: float | None = None


class LocalLLM:
    """The server. ``await start()`` returns its base URL (``http://127.0.0.1:PORT/v1``).

    Args:
        respond: picks the :class:`Script` for a request body; by default the next queued
            script (:meth:`queue`), or a one-sentence reply when none is queued.
    """

    def __init__(self, respond: Callable[[dict[str, Any]], Script] | None = None) -> None:
        self.respond = respond or self._next_script
        self.requests: list[RequestLog] = []
        self._scripts: collections.deque[Script] = collections.deque()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def queue(self, *scripts: Script) -> None:
        """Answer the next requests with these scripts, in order."""
        self._scripts.extend(scripts)

    def _next_script(self, body: dict[str, Any]) -> Script:
        return self._scripts.popleft() if self._scripts else Script(text_pieces("Hello from the local model."))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port); returns the base URL."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}/v1"
        return self.base_url

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        log = RequestLog(body, time.perf_counter())
        self.requests.append(log)
        script = self.respond(body)
        if script.status != 200:
            return web.json_response(
                {
                    "error": {
                        "message": f"scripted failure {script.status}",
                        "type": "server_error",
                        "code": script.status,
                    }
                },
                status=script.status,
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        model = body.get("model", "local")
        try:
            await self._event(response, {"role": "assistant", "content": ""}, model)
            if script.first_delay_s:
                await asyncio.sleep(script.first_delay_s)
            sent = 0
            while True:
                for token in script.tokens:
                    if sent and script.delay_s:
                        await asyncio.sleep(script.delay_s)
                    if script.drop_after is not None and sent >= script.drop_after:
                        assert request.transport is not None
                        request.transport.abort()
                        return response
                    if script.fail_after is not None and sent >= script.fail_after:
                        error = {"error": {"message": "scripted mid-stream failure", "type": "server_error"}}
                        await response.write(f"data: {json.dumps(error)}\n\n".encode())
                        return response
                    await self._event(response, {"content": token}, model)
                    log.tokens.append(token)
                    log.token_times.append(time.perf_counter())
                    sent += 1
                if not script.repeat:
                    break
            await self._event(response, {}, model, finish="stop")
            await response.write(b"data: [DONE]\n\n")
            log.finished_at = time.perf_counter()
        except (ConnectionResetError, asyncio.CancelledError):
            log.client_gone_at = time.perf_counter()
            raise
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    @staticmethod
    async def _event(
        response: web.StreamResponse, delta: dict[str, Any], model: str, finish: str | None = None
    ) -> None:
        chunk = {
            "id": "chatcmpl-local",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
