"""HAProxy agent check: tells a load balancer how many more streams this replica takes.

HAProxy's ``agent-check`` (see its configuration manual, "agent-check") connects to a TCP
port of each server every ``agent-inter`` and reads one ASCII line; here it is
``ready N%`` (the server's weight is scaled to N %, the share of stream slots still free)
or ``drain`` when no slot is free (weight 0: no new connection is sent to it, the open
ones stay). With ``balance leastconn`` new WebSockets therefore go to the replica with
the fewest connections among those that can still take one, and never to a full one
(which would close it with 1013). ``deploy/haproxy.cfg`` uses it.

The listener answers every connection with that one line and closes it; it reads
nothing, so nothing a client sends costs work. It listens on ``[server] host`` at
``[server] agent_port`` (0: off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

log = logging.getLogger(__name__)

#: Seconds a connection may take to receive the line before it is dropped.
WRITE_TIMEOUT_S = 2.0


class Load(Protocol):
    """What the agent reports (the pipeline)."""

    @property
    def active_streams(self) -> int:
        """Open streams."""
        ...

    @property
    def max_streams(self) -> int:
        """Streams allowed at once."""
        ...


def agent_reply(load: Load, stopping: bool = False) -> str:
    """The agent line for ``load``: ``"drain\\n"`` when full or stopping, else ``"up ready N%\\n"``.

    ``N`` is the share of free stream slots, 1…100 (HAProxy scales the configured weight by it).
    """
    free = load.max_streams - load.active_streams
    if stopping or free <= 0:
        return "drain\n"
    percent = max(1, round(100 * free / load.max_streams))
    return f"up ready {percent}%\n"


async def serve_agent(host: str, port: int, load: Callable[[], Load], stopping: Callable[[], bool]) -> asyncio.Server:
    """Start the agent listener on ``host:port``.

    Args:
        load: the pipeline (called per connection: it may not exist yet when this starts).
        stopping: True once the server shuts down (the agent then says ``drain``).

    Raises:
        OSError: the port cannot be bound.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(agent_reply(load(), stopping()).encode("ascii"))
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, host, port)
    log.info("HAProxy agent check on %s:%d", host, port)
    return server


def agent_context(
    host: str, port: int, load: Callable[[], Load], stopping: Callable[[], bool]
) -> Callable[[object], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry running :func:`serve_agent` while the application runs."""

    async def context(_app: object) -> AsyncIterator[None]:
        server = await serve_agent(host, port, load, stopping)
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()

    return context
