"""Benchmark: how many LLM-paced streams one server carries (continuous batching on and off).

``python -m benchmarks.capacity [--clients 1,2,4,8] [--sentences 4] [--tokens 32] [--json out.json]``

N clients connect to the real server (in-process, ``/ws/stream``, through
``tts_server.StreamClient``) at the same moment; each streams an LLM-paced reply (a
token every ``--token-interval-ms``, ``--sentences`` sentences) and reads everything
the server sends. The model is Soprano-1.1-80M's real-size configuration with random
weights, every sentence forced to ``--tokens`` audio tokens of 64 ms (weights do not
change the cost). Per N:

* **TTFA p50 / p95**: from sending the token that completes a sentence (the segmenter's
  own cut, replayed on the client side) to the first audio byte of that sentence, over
  all sentences of all clients;
* **stall**: each client plays its audio in real time once the first 200 ms
  (``--start-buffer-ms``) have arrived; whenever it runs dry before its reply's audio is
  complete it waits, and that waiting is summed (over clients, and the worst client);
* **aggregate**: seconds of audio delivered to all clients per second of wall clock,
  from the first token to the last audio byte.

The same clients run in the same process against the server with the model call and
the decoder not overlapped (``[engine] overlap = false``), with continuous batching
switched off (``[engine] batching = false``: one stream's chunk at a time, earliest
deadline first), and against ``soprano-tts``'s own ``SopranoTTS.infer_stream``
(transformers, chunk_size 1) serving the N clients one after another (no server, no
WebSocket: each sentence is synthesised as soon as it is complete and the reference is
free). Ratios are printed. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river.",
    "Streaming speech starts while the model is still writing the reply.",
    "Can you hear the first words before the sentence is finished?",
    "Every chunk is decoded exactly where it becomes final!",
    "Many voices share one model call in every single step.",
    "Latency matters most for the very first words of an answer.",
    "A slow reader never holds up any of the other listeners.",
    "This is the last sentence of the capacity benchmark run.",
]


@dataclass
class ClientRun:
    """What one client saw: sentence completion times and its audio arrivals (perf_counter seconds)."""

    started: float = 0.0  # when the first token was sent
    completed: list[float] = field(default_factory=list)  # when each sentence's completing token was sent
    first_audio: list[float] = field(default_factory=list)  # first audio of each sentence
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (time, audio seconds)

    def ttfa_ms(self) -> list[float]:
        return [(a - c) * 1000 for c, a in zip(self.completed, self.first_audio, strict=False)]

    def audio_s(self) -> float:
        return sum(d for _, d in self.arrivals)

    def stall_s(self, start_buffer_s: float) -> float:
        """Seconds a real-time player that starts after ``start_buffer_s`` of audio waits for more."""
        if not self.arrivals:
            return 0.0
        buffered = 0.0
        clock = None  # when the audio buffered so far will have finished playing
        stall = 0.0
        for at, duration in self.arrivals:
            if clock is None:
                buffered += duration
                if buffered >= start_buffer_s:
                    clock = at + buffered
                continue
            if at > clock:  # ran dry before this chunk arrived
                stall += at - clock
                clock = at
            clock += duration
        return stall


def _model_dir(tokens: int) -> Path:
    from testing.soprano_model import REAL_CONFIG, build_soprano_dir

    target = Path(tempfile.gettempdir()) / f"soprano-real-random-{tokens}"
    if not (target / "decoder.pth").exists():
        build_soprano_dir(target, audio_tokens=tokens, config=REAL_CONFIG)
    return target


def _replies(n: int, sentences: int) -> list[str]:
    return [" ".join(SENTENCES[(c + k) % len(SENTENCES)] for k in range(sentences)) for c in range(n)]


async def _client(url: str, reply: str, interval_s: float, start: asyncio.Event) -> ClientRun:
    from tts_server import Audio, Flushed, SegmentDone, StreamClient, text_pieces
    from tts_server.segmenter import Segmenter

    run = ClientRun()
    segmenter = Segmenter()  # the server's default cuts: tells which token completes a sentence
    async with await StreamClient.connect(url, heartbeat_s=None) as client:
        await start.wait()

        async def send() -> None:
            run.started = time.perf_counter()
            for piece in text_pieces(reply):
                now = time.perf_counter()
                run.completed.extend(now for _ in segmenter.push(piece))
                await client.push(piece)
                await asyncio.sleep(interval_s)
            run.completed.extend(time.perf_counter() for _ in segmenter.flush())
            await client.flush()

        sender = asyncio.create_task(send())
        waiting_first = True
        while True:
            event = await client.receive()
            now = time.perf_counter()
            if isinstance(event, Audio):
                if waiting_first:
                    run.first_audio.append(now)
                    waiting_first = False
                run.arrivals.append((now, event.duration_s))
            elif isinstance(event, SegmentDone):
                waiting_first = True
            elif isinstance(event, Flushed):
                break
        await sender
    return run


async def _bench_server(
    engine: Any, batching: bool, counts: list[int], replies: list[str], interval_s: float, overlap: bool = True
) -> dict:
    from aiohttp.test_utils import TestServer

    from tts_server import create_app, load_config

    # Every client comes from 127.0.0.1: the per-client fair share must admit all of them.
    most = max(counts)
    config = load_config(
        None,
        {
            "engine": {"warmup": True, "batching": batching, "overlap": overlap},
            "server": {"max_streams_per_client": most, "max_streams": max(most, 16)},
        },
    )
    server = TestServer(create_app(config, engine=engine), host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("/ws/stream")).replace("http", "ws", 1)
    out: dict[int, list[ClientRun]] = {}
    try:
        for n in counts:
            start = asyncio.Event()
            tasks = [asyncio.create_task(_client(url, replies[i], interval_s, start)) for i in range(n)]
            await asyncio.sleep(0.5)  # all connected
            start.set()
            out[n] = list(await asyncio.gather(*tasks))
    finally:
        await server.close()
    return out


def _bench_reference(model_dir: Path, counts: list[int], replies: list[str], interval_s: float) -> dict:
    """soprano-tts's infer_stream serving the N clients one after another, each sentence when complete."""
    from soprano.tts import SopranoTTS

    from tts_server import text_pieces
    from tts_server.segmenter import Segmenter

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # it prints its latency
        tts = SopranoTTS(model_path=str(model_dir), device="cpu")
    out: dict[int, list[ClientRun]] = {}
    for n in counts:
        # The same LLM pacing: when each sentence of each client is complete, from t0.
        schedules = []
        for reply in replies[:n]:
            segmenter, at = Segmenter(), 0.0
            done: list[tuple[float, str]] = []
            for piece in text_pieces(reply):
                done.extend((at, s) for s in segmenter.push(piece))
                at += interval_s
            done.extend((at, s) for s in segmenter.flush())
            schedules.append(done)
        t0 = time.perf_counter()
        runs = []
        for schedule in schedules:
            run = ClientRun(started=t0)
            for offset, sentence in schedule:
                ready = t0 + offset
                run.completed.append(ready)
                time.sleep(max(0.0, ready - time.perf_counter()))
                first = True
                with contextlib.redirect_stdout(quiet):
                    for chunk in tts.infer_stream(sentence, chunk_size=1):
                        now = time.perf_counter()
                        if first:
                            run.first_audio.append(now)
                            first = False
                        run.arrivals.append((now, chunk.numel() / 32_000))
            runs.append(run)
        out[n] = runs
    return out


