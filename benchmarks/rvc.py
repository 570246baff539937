"""Benchmark of streaming RVC: real-time factor and added latency per block setting.

Builds a real-size random-weight v2 48 kHz voice and HuBERT-base (same shapes and so
the same cost as real files), converts espeak-ng speech with :class:`StreamingConverter`
for block 100/250/500 ms × context 0.5/1/2.5 s, and reports per setting:

* ``rtf``: processing time / audio duration (< 1 keeps up with real time);
* ``block_ms_mean`` / ``block_ms_p95``: compute time per block;
* ``added_latency_ms``: what RVC adds to the time to first audio of a block —
  block length (input must be collected) + mean compute per block + crossfade + search
  (the SOLA tail held back).

Usage::

    python -m benchmarks.rvc [--seconds 3] [--f0 pm|rmvpe] [--json out.json] [--device cpu|cuda]

On CUDA the models run in float16. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rvc import StreamingConverter, VoiceConverter, load_content_encoder, load_f0_estimator, load_voice
from rvc.converter import resample
from testing import rvc_assets as ra

log = logging.getLogger(__name__)

BLOCKS_MS = (100, 250, 500)
CONTEXTS_MS = (500, 1000, 2500)
INPUT_RATE = 32000
CHUNK = 2048


def _speech(seconds: float) -> np.ndarray:
    from tts_server.engines.espeak import synthesize_speech

    text = "The quick brown fox jumps over the lazy dog. " * max(1, int(seconds / 2) + 1)
    audio, sr = synthesize_speech(text)
    return resample(audio, sr, INPUT_RATE)[: int(seconds * INPUT_RATE)]


def run(
    seconds: float = 3.0, f0_method: str = "pm", device: str = "cpu", blocks_ms=BLOCKS_MS, contexts_ms=CONTEXTS_MS
) -> dict:
    """Run the benchmark; returns a JSON-serialisable dict (``rows`` holds one dict per setting)."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        voice = load_voice(ra.write_voice(d / "voice.pth", "v2", 48000, small=False), device=device, dtype=dtype)
        hubert = load_content_encoder(ra.write_fairseq_hubert(d / "hubert_base.pt"), device=device, dtype=dtype)
        rmvpe = ra.write_rmvpe(d / "rmvpe.pt") if f0_method == "rmvpe" else None
        f0 = load_f0_estimator(f0_method, rmvpe_path=rmvpe, device=device, dtype=dtype)
    converter = VoiceConverter(voice, hubert, f0)
    audio = _speech(seconds)
    duration = len(audio) / INPUT_RATE
    rows = []
    for block_ms in blocks_ms:
        for context_ms in contexts_ms:
            stream = StreamingConverter(converter, INPUT_RATE, block_ms=block_ms, context_ms=context_ms)
            stream.process(np.zeros(int(INPUT_RATE * block_ms / 1000), np.float32))  # warm-up block
            per_block = []
            total = 0.0
            for i in range(0, len(audio), CHUNK):
                t0 = time.perf_counter()
                out = stream.process(audio[i : i + CHUNK])
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                total += dt
                if len(out):
                    per_block.append(dt * 1000 / (len(out) // stream.block_samples))
            mean = float(np.mean(per_block)) if per_block else float("nan")
            rows.append(
                {
                    "block_ms": block_ms,
                    "context_ms": context_ms,
                    "rtf": total / duration,
                    "block_ms_mean": mean,
                    "block_ms_p95": float(np.percentile(per_block, 95)) if per_block else None,
                    "added_latency_ms": block_ms + mean + stream.latency_samples * 1000 / stream.output_sample_rate,
                    "blocks": len(per_block),
                }
            )
            log.info("block %d ms, context %d ms: rtf %.2f", block_ms, context_ms, rows[-1]["rtf"])
    return {
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "voice": "v2 48k (real size, random weights)",
        "content_encoder": "HuBERT-base (real size, random weights)",
        "f0": f0_method,
        "audio_seconds": duration,
        "rows": rows,
    }


def format_table(result: dict) -> str:
    lines = [
        f"RVC streaming on {result['device']} ({result['dtype']}, {result['threads']} threads), "
        f"F0 {result['f0']}, {result['audio_seconds']:.1f} s of speech",
        f"{'block ms':>8} {'context ms':>10} {'rtf':>6} {'ms/block':>9} {'p95':>7} {'added latency ms':>17}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['block_ms']:>8} {r['context_ms']:>10} {r['rtf']:>6.2f} {r['block_ms_mean']:>9.0f} "
            f"{r['block_ms_p95'] or float('nan'):>7.0f} {r['added_latency_ms']:>17.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="speech converted per setting")
    parser.add_argument("--f0", default="pm", choices=("pm", "rmvpe"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda (fp16); default cpu")
    parser.add_argument("--also-cuda", action="store_true", help="run again on CUDA in fp16 when available")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = [run(args.seconds, args.f0, args.device)]
    if args.also_cuda and torch.cuda.is_available() and not args.device.startswith("cuda"):
        results.append(run(args.seconds, args.f0, "cuda"))
    for r in results:
        print(format_table(r))
    if args.json:
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))


if __name__ == "__main__":
    main()
