"""Benchmark of the bot's voice path: ``!speak`` → LLM → TTS → Discord voice packets.

Runs the real bot path offline: the voice cog's ``speak`` command, the ``openai`` client
against a local OpenAI-compatible streaming server (tokens at a fixed rate), the
embedded pipeline, and discord.py's real ``VoiceClient``/``AudioPlayer`` whose packets are
recorded (:mod:`testing.discord_voice`), decrypted and decoded. Per scenario and reply it measures:

* ``cmd_to_voice_ms``: from invoking ``speak`` to the first voice packet sent;
* ``sentence_to_voice_ms``: from the LLM writing the token that completes the first
  sentence to the first voice packet;
* ``silence_frames``: 20 ms silence frames inserted after the reply began playing
  (stalls a listener hears); ``silent_packets`` cross-checks it on the decoded audio;
* ``start_delay_ms``: how long the first audio was held back for pacing; ``rtf``: the
  pipeline's measured real-time factor over the reply;
* ``gap_ms`` (back-to-back scenarios): from the previous reply's last frame to this
  reply's first (0: they share a frame); ``gap_silent_packets``: silent packets between
  the previous reply's last voiced packet and this reply's first, against
  ``longest_pause_packets``, the longest silent run inside a reply (its sentence pauses).

Scenarios (real-size models with random weights, so the cost is the real models'):

* ``soprano``: Soprano-1.1-80M's architecture, no voice conversion;
* ``soprano+rvc``: the same, then RVC v2 48 kHz (HuBERT-base, F0 ``pm``) through the
  server's voice catalog; on a CPU this runs slower than real time;
* ``soprano+rvc, no delay``: the same with the start delay switched off (playback starts
  with the first audio), to show what the delay prevents;
* ``soprano, back to back``: all replies asked at once, so each waits behind the one
  before; the next reply's LLM request and synthesis start once the one before has all
  its audio buffered (``[bot] prefetch_next_reply``), and ``..., no prefetch`` starts it
  only when the one before has finished playing, for comparison in the same run.

Usage::

    python -m benchmarks.bot [--replies 3] [--scenarios soprano soprano,back-to-back ...] [--json out.json]

Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import platform
import re
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from bot.pacing import StartGate
from tts_server import OUTPUT_SAMPLE_RATE

log = logging.getLogger(__name__)

#: Replies the local LLM writes (no commas: each sentence is one segment).
REPLIES = [
    "Once upon a time a small robot lived by the sea. Every morning it counted the waves on the shore. "
    "One day a wave counted back.",
    "The library was quiet except for the old clock. A cat slept on the warm windowsill. "
    "Nobody noticed the book that turned its own pages.",
    "Rain fell softly on the little town all night. In the morning the streets shone like glass. "
    "The baker opened his door and smiled.",
]
SCENARIOS = (
    "soprano",
    "soprano,back-to-back",
    "soprano,back-to-back,no-prefetch",
    "soprano+rvc",
    "soprano+rvc,no-delay",
)
TOKENS_PER_S = 40.0
VOICE_RMS = 1e-3
SOPRANO_AUDIO_TOKENS = 25  # 1.6 s of audio per sentence


class ImmediateStart(StartGate):
    """The start delay switched off: a reply plays as soon as it has any audio."""

    def ready(self, buffered_s: float, remaining_chars: int, now: float, in_progress_s: float = 0.0) -> bool:
        """True as soon as anything is buffered."""
        return buffered_s > 0


async def _invoke(command: Any, cog: Any, ctx: Any, **kwargs: Any) -> None:
    """Run a command's callback as discord.py would, with the offline context (a stand-in)."""
    await command.callback(cog, ctx, **kwargs)


def _first_sentence_token(tokens: list[str]) -> int:
    """Index of the token that completes the first sentence."""
    return next(i for i, t in enumerate(tokens) if re.search(r"[.!?]", t))


def build_models(root: Path, rvc: bool) -> tuple[Any, Any]:
    """Real-size random-weight Soprano (and RVC voice catalog); returns (engine, voices)."""
    from testing.soprano_model import REAL_CONFIG, build_soprano_dir
    from tts_server.engines.soprano import SopranoEngine

    soprano_dir = root / f"soprano-{SOPRANO_AUDIO_TOKENS}"
    if not (soprano_dir / "model.safetensors").exists():
        soprano_dir.mkdir(parents=True, exist_ok=True)
        build_soprano_dir(soprano_dir, audio_tokens=SOPRANO_AUDIO_TOKENS, config=REAL_CONFIG)
    engine = SopranoEngine(soprano_dir, device="cpu")
    if not rvc:
        return engine, None
    from testing import rvc_assets as ra
    from tts_server import VoiceCatalog
    from tts_server.config import RVCSettings

    voice, hubert = root / "voice.pth", root / "hubert_base.pt"
    if not voice.exists():
        ra.write_voice(voice, "v2", 48000, small=False)
    if not hubert.exists():
        ra.write_fairseq_hubert(hubert)
    catalog = VoiceCatalog(RVCSettings(voice=str(voice), hubert=str(hubert), f0_method="pm"), engine.sample_rate, "cpu")
    return engine, catalog


