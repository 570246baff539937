"""Benchmark: time to first audio (TTFA) and real-time factor (RTF) of the server.

``python -m benchmarks.tts [--sentences N] [--tokens T] [--json out.json]``

Builds a random-weight Soprano with the real Soprano-1.1-80M configuration (weights do
not change the cost; every sentence is forced to ``--tokens`` audio tokens of 64 ms),
starts the real server in-process and streams each sentence into ``/ws/stream`` token
by token, as an LLM would. For each sentence:

* TTFA: from sending the token that completes the sentence to the first audio byte
  received by the WebSocket client (tokens arrive every ``--token-interval-ms``, as
  from an LLM, so the server may prefill the sentence while it is written);
* RTF: from that token to the sentence's last audio byte, over the audio's duration.

The same figures are measured in the same run for the ``soprano-tts`` package's own
``SopranoTTS.infer_stream`` (model only: no server, no WebSocket, no resampling), from
the call to its first chunk, so the ratio is visible. Not a test: numbers depend on
the machine.
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
import time
from pathlib import Path

from tts_server import OUTPUT_SAMPLE_RATE

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech starts while the model is still writing.",
    "Can you hear the first words before the sentence is done?",
    "Every chunk is decoded exactly where it is final!",
    "This is the last sentence of the benchmark run.",
    "Latency matters most for the very first words of a reply.",
]


def _model_dir(path: Path | None, tokens: int) -> Path:
    from testing.soprano_model import REAL_CONFIG, build_soprano_dir

    target = path or Path(tempfile.gettempdir()) / f"soprano-real-random-{tokens}"
    if not (target / "decoder.pth").exists():
        build_soprano_dir(target, audio_tokens=tokens, config=REAL_CONFIG)
    return target


async def _bench_server(model_dir: Path, sentences: list[str], token_interval_s: float, prefill: bool) -> list[dict]:
    from aiohttp.test_utils import TestServer

    from tts_server import Audio, SegmentDone, StreamClient, create_app, load_config, text_pieces
    from tts_server.engines.soprano import SopranoEngine

    engine = await asyncio.to_thread(SopranoEngine, model_dir, device="cpu")
    config = load_config(None, {"engine": {"warmup": True, "prefill": prefill}})
    server = TestServer(create_app(config, engine=engine), host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("/ws/stream")).replace("http", "ws", 1)
    rows = []
    try:
        async with await StreamClient.connect(url, heartbeat_s=None) as client:
            for sentence in sentences:
                tokens = text_pieces(sentence)
                for token in tokens[:-1]:
                    await client.push(token, 0.0)
                    await asyncio.sleep(token_interval_s)  # the LLM writing
                sent = time.perf_counter()
                await client.push(tokens[-1], 0.0)
                await client.push(" ")  # the next sentence's first token
                first = last = sent
                samples = 0
                while True:
                    event = await client.receive()
                    if isinstance(event, Audio):
                        last = time.perf_counter()
                        first = last if samples == 0 else first
                        samples += event.pcm.size
                    elif isinstance(event, SegmentDone):
                        break
                audio_s = samples / OUTPUT_SAMPLE_RATE
                rows.append(
                    {
                        "ttfa_ms": (first - sent) * 1000,
                        "server_ttfa_ms": event.ttfa_ms,  # segment cut → first chunk queued, inside the server
                        "rtf": (last - sent) / audio_s,
                        "audio_s": audio_s,
                    }
                )
    finally:
        await server.close()
    return rows


def _bench_reference(model_dir: Path, sentences: list[str]) -> list[dict]:
    from soprano.tts import SopranoTTS

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        tts = SopranoTTS(model_path=str(model_dir), device="cpu")
    rows = []
    for sentence in sentences:
        with contextlib.redirect_stdout(quiet):
            start = time.perf_counter()
            first = start
            samples = 0
            for chunk in tts.infer_stream(sentence, chunk_size=1):
                first = time.perf_counter() if samples == 0 else first
                samples += chunk.numel()
            end = time.perf_counter()
        audio_s = samples / 32_000
        rows.append({"ttfa_ms": (first - start) * 1000, "rtf": (end - start) / audio_s, "audio_s": audio_s})
    return rows


def _summary(rows: list[dict]) -> dict:
    ttfa = [r["ttfa_ms"] for r in rows]
    rtf = [r["rtf"] for r in rows]
    summary = {
        "ttfa_ms_median": statistics.median(ttfa),
        "ttfa_ms_min": min(ttfa),
        "ttfa_ms_max": max(ttfa),
        "rtf_median": statistics.median(rtf),
        "sentences": len(rows),
        "audio_s_per_sentence": rows[0]["audio_s"],
    }
    if "server_ttfa_ms" in rows[0]:
        summary["server_internal_ttfa_ms_median"] = statistics.median(r["server_ttfa_ms"] for r in rows)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help="sentences per path")
    parser.add_argument("--tokens", type=int, default=48, help="audio tokens (64 ms) per sentence")
    parser.add_argument("--model-dir", type=Path, help="reuse/build the random real-size model here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--token-interval-ms",
        type=float,
        default=25.0,
        help="time between LLM tokens sent to the server (25 ms = 40 tokens/s)",
    )
    parser.add_argument("--no-prefill", action="store_true", help="switch off speculative prefill ([engine] prefill)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sentences = (SENTENCES * (args.sentences // len(SENTENCES) + 1))[: args.sentences]
    model_dir = _model_dir(args.model_dir, args.tokens)
    ours = _summary(
        asyncio.run(_bench_server(model_dir, sentences, args.token_interval_ms / 1000, not args.no_prefill))[1:]
    )
    reference = _summary(_bench_reference(model_dir, sentences)[1:])
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "tokens_per_sentence": args.tokens,
        "token_interval_ms": args.token_interval_ms,
        "prefill": not args.no_prefill,
        "server_ws_stream": ours,
        "soprano_infer_stream": reference,
        "ttfa_ratio": reference["ttfa_ms_median"] / ours["ttfa_ms_median"],
    }
    print(
        f"Soprano-1.1-80M configuration, random weights, {args.tokens} tokens "
        f"({args.tokens * 0.064:.2f} s) per sentence, "
        f"{len(sentences) - 1} sentences, {torch.get_num_threads()} torch threads, "
        f"LLM tokens every {args.token_interval_ms:g} ms, prefill {'off' if args.no_prefill else 'on'}"
    )
    print(f"{'path':<44} {'TTFA median':>12} {'TTFA min-max':>14} {'RTF median':>11}")
    for name, row in (
        ("server /ws/stream (token → first audio byte)", ours),
        ("soprano-tts infer_stream (call → 1st chunk)", reference),
    ):
        print(
            f"{name:<44} {row['ttfa_ms_median']:>9.0f} ms "
            f"{row['ttfa_ms_min']:>6.0f}-{row['ttfa_ms_max']:<5.0f}ms {row['rtf_median']:>11.2f}"
        )
    print(
        f"TTFA ratio (infer_stream / server): {results['ttfa_ratio']:.2f}x; inside the server "
        f"(segment cut → first chunk queued): {ours['server_internal_ttfa_ms_median']:.0f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
