"""Per-server (guild) state: the voice connection, its long-lived player, and the reply queue.

A :class:`GuildSession` owns, for one guild:

* the voice client and *one* player whose source is a :class:`~bot.audio.BufferSource`
  that lives as long as the session; it is never stopped and restarted between
  replies (a fresh ``play()`` is made only after the old player thread has ended on its
  own, e.g. after a dropped connection);
* a bounded queue of replies worked off in order by the session's worker task, so a
  second ``speak`` waits behind the first; past ``max_queued_replies`` a new reply is
  refused (nothing queued is dropped);
* back to back replies: once a reply's audio is all written (it may still be playing
  for a minute), the next queued reply starts, its LLM request and its TTS stream, so
  that its audio follows the last sample of the one before with no gap
  (``[bot] prefetch_next_reply``). One reply at most is prepared ahead of the one
  playing; ``stop`` drops both, and its LLM request sees the reply before it as
  history;
* the guild's voice and pitch settings and its home voice channel (the one it was last
  asked into), kept across restarts by :class:`SessionManager` in a
  :class:`~bot.guild_store.GuildStore` when one is configured.

Nothing is shared between sessions but the TTS backend, the LLM client, the history
and the rate estimates (:class:`Services`); a fault in one guild's reply is reported in
that guild's channel and its worker carries on; other guilds never see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import discord

from tts_server import text_pieces

from .audio import BufferSource
from .config import BotConfig
from .errors import (
    BotError,
    QueueFull,
    VoiceConnectError,
    VoiceConnectionLost,
    VoicePermissionError,
)
from .guild_store import GuildSettings, GuildStore
from .history import INTERRUPTED_MARK, ConversationHistory, Turn
from .live_text import LiveText, Send
from .llm import LLMClient, Message
from .pacing import RateEstimate, StartGate
from .speech import Reply, iterate
from .tts import TTSBackend, measure

log = logging.getLogger(__name__)

#: The note a turn cut off by a fault gets in the history.
CUT_OFF_NOTE = "[cut off by an error]"

#: How long ``stop`` waits for the interrupted reply to be wound up before answering.
STOP_WAIT_S = 2.0


@dataclass
class Services:
    """What all sessions share.

    Attributes:
        config: the bot's settings.
        tts: the TTS backend.
        llm: the LLM client.
        history: conversation history per text channel.
        estimates: rate estimates per voice name (``None``: the default voice), seeded
            from ``default_estimate`` (the start-up measurement).
        start_gate: makes the gate that decides when a reply starts playing
            (``gate(estimate, clock_start)``); :class:`~bot.pacing.StartGate` plans a start
            that never stalls.
    """

    config: BotConfig
    tts: TTSBackend
    llm: LLMClient
    history: ConversationHistory
    default_estimate: RateEstimate = field(default_factory=RateEstimate)
    estimates: dict[str | None, RateEstimate] = field(default_factory=dict)
    start_gate: Callable[[RateEstimate, float], StartGate] = StartGate
    _measuring: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    def estimate(self, voice: str | None) -> RateEstimate:
        """The running rate estimate of ``voice``."""
        if voice not in self.estimates:
            d = self.default_estimate
            self.estimates[voice] = RateEstimate(rtf=d.rtf, seconds_per_char=d.seconds_per_char, chunk_s=d.chunk_s)
        return self.estimates[voice]

    def learn_voice(self, voice: str | None) -> None:
        """Measure ``voice`` in the background unless it has been (an RVC voice can be much
        slower than the default; its first reply should already start late enough)."""
        if voice in self.estimates and self.estimates[voice].segments:
            return

        async def run() -> None:
            try:
                self.estimates[voice] = await measure(self.tts, voice=voice, estimate=self.estimate(voice))
                log.info("voice %s: rtf %.2f", voice or "default", self.estimates[voice].rtf)
            except Exception as exc:  # only an estimate: replies measure as they go
                log.warning("could not measure voice %s: %s", voice or "default", exc)

        task = asyncio.create_task(run(), name=f"measure-{voice}")
        self._measuring.add(task)
        task.add_done_callback(self._measuring.discard)

    async def measured(self) -> None:
        """Wait until the voices being measured in the background are done."""
        if self._measuring:
            await asyncio.gather(*self._measuring, return_exceptions=True)


@dataclass
class Job:
    """One queued reply.

    Attributes:
        kind: ``"speak"`` (prompt → LLM → voice) or ``"say"`` (text → voice).
        text: the prompt, or the text to say.
        author: display name of who asked.
        channel_id: text channel (for the history).
        send: posts a message in that channel.
        submitted_at: ``time.perf_counter()`` at submission.
        reply: the reply once it runs.
        written: set when the reply's audio is all written (or it ended without).
        interrupted: ``stop`` cut it off (or dropped it from the queue).
        failure: a fault that aborted it from outside (the bot was disconnected).
        outcome: set when it is over: ``"done"``, ``"interrupted"`` or ``"failed"``.
        finished: set when it is over.
    """

    kind: Literal["speak", "say"]
    text: str
    author: str
    channel_id: int
    send: Send
    submitted_at: float = field(default_factory=time.perf_counter)
    reply: Reply | None = None
    interrupted: bool = False
    outcome: str = ""
    failure: BotError | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    written: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StopReport:
    """What ``stop`` did: ``interrupted`` a reply in progress, and ``dropped`` queued ones."""

    interrupted: bool
    dropped: int


class GuildSession:
    """One guild's voice connection, player, queue and settings.

    Args:
        guild_id: the guild's id.
        services: what all sessions share.
    """

    def __init__(self, guild_id: int, services: Services) -> None:
        self.guild_id = guild_id
        self.services = services
        cfg = services.config
        self.voice: str | None = cfg.tts.voice or None
        self.pitch_shift: float = cfg.tts.pitch_shift
        #: The voice channel the bot was last asked into (rejoined at start; ``None``: none).
        self.home_channel_id: int | None = None
        self.source = BufferSource(cfg.bot.buffer_s)
        self.voice_client: discord.VoiceClient | None = None
        #: The replies under way, in playing order: the one playing (or about to), and
        #: at most one being prepared behind it.
        self.active: list[Job] = []
        #: The reply that ended last.
        self.last_job: Job | None = None
        self.max_queued = cfg.bot.max_queued_replies
        self.prefetch = cfg.bot.prefetch_next_reply
        self._changed = asyncio.Event()  # a reply under way was written or ended
        # Bounded in submit(): the reply about to be picked up by the worker does not count
        # as waiting, so the queue itself is not given a maxsize.
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._player_alive = False
        self._player_generation = 0
        self._player_error: BaseException | None = None
        self._leaving = False
        self._loop = asyncio.get_running_loop()

    # -- voice connection --------------------------------------------------------------------

    @property
    def channel(self) -> discord.VoiceChannel | discord.StageChannel | None:
        """The voice channel the bot is in (``None`` when not connected)."""
        vc = self.voice_client
        return vc.channel if vc is not None and vc.is_connected() else None

    @property
    def current(self) -> Job | None:
        """The reply playing (or about to play), ``None`` when none is under way."""
        return self.active[0] if self.active else None

    @property
    def busy(self) -> bool:
        """True while a reply plays or waits."""
        return bool(self.active) or not self._queue.empty()

    async def join(self, channel: discord.VoiceChannel | discord.StageChannel) -> discord.VoiceClient:
        """Connect to ``channel`` (or move there) and make sure the player runs.

        Raises:
            VoicePermissionError: the bot may not connect or speak there.
            VoiceConnectError: connecting failed or timed out.
        """
        me = channel.guild.me
        perms = channel.permissions_for(me)
        if not perms.connect:
            raise VoicePermissionError(f"I don't have permission to connect to {channel.mention}.")
        if not perms.speak:
            raise VoicePermissionError(f"I don't have permission to speak in {channel.mention}.")
        timeout = self.services.config.bot.connect_timeout_s
        vc = self.voice_client
        try:
            if vc is not None and vc.is_connected():
                if vc.channel.id != channel.id:
                    await vc.move_to(channel, timeout=timeout)
            else:
                if vc is not None:  # a dead connection: drop it before connecting again
                    with contextlib.suppress(Exception):
                        await vc.disconnect(force=True)
                self._leaving = False
                vc = await channel.connect(timeout=timeout, reconnect=True, self_deaf=True)
                self.voice_client = vc
        except TimeoutError:
            raise VoiceConnectError(f"connecting to {channel.mention} timed out after {timeout:.0f} s.") from None
        except discord.ClientException as exc:
            raise VoiceConnectError(f"cannot connect to {channel.mention}: {exc}") from None
        except discord.Forbidden:
            raise VoicePermissionError(f"Discord refused me access to {channel.mention}.") from None
        self._ensure_player()
        log.info("guild %s: in voice channel %s", self.guild_id, channel.id)
        self.home_channel_id = channel.id
        return vc

    async def leave(self) -> bool:
        """Stop everything and disconnect. Returns False if the bot was not connected."""
        self._leaving = True
        await self.stop()
        vc, self.voice_client = self.voice_client, None
        self._player_alive = False
        await self.services.tts.release(self.guild_id)
        if vc is None:
            return False
        await vc.disconnect(force=True)
        return True

    def on_disconnected(self) -> None:
        """The bot was disconnected from voice by someone else (kicked, channel deleted)."""
        if self._leaving:
            return
        log.warning("guild %s: disconnected from voice", self.guild_id)
        vc, self.voice_client = self.voice_client, None
        if vc is not None:
            vc.stop()  # discord.py has stopped it already; never leave a second reader on the buffer
        self._player_alive = False
        self._fail_current(VoiceConnectionLost("I was disconnected from the voice channel."))

    def _ensure_player(self) -> None:
        """Start the long-lived player unless it runs (never restarts a live one)."""
        vc = self.voice_client
        if vc is None or (self._player_alive and vc.is_playing()):
            return
        if vc.is_playing() or vc.is_paused():
            vc.stop()  # a player whose thread already ended (dropped connection): no race
        self._player_error = None
        self._player_generation += 1
        vc.play(self.source, after=functools.partial(self._player_ended, self._player_generation), signal_type="voice")
        self._player_alive = True

    def _player_ended(self, generation: int, error: BaseException | None) -> None:
        """Player thread: its thread is ending (source closed, or the connection gave up)."""
        with contextlib.suppress(RuntimeError):  # loop closed at shutdown
            self._loop.call_soon_threadsafe(self._on_player_ended, generation, error)

    def _on_player_ended(self, generation: int, error: BaseException | None) -> None:
        if generation != self._player_generation:
            return  # an earlier player (before a leave or a reconnect): not the one playing now
        self._player_alive = False
        self._player_error = error
        if not self._leaving:
            log.warning("guild %s: voice player ended (%s)", self.guild_id, error or "connection lost")

    def check_playback(self) -> None:
        """Raise :class:`VoiceConnectionLost` if queued audio can no longer be played."""
        if self._leaving or self.voice_client is None:
            raise VoiceConnectionLost("I left the voice channel.")
        if not self._player_alive:
            detail = f": {self._player_error}" if self._player_error else ""
            raise VoiceConnectionLost(f"the voice connection dropped{detail}.")

    async def _ready_to_play(self) -> None:
        """Before a reply: connected (waiting out a reconnect) and the player running."""
        vc = self.voice_client
        if vc is None or self._leaving:
            raise VoiceConnectionLost("I'm not in a voice channel; use `join` first.")
        deadline = time.monotonic() + self.services.config.bot.connect_timeout_s
        while not vc.is_connected():
            if time.monotonic() > deadline:
                raise VoiceConnectionLost("the voice connection dropped and did not come back; use `join`.")
            await asyncio.sleep(0.1)
        self._ensure_player()

    # -- queue -------------------------------------------------------------------------------

    def submit(self, job: Job) -> int:
        """Queue a reply; returns how many replies are ahead of it.

        Raises:
            QueueFull: ``max_queued_replies`` replies are already waiting.
        """
        ahead = self._queue.qsize() + len(self.active)
        if ahead > self.max_queued:  # one is being spoken (or about to be), the rest wait
            raise QueueFull(
                f"{self.max_queued} {'reply is' if self.max_queued == 1 else 'replies are'} already waiting "
                "in this server; wait for them or use `stop`."
            )
        self._queue.put_nowait(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"guild-{self.guild_id}-replies")
        return ahead

    async def stop(self) -> StopReport:
        """Barge-in: silence now, cancel the reply in progress (LLM and TTS), drop the queue.

        The buffered audio is dropped before anything awaits, so the player sends
        silence from its next frame (≤ 20 ms).
        """
        dropped = 0
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            queued.interrupted = True
            queued.outcome = "interrupted"
            queued.finished.set()
            dropped += 1
        jobs = list(self.active)
        for job in jobs:
            job.interrupted = True
            if job.task is not None:
                job.task.cancel()  # first: the reply handles no further event
        self.source.clear()
        if not jobs:
            return StopReport(False, dropped)
        dropped += len(jobs) - 1  # the one prepared behind the one playing had not been heard
        for job in jobs:
            if job.reply is not None and not job.written.is_set():  # its TTS stream is still open
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(job.reply.tts.cancel(), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(j.finished.wait()) for j in jobs)), STOP_WAIT_S)
        return StopReport(True, dropped)

    def _fail_current(self, error: BotError) -> None:
        """Abort the reply in progress and the queue because of ``error`` (reported in the channel)."""
        for job in self.active:
            if job.task is not None:
                job.failure = error
                job.task.cancel()
        self.source.clear()
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            queued.outcome = "failed"
            queued.finished.set()

    async def aclose(self) -> None:
        """Shut down: leave voice and stop the worker."""
        with contextlib.suppress(Exception):
            await self.leave()
        self.source.close()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    # -- the worker --------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while True:
                await self._room_for_next()
                job = await self._queue.get()
                if job.finished.is_set():
                    continue
                self.active.append(job)
                job.task = asyncio.create_task(self._run(job), name=f"guild-{self.guild_id}-reply")
                job.task.add_done_callback(functools.partial(self._ended, job))
        finally:  # the session is closing: nothing may be left under way
            for job in self.active:
                if job.task is not None:
                    job.task.cancel()

    async def _room_for_next(self) -> None:
        """Wait until the next reply may start: when none is under way, or (prefetching)
        when the one under way has written all its audio and none is prepared behind it."""
        while True:
            active = self.active
            if not active or (self.prefetch and len(active) == 1 and active[0].written.is_set()):
                return
            self._changed.clear()
            await self._changed.wait()

    def _ended(self, job: Job, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self.active.remove(job)
        self.last_job = job
        job.written.set()
        job.finished.set()
        self._changed.set()

    def _written(self, job: Job) -> None:
        job.written.set()
        self._changed.set()

    async def _run(self, job: Job) -> None:
        """Run one job, and report and record its outcome, whatever happens."""
        live = LiveText(job.send, self.services.config.bot.edit_interval_s) if job.kind == "speak" else None
        error: BaseException | None = None
        try:
            await self._speak(job, live)
            job.outcome = "done"
        except asyncio.CancelledError:  # stop, or the bot was disconnected: wind up below
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            error = job.failure
            job.outcome = "failed" if error is not None else "interrupted"
        except BotError as exc:
            error = exc
            job.outcome = "failed"
        except Exception as exc:  # a bug must not take the guild's worker down
            log.exception("guild %s: reply failed", self.guild_id)
            error = exc
            job.outcome = "failed"
        finally:
            self._written(job)
            if job.reply is not None and job.reply.playback is not None and job.outcome != "done":
                self.source.drop(job.reply.playback)
        try:
            await self._wind_up(job, live, error)
        except Exception:  # reporting must not take the worker down either
            log.exception("guild %s: winding up a reply failed", self.guild_id)

    async def _speak(self, job: Job, live: LiveText | None) -> None:
        services = self.services
        await self._ready_to_play()
        stream = await services.tts.open_stream(self.guild_id, self.voice)
        completed = False  # the TTS stream is done with (closed before playback ends)
        try:
            reply = Reply(
                stream,
                self.source,
                services.estimate(self.voice),
                pitch_shift=self.pitch_shift,
                on_text=live.update if live is not None else None,
                check_playback=self.check_playback,
                start_gate=services.start_gate,
            )
            job.reply = reply
            if job.kind == "speak":
                history = services.history.messages(job.channel_id) + self._ahead_of(job)
                messages = services.llm.messages(history, f"{job.author}: {job.text}")
                await reply.synthesize(services.llm.stream_reply(messages))
            else:
                await reply.synthesize(iterate(text_pieces(job.text)))
            completed = True
        finally:
            if not completed:  # drop what the pipeline still holds for this reply
                with contextlib.suppress(Exception):
                    await asyncio.shield(stream.cancel())
            with contextlib.suppress(Exception):
                await stream.close()
        self._written(job)  # the next queued reply may start now (it plays after this one)
        await reply.wait_played()

    def _ahead_of(self, job: Job) -> list[Message]:
        """The turns of the replies still playing ahead of ``job`` in its channel, as their
        history will record them if they play to the end (if one does not, ``stop`` or the
        fault that cuts it off ends ``job`` too)."""
        messages: list[Message] = []
        for ahead in self.active:
            reply = ahead.reply
            if ahead is job or ahead.kind != "speak" or ahead.channel_id != job.channel_id or reply is None:
                continue
            if ahead.outcome == "failed":
                continue
            cut = reply.llm_error is not None
            turn = Turn(ahead.author, ahead.text, reply.text.strip(), cut, CUT_OFF_NOTE if cut else "")
            messages += turn.messages()
        return messages

    async def _wind_up(self, job: Job, live: LiveText | None, error: BaseException | None) -> None:
        """Post the final text and any error, and record the turn in the history."""
        reply = job.reply
        if error is None and reply is not None and reply.llm_error is not None:
            error = reply.llm_error
        status = ""
        if job.outcome == "interrupted":
            status = "  ⏹ *interrupted*"
        elif error is not None:
            status = "  ⚠️ *cut off*" if reply is not None and reply.text else ""
        try:
            if live is not None and reply is not None and reply.text:
                await live.finish(reply.text + status)
            if error is not None:
                message = (
                    str(error)
                    if isinstance(error, BotError)
                    else "something went wrong on my side (see the bot's log)."
                )
                await job.send(f"⚠️ {message}")
            if reply is not None and reply.tts_errors:
                await job.send(f"⚠️ {_skipped_message(reply.tts_errors)}")
        except discord.DiscordException as exc:
            log.warning("guild %s: cannot post in channel %s: %s", self.guild_id, job.channel_id, exc)
        if job.kind == "speak" and reply is not None and (reply.text or job.outcome == "interrupted"):
            if job.outcome == "done" and error is None:
                turn = Turn(job.author, job.text, reply.text.strip())
            else:
                heard, _ = reply.heard()  # whole sentences heard; Turn marks the cut with "…"
                note = INTERRUPTED_MARK if job.outcome == "interrupted" else CUT_OFF_NOTE
                turn = Turn(job.author, job.text, heard, True, note)
            self.services.history.record(job.channel_id, turn)
        if reply is not None:
            log.info(
                "guild %s: %s %s: %.2f s of audio, start delay %s, %d silence frames mid-reply",
                self.guild_id,
                job.kind,
                job.outcome,
                reply.audio_s,
                "n/a" if reply.start_delay_s is None else f"{reply.start_delay_s:.2f} s",
                reply.underrun_frames,
            )


def _skipped_message(errors: list[str]) -> str:
    """What the channel is told when the TTS skipped part of a reply (``errors``: the messages)."""
    parts = "1 part" if len(errors) == 1 else f"{len(errors)} parts"
    return f"{parts} of the reply could not be spoken ({errors[0]})."


class SessionManager:
    """The sessions of all guilds, created on first use, with their stored settings.

    Args:
        services: what all sessions share.
        store: where each guild's voice, pitch and home channel are kept across restarts
            (``None``: they are not); read by :meth:`restore`, written by :meth:`save`.
    """

    def __init__(self, services: Services, store: GuildStore | None = None) -> None:
        self.services = services
        self.store = store
        self._sessions: dict[int, GuildSession] = {}
        self._stored: dict[int, GuildSettings] = {}

    async def restore(self) -> int:
        """Read every guild's stored settings; sessions made from now on start with them.

        Returns:
            how many guilds had settings stored.
        """
        if self.store is None:
            return 0
        self._stored = await self.store.load_all()
        for guild_id, session in self._sessions.items():
            if guild_id in self._stored:
                self._apply(session, self._stored[guild_id])
        log.info("restored the settings of %d guilds from %s", len(self._stored), self.store.path)
        return len(self._stored)

    @staticmethod
    def _apply(session: GuildSession, stored: GuildSettings) -> None:
        session.voice = stored.voice
        session.pitch_shift = stored.pitch_shift
        session.home_channel_id = stored.home_channel_id

    async def save(self, guild_id: int) -> None:
        """Store the guild's current voice, pitch and home channel (a failure is logged, not raised:
        the command that changed them has taken effect all the same)."""
        session = self._sessions.get(guild_id)
        if self.store is None or session is None:
            return
        stored = GuildSettings(session.voice, session.pitch_shift, session.home_channel_id)
        if self._stored.get(guild_id) == stored:
            return
        try:
            await self.store.save(guild_id, stored)
        except Exception as exc:
            log.error("guild %s: cannot store its settings in %s: %s", guild_id, self.store.path, exc)
            return
        self._stored[guild_id] = stored

    async def rejoin_homes(self, resolve: Callable[[int], discord.VoiceChannel | discord.StageChannel | None]) -> int:
        """Join every guild's stored home voice channel (at start, once the client is ready).

        Args:
            resolve: the channel of an id (the Discord client's ``get_channel``), ``None``
                when it is gone or not a voice channel; such a home is forgotten.

        Returns:
            how many channels were joined. A failure to join is logged, and the others go on.
        """
        joined = 0
        for guild_id, stored in list(self._stored.items()):
            if stored.home_channel_id is None:
                continue
            channel = resolve(stored.home_channel_id)
            session = self.get(guild_id)
            if channel is None:
                log.warning("guild %s: home voice channel %s is gone; forgotten", guild_id, stored.home_channel_id)
                session.home_channel_id = None
                await self.save(guild_id)
                continue
            try:
                await session.join(channel)
            except BotError as exc:
                log.warning("guild %s: cannot rejoin home voice channel %s: %s", guild_id, channel.id, exc)
                continue
            joined += 1
        return joined

    def get(self, guild_id: int) -> GuildSession:
        """The guild's session (created on first use, with its stored settings if any)."""
        session = self._sessions.get(guild_id)
        if session is None:
            session = self._sessions[guild_id] = GuildSession(guild_id, self.services)
            stored = self._stored.get(guild_id)
            if stored is not None:
                self._apply(session, stored)
        return session

    def find(self, guild_id: int) -> GuildSession | None:
        """The guild's session, if it has one."""
        return self._sessions.get(guild_id)

    async def aclose(self) -> None:
        """Close every session."""
        for session in list(self._sessions.values()):
            await session.aclose()
        self._sessions.clear()
