"""Benchmark: Soprano's backbone step and decoder, and the precision of reduced weights.

``python -m benchmarks.backbone [--batches 1,2,4,8] [--rounds 5] [--json out.json]``

Three tables, all from one process on the real-size Soprano-1.1-80M configuration
(random weights unless ``--model-dir`` points at the real Hub files):

1. **Backbone step**: one token per row for B rows, each row with ``--context``
   positions already in its KV cache, logits included. ``transformers`` (the path the
   server used before: ``Qwen3ForCausalLM.model`` with a ``DynamicCache``, then
   ``lm_head``) against the lean backbone (:mod:`tts_server.engines.qwen3`) with
   float32, bfloat16 and int8 weights. The implementations are measured in alternation,
   ``--rounds`` times, and the median per step is reported, so machine noise hits all
   of them alike; the ratio to ``transformers`` at the same B is printed.
2. **Decoder per token of audio**: our incremental decoder (every frame once, B streams
   per call, ``--chunk`` tokens each) against the reference streamer's way (the package's
   decoder re-run on a window of 4 + chunk tokens for each chunk, as
   ``SopranoTTS.infer_stream`` does).
3. **Precision** of each weight format against float32 over one sentence: the same token
   ids are run through each (teacher-forced, so a different sampled token cannot hide or
   exaggerate the error), and the table gives the relative L2 of the hidden states (the
   audio latents) and the SNR of the decoded audio against float32's. The default for
   CPU is the fastest format whose audio stays within 30 dB SNR of float32.

Random weights spread their values evenly; real checkpoints have outlier features that
can make int8 worse, so run it with ``--model-dir`` on the real files before trusting the
precision table for a deployment. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tts_server.engines.linear import Precision

PRECISIONS: tuple[Precision, ...] = ("float32", "bfloat16", "int8")
DECODER_PRECISIONS: tuple[Precision, ...] = ("float32", "bfloat16")
#: Audio within this SNR of float32 is acceptable for the default precision (the issue's bound).
MIN_SNR_DB = 30.0


def _model_dir(path: Path | None) -> Path:
    from testing.soprano_model import REAL_CONFIG, build_soprano_dir

    target = path or Path(tempfile.gettempdir()) / "soprano-real-random-free"
    if not (target / "decoder.pth").exists():
        build_soprano_dir(target, audio_tokens=None, config=REAL_CONFIG)
    return target


def _median_ms(fn: Callable[[], object], steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_steps(
    model_dir: Path, batches: list[int], context: int, steps: int, rounds: int
) -> dict[str, dict[int, float]]:
    """Median ms per backbone step for each implementation and batch size (alternating rounds)."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from tts_server.engines.qwen3 import Qwen3Backbone, Qwen3Shape, Row, load_weights

    shape = Qwen3Shape.from_config(json.loads((model_dir / "config.json").read_text()), "config.json")
    weights = load_weights(model_dir / "model.safetensors", shape)
    reference: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lean = {p: Qwen3Backbone(weights, shape, slots=max(batches), precision=p) for p in PRECISIONS}
    g = torch.Generator().manual_seed(0)
    runners: dict[str, dict[int, Callable[[], object]]] = {"transformers": {}, **{f"lean {p}": {} for p in PRECISIONS}}
    for b in batches:
        prompt = torch.randint(4, 8192, (b, context), generator=g)
        token = torch.randint(4, 8192, (b, 1), generator=g)
        cache = DynamicCache(config=reference.config)
        with torch.inference_mode():
            reference.model(input_ids=prompt, past_key_values=cache, use_cache=True)

        def tf_step(token=token, cache=cache) -> object:
            with torch.inference_mode():
                hidden = reference.model(input_ids=token, past_key_values=cache, use_cache=True).last_hidden_state
                logits = reference.lm_head(hidden[:, -1])
                cache.crop(-1)  # stay at `context` positions, like the lean rows below
            return logits

        runners["transformers"][b] = tf_step
        for p, backbone in lean.items():
            backbone.forward(prompt.reshape(-1), [Row(i, 0, context) for i in range(b)])
            rows = [Row(i, context, 1) for i in range(b)]
            ids = token.reshape(-1)

            def lean_step(
                backbone: Qwen3Backbone = backbone, rows: list[Row] = rows, ids: torch.Tensor = ids
            ) -> object:
                return backbone.logits(backbone.forward(ids, rows))

            runners[f"lean {p}"][b] = lean_step
    for by_batch in runners.values():  # warm-up (allocation, oneDNN primitive creation)
        for fn in by_batch.values():
            for _ in range(3):
                fn()
    samples: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batches} for name in runners}
    for _ in range(rounds):
        for b in batches:
            for name, by_batch in runners.items():
                samples[name][b].append(_median_ms(by_batch[b], steps))
    return {name: {b: statistics.median(v) for b, v in by_batch.items()} for name, by_batch in samples.items()}


