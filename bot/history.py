"""A short conversation history per text channel, as chat messages for the LLM.

Each turn is a user prompt and the assistant's reply. A reply interrupted by ``stop``
(or cut short by a fault) is kept as what was actually heard, marked as interrupted,
so the LLM does not believe the user heard the whole answer.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from .llm import Message

#: Channels remembered at most; the least recently used is forgotten past it.
MAX_CHANNELS = 1000
INTERRUPTED_MARK = "[interrupted by the user]"


@dataclass(frozen=True)
class Turn:
    """One exchange.

    Attributes:
        author: display name of who asked.
        prompt: what they asked.
        reply: the reply's text that was spoken (all of it unless ``interrupted``).
        interrupted: the reply was cut off before it was fully spoken.
        note: why it was cut off (``INTERRUPTED_MARK`` for ``stop``, or a fault).
    """

    author: str
    prompt: str
    reply: str
    interrupted: bool = False
    note: str = ""

    def messages(self) -> list[Message]:
        """The turn as a user and an assistant message."""
        reply = self.reply
        if self.interrupted:
            reply = f"{reply} … {self.note or INTERRUPTED_MARK}" if reply else self.note or INTERRUPTED_MARK
        return [{"role": "user", "content": f"{self.author}: {self.prompt}"}, {"role": "assistant", "content": reply}]


class ConversationHistory:
    """Turns per channel, ``max_messages`` messages (two per turn) at most per channel.

    Args:
        max_messages: messages kept per channel (0 keeps nothing).
    """

    def __init__(self, max_messages: int) -> None:
        self.max_turns = max(0, max_messages) // 2
        self._channels: collections.OrderedDict[int, collections.deque[Turn]] = collections.OrderedDict()

    def messages(self, channel_id: int) -> list[Message]:
        """The channel's history, oldest first."""
        turns = self._channels.get(channel_id, ())
        return [m for turn in turns for m in turn.messages()]

    def turns(self, channel_id: int) -> list[Turn]:
        """The channel's turns, oldest first."""
        return list(self._channels.get(channel_id, ()))

    def record(self, channel_id: int, turn: Turn) -> None:
        """Append a turn (the oldest is dropped past ``max_messages``)."""
        if self.max_turns == 0:
            return
        turns = self._channels.pop(channel_id, None) or collections.deque(maxlen=self.max_turns)
        turns.append(turn)
        self._channels[channel_id] = turns
        while len(self._channels) > MAX_CHANNELS:
            self._channels.popitem(last=False)

    def clear(self, channel_id: int) -> None:
        """Forget a channel."""
        self._channels.pop(channel_id, None)