async def run_scenario(name: str, engine: Any, voices: Any, replies: int) -> dict[str, Any]:
    """Speak ``replies`` LLM replies through the offline bot; one row per reply."""
    from bot.cog import VoiceCog
    from bot.config import BotConfig, BotSettings, LLMSettings
    from bot.history import ConversationHistory
    from bot.llm import LLMClient
    from bot.session import Services, SessionManager
    from bot.tts import EmbeddedTTS, measure
    from testing.discord_voice import OfflineWorld, decode_packets
    from testing.llm_server import LocalLLM, Script
    from tts_server import Pipeline, text_pieces

    pipeline = Pipeline(engine, voices=voices)
    pipeline.start()
    llm_server = LocalLLM()
    await llm_server.start()
    back_to_back = "back-to-back" in name
    config = BotConfig(
        bot=BotSettings(history_messages=0, prefetch_next_reply=not name.endswith("no-prefetch")),
        llm=LLMSettings(base_url=llm_server.base_url, timeout_s=60.0),
    )
    backend = EmbeddedTTS(pipeline)
    estimate = await measure(backend, "Warming up the pipeline. This is a second sentence.")
    gate = ImmediateStart if name.endswith("no-delay") else StartGate
    services = Services(config, backend, LLMClient(config.llm), ConversationHistory(0), estimate, start_gate=gate)
    sessions = SessionManager(services)
    world = OfflineWorld(asyncio.get_running_loop(), player_timeout_s=5.0)
    cog = VoiceCog(types.SimpleNamespace(user=world.bot_user), sessions)  # type: ignore[arg-type]
    guild, voice, text = world.guild("bench")
    ctx = world.context(guild, text, voice)
    rows: list[dict[str, Any]] = []
    try:
        await _invoke(cog.join, cog, ctx)
        session = sessions.get(guild.id)
        vc = voice.voice_clients[-1]
        if back_to_back:
            rows = await _back_to_back(cog, ctx, session, vc, llm_server, replies)
            for row in rows:
                row["rtf"] = services.estimate(None).rtf
        for i in range(0 if back_to_back else replies):
            reply_text = REPLIES[i % len(REPLIES)]
            tokens = text_pieces(reply_text)
            llm_server.queue(Script(tokens, delay_s=1.0 / TOKENS_PER_S))
            await asyncio.sleep(0.3)
            t_cmd = time.perf_counter()
            await _invoke(cog.speak, cog, ctx, prompt=f"tell me story {i + 1}")
            while session.busy:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            job = session.last_job
            reply = job.reply if job is not None else None
            if job is None or job.outcome != "done" or reply is None or reply.playback is None:
                raise RuntimeError(f"reply {i + 1} failed: {job and job.outcome} {text.texts()[-1:]}")
            decoded = decode_packets(vc.recorder.snapshot(), vc.recorder.secret_key)
            after = decoded.times >= t_cmd
            voiced = np.flatnonzero(after & (decoded.rms() > VOICE_RMS))
            first, last = voiced[0], voiced[-1]
            silent_inside = int(np.sum(decoded.rms()[first : last + 1] < 1e-4))
            request = llm_server.requests[-1]
            t_sentence = request.token_times[_first_sentence_token(tokens)]
            playback = reply.playback
            audio_s = reply.audio_s
            rows.append(
                {
                    "reply": i + 1,
                    "cmd_to_voice_ms": (decoded.times[first] - t_cmd) * 1000,
                    "sentence_to_voice_ms": (decoded.times[first] - t_sentence) * 1000,
                    "llm_done_ms": (request.finished_at - t_cmd) * 1000 if request.finished_at else None,
                    "silence_frames": playback.underrun_frames,
                    "first_stall_at_s": None
                    if playback.first_underrun_at is None
                    else playback.first_underrun_at / OUTPUT_SAMPLE_RATE,
                    "silent_packets": silent_inside,
                    "start_delay_ms": (reply.start_delay_s or 0.0) * 1000,
                    "audio_s": audio_s,
                    "rtf": services.estimate(None).rtf,
                }
            )
            log.info("%s reply %d: %s", name, i + 1, rows[-1])
    finally:
        await sessions.aclose()
        await services.llm.aclose()
        await llm_server.close()
        pipeline.stop()
    return {"scenario": name, "warmup_rtf": estimate.rtf, "rows": rows}