def bench_decoder(model_dir: Path, batches: list[int], chunk: int, rounds: int) -> dict[str, dict[int, float]]:
    """Median decoder ms per 64 ms token of audio per stream: ours (incremental, batched) vs windowed."""
    from soprano.vocos.decoder import SopranoDecoder

    from tts_server.engines.soprano_decoder import DecoderState, StreamingDecoder

    decoder = SopranoDecoder().eval()
    decoder.load_state_dict(torch.load(model_dir / "decoder.pth", map_location="cpu", weights_only=True))
    streaming = {p: StreamingDecoder(decoder, precision=p) for p in DECODER_PRECISIONS}
    g = torch.Generator().manual_seed(1)
    reference_name = "window of 4 + chunk (reference, float32)"
    out: dict[str, dict[int, list[float]]] = {f"incremental {p} (ours)": {} for p in streaming}
    out[reference_name] = {}
    for _ in range(rounds):
        for b in batches:
            for p, ours in streaming.items():
                states = [DecoderState() for _ in range(b)]
                ours.decode(states, [torch.randn(8, 512, generator=g) for _ in range(b)], [False] * b)
                latents = [torch.randn(chunk, 512, generator=g) for _ in range(b)]

                def call(
                    ours: StreamingDecoder = ours,
                    states: list[DecoderState] = states,
                    latents: list[torch.Tensor] = latents,
                ) -> object:
                    return ours.decode(states, latents, [False] * len(states))

                out[f"incremental {p} (ours)"].setdefault(b, []).append(_median_ms(call, 5) / (b * chunk))
            window = torch.randn(b, 512, 4 + chunk, generator=g)

            def reference(window: torch.Tensor = window) -> object:
                with torch.inference_mode():
                    return decoder(window)

            out[reference_name].setdefault(b, []).append(_median_ms(reference, 5) / (b * chunk))
    return {name: {b: statistics.median(v) for b, v in by_batch.items()} for name, by_batch in out.items()}


