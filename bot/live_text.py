"""The reply's text in the channel, edited as it grows, within Discord's rate limits.

Discord allows about five message edits per five seconds per channel; the text is
edited at most once per ``interval_s`` (the newest text wins, intermediate states are
skipped), and the last edit is made when the reply ends. A text longer than one
message continues in a new one. Failing to post (missing permission, Discord errors)
is logged once and never interrupts the voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import discord

log = logging.getLogger(__name__)

#: Characters per message (Discord's limit is 2000; room is left for a status suffix).
PAGE_CHARS = 1900


class Editable(Protocol):
    """A posted message (``discord.Message``)."""

    async def edit(self, *, content: str) -> object:
        """Replace the message's content."""
        ...


Send = Callable[[str], Awaitable[Editable]]


def pages(text: str, limit: int = PAGE_CHARS) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` characters, at whitespace when possible."""
    out: list[str] = []
    while len(text) > limit:
        cut = text.rfind(" ", limit // 2, limit)
        cut = cut if cut > 0 else limit
        out.append(text[:cut])
        text = text[cut:].lstrip()
    out.append(text)
    return out


class LiveText:
    """Posts a growing text and keeps it up to date.

    Args:
        send: posts a new message (``ctx.send``) and returns it.
        interval_s: least time between two edits.
    """

    def __init__(self, send: Send, interval_s: float) -> None:
        self._send = send
        self.interval_s = interval_s
        self.text = ""
        self.messages: list[Editable] = []
        self._shown: list[str] = []
        self._dirty = asyncio.Event()
        self._final = asyncio.Event()
        self._failed = False
        self._last_edit = 0.0
        self._pump: asyncio.Task[None] | None = None

    def update(self, text: str) -> None:
        """Show ``text`` (the whole text so far) at the next allowed edit."""
        if text == self.text or self._failed or self._final.is_set():
            return
        self.text = text
        self._dirty.set()
        self._start()

    async def finish(self, text: str | None = None) -> None:
        """Show the final text now (after an edit in flight) and stop updating."""
        if text is not None:
            self.text = text
        self._dirty.set()
        self._final.set()
        self._start()
        assert self._pump is not None
        await asyncio.shield(self._pump)

    def _start(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run(), name="live-text")

    async def _run(self) -> None:
        while self._dirty.is_set() or not self._final.is_set():
            await self._dirty.wait()
            wait = self._last_edit + self.interval_s - time.monotonic()
            if wait > 0 and not self._final.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._final.wait(), wait)
            await self._show()

    async def _show(self) -> None:
        self._dirty.clear()
        if self._failed:
            return
        wanted = pages(self.text) if self.text.strip() else []
        try:
            for i, page in enumerate(wanted):
                if i < len(self.messages):
                    if self._shown[i] != page:
                        await self.messages[i].edit(content=page)
                        self._shown[i] = page
                else:
                    self.messages.append(await self._send(page))
                    self._shown.append(page)
        except discord.DiscordException as exc:
            self._failed = True
            log.warning("cannot post the reply text (%s); the voice reply goes on", exc)
        self._last_edit = time.monotonic()