async def _back_to_back(
    cog: Any, ctx: Any, session: Any, vc: Any, llm_server: Any, replies: int
) -> list[dict[str, Any]]:
    """Ask ``replies`` questions at once; one row per reply, with the gap after the one before."""
    from testing.discord_voice import decode_packets
    from testing.llm_server import Script
    from tts_server import text_pieces

    for i in range(replies):
        llm_server.queue(Script(text_pieces(REPLIES[i % len(REPLIES)]), delay_s=1.0 / TOKENS_PER_S))
    await asyncio.sleep(0.3)
    t_cmd = time.perf_counter()
    for i in range(replies):
        await _invoke(cog.speak, cog, ctx, prompt=f"tell me story {i + 1}")
    jobs: list[Any] = []
    while session.busy:
        jobs += [job for job in session.active if job not in jobs]
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    if len(jobs) != replies or any(job.outcome != "done" or job.reply is None for job in jobs):
        raise RuntimeError(f"back-to-back replies failed: {[job.outcome for job in jobs]}")
    decoded = decode_packets(vc.recorder.snapshot(), vc.recorder.secret_key)
    voiced = decoded.rms() > VOICE_RMS
    rows: list[dict[str, Any]] = []
    previous: tuple[Any, int] | None = None  # (playback, index of its last voiced packet)
    for i, job in enumerate(jobs):
        playback = job.reply.playback
        start = int(np.searchsorted(decoded.times, playback.started_at))
        end = int(np.searchsorted(decoded.times, playback.done_at, side="right")) + 1  # its last frame
        inside = np.flatnonzero(voiced[start:end]) + start
        first, last = int(inside[0]), int(inside[-1])
        runs = np.diff(np.flatnonzero(voiced[first : last + 1])) - 1
        rows.append(
            {
                "reply": i + 1,
                "cmd_to_voice_ms": (decoded.times[first] - t_cmd) * 1000,
                "llm_request_before_previous_end_ms": None
                if previous is None
                else (previous[0].done_at - llm_server.requests[-replies + i].received_at) * 1000,
                "gap_ms": None if previous is None else (playback.started_at - previous[0].done_at) * 1000,
                "gap_silent_packets": None if previous is None else max(0, first - previous[1] - 1),
                "longest_pause_packets": int(runs.max()) if runs.size else 0,
                "silence_frames": playback.underrun_frames,
                "start_delay_ms": (job.reply.start_delay_s or 0.0) * 1000,
                "audio_s": job.reply.audio_s,
            }
        )
        log.info("back to back reply %d: %s", i + 1, rows[-1])
        previous = (playback, last)
    return rows


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Medians (and totals of silence) over a scenario's replies."""
    rows = result["rows"]

    def med(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "scenario": result["scenario"],
        "replies": len(rows),
        "cmd_to_voice_ms": med("cmd_to_voice_ms"),
        "sentence_to_voice_ms": med("sentence_to_voice_ms"),
        "silence_frames": sum(r["silence_frames"] for r in rows),
        "silent_packets": sum(r.get("silent_packets", 0) for r in rows),
        "gap_ms": med("gap_ms"),
        "gap_silent_packets": med("gap_silent_packets"),
        "longest_pause_packets": max(
            (r["longest_pause_packets"] for r in rows if "longest_pause_packets" in r), default=None
        ),
        "start_delay_ms": med("start_delay_ms"),
        "audio_s": med("audio_s"),
        "rtf": rows[-1]["rtf"],
    }


def format_table(summaries: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as a text table."""
    lines = [
        f"bot voice path on {meta['cpu']} ({meta['threads']} torch threads), LLM at {TOKENS_PER_S:.0f} tokens/s, "
        f"medians over replies of ~{summaries[0]['audio_s']:.1f} s"
        if summaries
        else "",
        f"{'scenario':<32} {'rtf':>5} {'!speak→voice ms':>16} {'sentence→voice ms':>18} {'start delay ms':>15} "
        f"{'silence frames':>15} {'silent pkts':>12} {'gap ms':>7} {'gap pkts':>9} {'max pause pkts':>15}",
    ]

    def cell(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.0f}"

    for s in summaries:
        lines.append(
            f"{s['scenario']:<32} {s['rtf']:>5.2f} {cell(s['cmd_to_voice_ms'], 16)} "
            f"{cell(s['sentence_to_voice_ms'], 18)} {cell(s['start_delay_ms'], 15)} {s['silence_frames']:>15d} "
            f"{s['silent_packets']:>12d} {cell(s['gap_ms'], 7)} {cell(s['gap_silent_packets'], 9)} "
            f"{cell(s['longest_pause_packets'], 15)}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Build the models and run the chosen scenarios; returns the JSON-serialisable results."""
    import torch

    from bot.opus import load_opus

    load_opus()
    results = []
    with contextlib.ExitStack() as stack:
        root = Path(args.models) if args.models else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name in args.scenarios:
            engine, factory = await asyncio.to_thread(build_models, root, "rvc" in name)
            results.append(await run_scenario(name, engine, factory, args.replies))
    summaries = [summarize(r) for r in results]
    meta = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "tokens_per_s": TOKENS_PER_S,
        "soprano_audio_tokens": SOPRANO_AUDIO_TOKENS,
    }
    return {"meta": meta, "summary": summaries, "results": results}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=3, help="replies per scenario")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--models", help="folder to build (and reuse) the random-weight models in")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = asyncio.run(main_async(args))
    print(format_table(out["summary"], out["meta"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