def bench_precision(model_dir: Path, tokens: int) -> dict[tuple[Precision, Precision], dict[str, float]]:
    """Per (backbone, decoder) precision: relative L2 of the latents and SNR of the audio against all-float32."""
    from soprano.vocos.decoder import SopranoDecoder
    from transformers import AutoTokenizer

    from tts_server.engines.qwen3 import Qwen3Backbone, Qwen3Shape, Row, load_weights
    from tts_server.engines.soprano import START, STOP, TEXT, prepare_text
    from tts_server.engines.soprano_decoder import DecoderState, StreamingDecoder

    shape = Qwen3Shape.from_config(json.loads((model_dir / "config.json").read_text()), "config.json")
    weights = load_weights(model_dir / "model.safetensors", shape)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = prepare_text("Streaming speech starts while the model is still writing its reply.")
    prompt = tokenizer(f"{STOP}{TEXT}{text}{START}")["input_ids"]
    # float32 greedy generation decides the token ids; every precision then sees the same ids.
    exact = Qwen3Backbone(weights, shape, slots=1, precision="float32")
    ids = list(prompt)
    hidden = exact.forward(torch.tensor(ids), [Row(0, 0, len(ids))])
    for _ in range(tokens):
        ids.append(int(exact.logits(hidden)[0, 4:8004].argmax()) + 4)  # audio tokens only
        hidden = exact.forward(torch.tensor(ids[-1:]), [Row(0, len(ids) - 1, 1)])
    decoder = SopranoDecoder().eval()
    decoder.load_state_dict(torch.load(model_dir / "decoder.pth", map_location="cpu", weights_only=True))

    def latents(precision: Precision) -> torch.Tensor:
        backbone = Qwen3Backbone(weights, shape, slots=1, precision=precision)
        first = len(prompt) - 1  # the hidden state at [START] chose the first audio token
        rows = [backbone.forward(torch.tensor(ids[: first + 1]), [Row(0, 0, first + 1)])]
        for position in range(first + 1, len(ids) - 1):
            rows.append(backbone.forward(torch.tensor(ids[position : position + 1]), [Row(0, position, 1)]))
        return torch.cat(rows)

    def decode(lat: torch.Tensor, precision: Precision) -> torch.Tensor:
        (audio,) = StreamingDecoder(decoder, precision=precision).decode([DecoderState()], [lat], [True])
        return audio.double()

    lat = {p: latents(p) for p in PRECISIONS}
    reference = decode(lat["float32"], "float32")
    results: dict[tuple[Precision, Precision], dict[str, float]] = {}
    for p in PRECISIONS:
        for d in DECODER_PRECISIONS:
            audio = decode(lat[p], d)
            noise = float(((audio - reference) ** 2).sum())
            snr = float("inf") if noise == 0 else 10 * torch.log10((reference**2).sum() / noise).item()
            results[(p, d)] = {
                "latent_rel_l2": float((lat[p] - lat["float32"]).norm() / lat["float32"].norm()),
                "audio_snr_db": snr,
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backbone", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a Soprano directory (default: random real-size weights)")
    parser.add_argument("--batches", default="1,2,4,8", help="batch sizes (rows per step)")
    parser.add_argument("--context", type=int, default=100, help="positions already cached per row")
    parser.add_argument("--steps", type=int, default=10, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per implementation")
    parser.add_argument("--chunk", type=int, default=4, help="tokens per stream per decoder call")
    parser.add_argument("--tokens", type=int, default=64, help="audio tokens of the precision sentence")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    model_dir = _model_dir(args.model_dir)
    steps = bench_steps(model_dir, batches, args.context, args.steps, args.rounds)
    decoder = bench_decoder(model_dir, batches, args.chunk, args.rounds)
    precision = bench_precision(model_dir, args.tokens)

    def step_cost(p: Precision) -> float:  # mean over the batch sizes: the server runs all of them
        return statistics.mean(steps[f"lean {p}"][b] for b in batches)

    def decoder_cost(d: Precision) -> float:
        return statistics.mean(decoder[f"incremental {d} (ours)"][b] for b in batches)

    backbone_default = min(
        (p for p in PRECISIONS if precision[(p, "float32")]["audio_snr_db"] >= MIN_SNR_DB), key=step_cost
    )
    decoder_default = min(
        (d for d in DECODER_PRECISIONS if precision[(backbone_default, d)]["audio_snr_db"] >= MIN_SNR_DB),
        key=decoder_cost,
    )
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "model_dir": str(model_dir),
        "context": args.context,
        "step_ms": {name: {str(b): v for b, v in by.items()} for name, by in steps.items()},
        "decoder_ms_per_token": {name: {str(b): v for b, v in by.items()} for name, by in decoder.items()},
        "precision": {f"{p}+{d}": row for (p, d), row in precision.items()},
        "default_cpu_dtype": backbone_default,
        "default_cpu_decoder_dtype": decoder_default,
    }
    print(
        f"Soprano backbone, {model_dir.name}, {torch.get_num_threads()} torch threads, "
        f"{args.context} cached positions per row, median of {args.rounds} alternating rounds"
    )
    print(f"{'backbone step (ms)':<26}" + "".join(f"{'B=' + str(b):>10}" for b in batches) + f"{'vs tf B=1':>11}")
    base = steps["transformers"]
    for name, by in steps.items():
        ratio = base[batches[0]] / by[batches[0]]
        print(f"{name:<26}" + "".join(f"{by[b]:>10.1f}" for b in batches) + f"{ratio:>10.2f}x")
    print(f"{'per stream (ms)':<26}")
    for name, by in steps.items():
        print(f"  {name:<24}" + "".join(f"{by[b] / b:>10.1f}" for b in batches))
    print(f"\n{'decoder ms per token per stream':<42}" + "".join(f"{'B=' + str(b):>10}" for b in batches))
    for name, by in decoder.items():
        print(f"{name:<42}" + "".join(f"{by[b]:>10.2f}" for b in batches))
    print(
        f"\n{'precision vs float32 (' + str(args.tokens) + ' tokens)':<34}{'latent rel. L2':>15}{'audio SNR':>11}"
        f"{'step ms':>10}{'decoder ms/tok':>16}"
    )
    for (p, d), row in precision.items():
        snr = "exact" if row["audio_snr_db"] == float("inf") else f"{row['audio_snr_db']:.1f} dB"
        print(
            f"{'backbone ' + p + ', decoder ' + d:<34}{row['latent_rel_l2']:>15.2e}{snr:>11}"
            f"{step_cost(p):>10.1f}{decoder_cost(d):>16.2f}"
        )
    print("(step and decoder costs: means over the batch sizes above)")
    print(
        f"fastest with audio within {MIN_SNR_DB:g} dB SNR of float32: backbone {backbone_default}, "
        f"decoder {decoder_default} (SNR {precision[(backbone_default, decoder_default)]['audio_snr_db']:.1f} dB)"
    )
    if not torch.cuda.is_available():
        print("GPU: none on this machine (bfloat16 on GPU not measured)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
