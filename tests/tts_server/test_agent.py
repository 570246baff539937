"""The HAProxy agent port: "up ready N%" with the share of free stream slots, "drain" when full."""

from __future__ import annotations

import asyncio

import aiohttp

from tts_server.engines.espeak import EspeakEngine


async def agent_line(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await asyncio.wait_for(reader.read(), 5)).decode("ascii")
    finally:
        writer.close()


async def test_the_agent_follows_free_slots(make_server, unused_tcp_port):
    base, _ = await make_server(EspeakEngine(), {"server": {"max_streams": 2, "agent_port": unused_tcp_port}})
    assert await agent_line(unused_tcp_port) == "up ready 100%\n"
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(base.replace("http", "ws") + "/ws/stream")
        assert await agent_line(unused_tcp_port) == "up ready 50%\n"
        second = await http.ws_connect(base.replace("http", "ws") + "/ws/stream")
        assert await agent_line(unused_tcp_port) == "drain\n"
        await second.close()
        for _ in range(100):  # the handler closes the stream once the socket is closed
            line = await agent_line(unused_tcp_port)
            if line != "drain\n":
                break
            await asyncio.sleep(0.02)
        assert line == "up ready 50%\n"
        await first.close()