def _summary(runs: list[ClientRun], start_buffer_s: float) -> dict[str, float]:
    ttfa = sorted(t for r in runs for t in r.ttfa_ms())
    stalls = [r.stall_s(start_buffer_s) for r in runs]
    begin = min(r.started for r in runs)  # the first token sent
    end = max(r.arrivals[-1][0] for r in runs if r.arrivals)  # the last audio received
    audio = sum(r.audio_s() for r in runs)
    return {
        "ttfa_ms_p50": statistics.median(ttfa),
        "ttfa_ms_p95": ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))],
        "stall_s_sum": sum(stalls),
        "stall_s_worst": max(stalls),
        "audio_s": audio,
        "wall_s": end - begin,
        "aggregate_rtx": audio / (end - begin),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,2,4,8", help="numbers of concurrent clients")
    parser.add_argument("--sentences", type=int, default=4, help="sentences per reply")
    parser.add_argument("--tokens", type=int, default=32, help="audio tokens (64 ms) per sentence")
    parser.add_argument("--token-interval-ms", type=float, default=25.0, help="time between LLM tokens")
    parser.add_argument("--start-buffer-ms", type=float, default=200.0, help="audio a client buffers before playing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the server's default)")
    parser.add_argument("--no-reference", action="store_true", help="skip soprano-tts infer_stream (slow)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    import torch

    from tts_server.engines.soprano import SopranoEngine
    from tts_server.service import inference_threads

    torch.set_num_threads(inference_threads(args.threads))
    counts = [int(n) for n in args.clients.split(",")]
    replies = _replies(max(counts), args.sentences)
    interval_s = args.token_interval_ms / 1000
    start_buffer_s = args.start_buffer_ms / 1000
    model_dir = _model_dir(args.tokens)
    engine = SopranoEngine(model_dir, device="cpu", max_batch=max(16, max(counts)))
    modes: dict[str, dict[int, list[ClientRun]]] = {}
    modes["batched"] = asyncio.run(_bench_server(engine, True, counts, replies, interval_s))
    modes["batched, model call and decoder not overlapped"] = asyncio.run(
        _bench_server(engine, True, counts, replies, interval_s, overlap=False)
    )
    modes["unbatched"] = asyncio.run(_bench_server(engine, False, counts, replies, interval_s))
    if not args.no_reference:
        result: dict[int, list[ClientRun]] = {}

        def reference() -> None:
            result.update(_bench_reference(model_dir, counts, replies, interval_s))

        worker = threading.Thread(target=reference)  # a thread of its own, like the server's inference
        worker.start()
        worker.join()
        modes["soprano-tts infer_stream, one client after another"] = result
    table = {name: {n: _summary(runs, start_buffer_s) for n, runs in by_n.items()} for name, by_n in modes.items()}
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "engine_dtype": engine.dtype,
        },
        "tokens_per_sentence": args.tokens,
        "sentences_per_reply": args.sentences,
        "token_interval_ms": args.token_interval_ms,
        "start_buffer_ms": args.start_buffer_ms,
        "results": {name: {str(n): row for n, row in by_n.items()} for name, by_n in table.items()},
    }
    print(
        f"Soprano-1.1-80M configuration, random weights ({engine.dtype} backbone), "
        f"{args.sentences} sentences x {args.tokens} tokens ({args.tokens * 0.064:.2f} s) per reply, "
        f"LLM tokens every {args.token_interval_ms:g} ms, {torch.get_num_threads()} torch threads"
    )
    print(
        f"{'server':<52}{'N':>3}{'TTFA p50':>10}{'TTFA p95':>10}{'stall sum':>11}{'worst':>8}"
        f"{'audio s/s':>11}{'vs N=1':>8}"
    )
    for name, by_n in table.items():
        base = by_n[counts[0]]["aggregate_rtx"]
        for n, row in by_n.items():
            print(
                f"{name:<52}{n:>3}{row['ttfa_ms_p50']:>8.0f}ms{row['ttfa_ms_p95']:>8.0f}ms"
                f"{row['stall_s_sum']:>10.2f}s{row['stall_s_worst']:>7.2f}s{row['aggregate_rtx']:>11.2f}"
                f"{row['aggregate_rtx'] / base:>7.2f}x"
            )
    batched = table["batched"]
    for other in [name for name in table if name != "batched"]:
        ratios = "  ".join(
            f"N={n}: {batched[n]['aggregate_rtx'] / table[other][n]['aggregate_rtx']:.2f}x" for n in counts
        )
        print(f"aggregate, batched / {other}: {ratios}")
    if 1 in batched and 4 in batched:
        gain = batched[4]["aggregate_rtx"] / batched[1]["aggregate_rtx"]
        print(f"batched aggregate N=4 / N=1: {gain:.2f}x (target >= 3)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
