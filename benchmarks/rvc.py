"""Benchmark of streaming RVC on this machine, side by side with rvc-next's ``StreamEngine``.

Builds a real-size random-weight v2 48 kHz voice, its index and a transformers HuBERT-base
directory (same shapes, so the same cost, as real files) and converts espeak-ng speech,
block by block, with:

* each backend of ours (:class:`rvc.StreamingConverter` on ``torch`` fp32,
  ``openvino-float32``, ``openvino-bfloat16``), and
* ``rvc-next`` 0.2.16's ``StreamEngine`` (GPL-3.0: never a dependency of this project, and
  imported nowhere else; install it where ``--rvc-next DIR`` points, e.g.
  ``pip install --target /tmp/rvcnext --no-deps rvc-next==0.2.16`` plus ``librosa``; it is
  skipped with a message when it cannot be imported),

on the same voice, index, HuBERT, F0 method (``pm``), block, context and crossfade (50 ms).
The engines take turns block by block (the order rotates each block), so machine noise hits
all of them alike. For each block × context setting it reports, per engine: RTF (compute /
audio), ms per block (median, p90), and the ratio of rvc-next's median to ours.

``--profile`` also times the parts of one block per backend (HuBERT over the buffer, prior
encoder + flow, decoder, F0, index retrieval).

Usage::

    python -m benchmarks.rvc [--seconds 4] [--blocks 100,250,500] [--contexts 500,2500]
                             [--rvc-next /tmp/rvcnext] [--profile] [--json out.json]

Not a test: timings depend on the machine; compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rvc import StreamingConverter, VoiceConverter, load_content_encoder, load_f0_estimator, load_voice
from rvc.converter import resample
from rvc.runtime import Backend, cpu_has_bf16, openvino_available
from testing import rvc_assets as ra

log = logging.getLogger(__name__)

BLOCKS_MS = (100, 250, 500)
CONTEXTS_MS = (500, 2500)
CROSSFADE_MS = 50
INPUT_RATE = 48000  # both engines take device-rate input, as a live converter would
RVC_NEXT = "rvc-next"


def _speech(seconds: float) -> np.ndarray:
    from tts_server.engines.espeak import synthesize_speech

    text = "The quick brown fox jumps over the lazy dog. " * max(1, int(seconds / 2) + 1)
    audio, sr = synthesize_speech(text)
    return resample(audio, sr, INPUT_RATE)[: int(seconds * INPUT_RATE)]


def our_backends() -> list[Backend]:
    """The backends this machine can run: torch, and OpenVINO fp32 (+ bf16 where the CPU has it)."""
    backends = [Backend()]
    if openvino_available():
        backends.append(Backend("openvino", "float32"))
        if cpu_has_bf16():
            backends.append(Backend("openvino", "bfloat16"))
    return backends


def build_assets(d: Path) -> dict[str, Path]:
    """Real-size random-weight files; the HuBERT directory sits where rvc-next looks for it."""
    return {
        "voice": ra.write_voice(d / "voice.pth", "v2", 48000, small=False),
        "index": ra.write_index(d / "voice.index", 768, n_vectors=2000),
        "hubert": ra.write_transformers_hubert(d / "hubert_base", num_layers=12, ffn=3072),
    }


def _rvc_next_factory(path: str | None, assets: dict[str, Path]) -> Callable[[int, int], Callable] | None:
    """``make(block_ms, context_ms)`` → a function converting one input block, or ``None``."""
    if path:
        sys.path.append(path)
    try:
        engine_mod = importlib.import_module("rvc_next.engine.stream.engine")
        runtime_mod = importlib.import_module("rvc_next.engine.runtime")
        params_mod = importlib.import_module("rvc_next.engine.convert.params")
        stream_mod = importlib.import_module("rvc_next.engine.stream.params")
        index_mod = importlib.import_module("rvc_next.engine.index.retrieval")
    except ImportError as exc:
        print(f"rvc-next not importable ({exc}); comparing our backends only", file=sys.stderr)
        return None
    runtime = runtime_mod.Runtime(assets["hubert"].parent, device="cpu", precision="fp32")
    voice = runtime.voice(assets["voice"])
    index = index_mod.load_index(assets["index"])
    # rms_mix_rate 1 (off) and the gate off: the same work as ours, nothing extra
    params = params_mod.VoiceParams(f0_method="pm", index_rate=0.75, protect=0.33, rms_mix_rate=1.0)

    def make(block_ms: int, context_ms: int) -> Callable:
        stream = stream_mod.StreamParams(block_ms=block_ms, crossfade_ms=CROSSFADE_MS, context_ms=context_ms)
        engine = engine_mod.StreamEngine(runtime, voice, params, stream, INPUT_RATE, index=index)
        return engine.process

    return make


def _our_factory(backend: Backend, assets: dict[str, Path]) -> Callable[[int, int], Callable]:
    voice = load_voice(assets["voice"], index_path=assets["index"], backend=backend)
    hubert = load_content_encoder(assets["hubert"], backend=backend)
    converter = VoiceConverter(voice, hubert, load_f0_estimator("pm"))

    def make(block_ms: int, context_ms: int) -> Callable:
        stream = StreamingConverter(converter, INPUT_RATE, block_ms=block_ms, context_ms=context_ms)
        return stream.process

    return make


def run(
    seconds: float = 4.0,
    blocks_ms=BLOCKS_MS,
    contexts_ms=CONTEXTS_MS,
    rvc_next_path: str | None = None,
    warmup_blocks: int = 2,
) -> dict:
    """Run the side-by-side; returns a JSON-serialisable dict (``rows``: one per setting and engine)."""
    audio = _speech(seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        assets = build_assets(Path(tmp))
        factories: dict[str, Callable[[int, int], Callable]] = {b.name: _our_factory(b, assets) for b in our_backends()}
        theirs = _rvc_next_factory(rvc_next_path, assets)
        if theirs is not None:
            factories[RVC_NEXT] = theirs
        for block_ms in blocks_ms:
            for context_ms in contexts_ms:
                n = INPUT_RATE * block_ms // 1000
                engines = {name: make(block_ms, context_ms) for name, make in factories.items()}
                times: dict[str, list[float]] = {name: [] for name in engines}
                blocks = [audio[i : i + n] for i in range(0, len(audio) - n + 1, n)]
                names = list(engines)
                for b, block in enumerate([np.zeros(n, np.float32)] * warmup_blocks + blocks):
                    order = names[b % len(names) :] + names[: b % len(names)]  # rotate who goes first
                    for name in order:
                        t0 = time.perf_counter()
                        engines[name](block)
                        if b >= warmup_blocks:
                            times[name].append(time.perf_counter() - t0)
                theirs_median = float(np.median(times[RVC_NEXT])) * 1000 if RVC_NEXT in times else None
                for name, ts in times.items():
                    ms = np.asarray(ts) * 1000
                    median = float(np.median(ms))
                    rows.append(
                        {
                            "engine": name,
                            "block_ms": block_ms,
                            "context_ms": context_ms,
                            "rtf": float(np.sum(ms)) / (len(ms) * block_ms),
                            "ms_per_block_median": median,
                            "ms_per_block_p90": float(np.percentile(ms, 90)),
                            "speedup_vs_rvc_next": theirs_median / median if theirs_median else None,
                            "blocks": len(ms),
                        }
                    )
                    log.info("%s block %d context %d: %.0f ms", name, block_ms, context_ms, median)
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_bf16": cpu_has_bf16(),
        "threads": torch.get_num_threads(),
        "voice": "v2 48k (real size, random weights), index 2000×768, HuBERT-base (transformers dir)",
        "f0": "pm",
        "crossfade_ms": CROSSFADE_MS,
        "audio_seconds": len(audio) / INPUT_RATE,
        "rows": rows,
    }


def profile(buffer_ms: int = 820, block_ms: int = 250, repeats: int = 7) -> dict:
    """Best-of-``repeats`` time of each part of one block, per backend (ms)."""
    out: dict[str, dict[str, float]] = {}
    frames = buffer_ms // 10
    ret = (block_ms + CROSSFADE_MS + 10) // 10
    x = np.random.default_rng(0).standard_normal(frames * 160).astype(np.float32) * 0.1

    def best(fn: Callable[[], object]) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts) * 1000

    with tempfile.TemporaryDirectory() as tmp:
        assets = build_assets(Path(tmp))
        f0 = load_f0_estimator("pm")
        for backend in our_backends():
            voice = load_voice(assets["voice"], index_path=assets["index"], backend=backend)
            hubert = load_content_encoder(assets["hubert"], backend=backend)
            net = voice.synthesizer
            feats = torch.randn(1, frames, 768)
            pitch = torch.full((1, frames), 100, dtype=torch.long)
            g = net.emb_g(torch.tensor([0]))[:, :, None].detach()
            f0_hz = torch.full((1, ret), 150.0)
            source = net.dec.m_source(f0_hz, net.hop_length, noise=False, generator=None)
            z = torch.randn(1, net.cfg.inter_channels, ret)
            index = voice.index
            assert index is not None
            out[backend.name] = {
                f"hubert ({buffer_ms} ms buffer)": best(lambda: hubert(torch.from_numpy(x), "v2")),  # noqa: B023
                f"prior encoder + flow ({frames} frames)": best(
                    lambda: net._flow(net._prior(feats, pitch)[:, :192, -ret - 24 :], g)  # noqa: B023
                ),
                f"decoder ({ret * 10} ms at 48 kHz)": best(lambda: net._decoder(z, g, source)),  # noqa: B023
                f"F0 pm ({block_ms + 160} ms)": best(
                    lambda: f0.estimate(x[-(block_ms + 160) * 16 :], block_ms // 10 + 16)
                ),
                "index retrieval": best(
                    lambda: index.blend(np.ascontiguousarray(x[: (ret // 2) * 768].reshape(-1, 768)), 0.75)  # noqa: B023
                ),
            }
    return out


def format_table(result: dict) -> str:
    lines = [
        f"Streaming RVC, {result['machine']}, {result['threads']} threads, bf16 {result['cpu_bf16']}; "
        f"{result['voice']}; F0 {result['f0']}; crossfade {result['crossfade_ms']} ms; "
        f"{result['audio_seconds']:.1f} s of speech per setting",
        f"{'block ms':>8} {'context ms':>10} {'engine':<18} {'rtf':>5} {'ms/block':>9} {'p90':>6} {'speed-up':>9}",
    ]
    for r in result["rows"]:
        speedup = f"{r['speedup_vs_rvc_next']:.2f}×" if r["speedup_vs_rvc_next"] else "-"
        lines.append(
            f"{r['block_ms']:>8} {r['context_ms']:>10} {r['engine']:<18} {r['rtf']:>5.2f} "
            f"{r['ms_per_block_median']:>9.0f} {r['ms_per_block_p90']:>6.0f} {speedup:>9}"
        )
    return "\n".join(lines)


def format_profile(prof: dict) -> str:
    parts = list(next(iter(prof.values())))
    lines = [f"{'part of one block (best of 7)':<34}" + "".join(f"{name:>19}" for name in prof)]
    for part in parts:
        lines.append(f"{part:<34}" + "".join(f"{prof[name][part]:>16.1f} ms" for name in prof))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="speech converted per setting")
    parser.add_argument("--blocks", default=",".join(map(str, BLOCKS_MS)), help="block sizes in ms")
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS_MS)), help="context sizes in ms")
    parser.add_argument("--rvc-next", default=None, help="directory holding rvc-next (added to sys.path here only)")
    parser.add_argument("--profile", action="store_true", help="also time the parts of one block per backend")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(AttributeError):
        torch.set_flush_denormal(True)  # every engine in this process alike: fp32 eager timings swing with denormals
    result = run(
        args.seconds,
        [int(b) for b in args.blocks.split(",")],
        [int(c) for c in args.contexts.split(",")],
        args.rvc_next,
    )
    print(format_table(result))
    if args.profile:
        result["profile"] = profile()
        print(format_profile(result["profile"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
