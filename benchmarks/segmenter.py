"""Benchmark: the segmenter's cost per KB of text, on adversarial and ordinary input.

``python -m benchmarks.segmenter [--sizes 1 4 10] [--json out.json]``

Each input is fed to :class:`tts_server.segmenter.Segmenter` (default settings) in
two ways: as **one token** of the whole size (the largest ``/ws/stream`` accepts is
10 000 characters; its cost is what one message may cost the server) and as a
**flood** of 2-character tokens. The table gives microseconds per KB at each size;
linear time shows as a flat row (the last column, cost per KB at the largest size over
the smallest, stays near 1). The segmenter before issue 9
(:mod:`testing.segmenter_reference`) is timed beside it at the smallest size, where it
still finishes (its cost grows with the cube of the buffered text).

Inputs: all ``!``; all ``x.``; one word of ``a`` (a 10 000-character word); nested
markdown (emphasis, links, code, quotes, nested ``depth`` deep); ``a!`` (a sentence
every 2 characters, the most segments); ``x..`` (periods that the next character
decides); ``,`` after a code fence (pause marks whose clause cleans to nothing); and
English prose. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

from tts_server.segmenter import Segmenter

PROSE = (
    "The quick brown fox jumps over the lazy dog. Dr. Smith paid $3.50, e.g. for 1,000 apples; "
    "see https://example.com/a.b?c=1 for details!\n1. First item\n2. Second item, which runs on. "
)


def _nested_markdown(n: int) -> str:
    depth = 40
    unit = "> **_[`" * depth + "a" + "`](https://x.io/p_q)_**" * depth + ", "
    return (unit * (n // len(unit) + 1))[:n]


INPUTS: dict[str, Callable[[int], str]] = {
    "all '!'": lambda n: "!" * n,
    "all 'x.'": lambda n: "x." * (n // 2),
    "one word": lambda n: "a" * n,
    "nested markdown": _nested_markdown,
    "'a!' (most segments)": lambda n: "a!" * (n // 2),
    "'x..'": lambda n: ("x.." * n)[:n],
    "',' after a code fence": lambda n: ("```a" + " ," * n)[:n],
    "prose": lambda n: (PROSE * (n // len(PROSE) + 1))[:n],
}


def _time(make: Callable[[], object], text: str, token_chars: int | None, repeats: int) -> float:
    """Best of ``repeats``: seconds to push ``text`` (whole, or in tokens) and flush."""
    best = float("inf")
    for _ in range(repeats):
        seg = make()
        tokens = (
            [text] if token_chars is None else [text[i : i + token_chars] for i in range(0, len(text), token_chars)]
        )
        start = time.perf_counter()
        for token in tokens:
            seg.push(token)  # type: ignore[attr-defined]
        seg.flush()  # type: ignore[attr-defined]
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.segmenter", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 4, 10], help="input sizes in KB (1 KB = 1000 chars)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    parser.add_argument("--no-reference", action="store_true", help="skip the pre-issue-9 segmenter")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    from testing.segmenter_reference import Segmenter as Reference

    rows = []
    for name, make_text in INPUTS.items():
        for mode, token_chars in (("one token", None), ("2-char tokens", 2)):
            row: dict = {"input": name, "mode": mode, "us_per_kb": {}}
            for kb in args.sizes:
                text = make_text(kb * 1000)
                seconds = _time(Segmenter, text, token_chars, args.repeats)
                row["us_per_kb"][kb] = seconds * 1e6 / kb
                if kb == max(args.sizes) and token_chars is None:
                    row["largest_token_ms"] = seconds * 1000
            row["growth"] = row["us_per_kb"][max(args.sizes)] / row["us_per_kb"][min(args.sizes)]
            if not args.no_reference:
                kb = min(args.sizes)
                row["reference_us_per_kb"] = _time(Reference, make_text(kb * 1000), token_chars, 1) * 1e6 / kb
            rows.append(row)

    sizes = args.sizes
    head = " ".join(f"{f'{kb} KB':>9}" for kb in sizes)
    print(f"Segmenter cost in µs per KB (best of {args.repeats}); {platform.processor() or platform.machine()}")
    print(f"{'input':<24} {'fed as':<14} {head} {'growth':>7} {f'before, {sizes[0]} KB':>16}")
    for row in rows:
        cells = " ".join(f"{row['us_per_kb'][kb]:>9.0f}" for kb in sizes)
        before = f"{row['reference_us_per_kb']:>16.0f}" if "reference_us_per_kb" in row else ""
        print(f"{row['input']:<24} {row['mode']:<14} {cells} {row['growth']:>6.2f}x {before}")
    largest = max(r.get("largest_token_ms", 0.0) for r in rows)
    print(f"most expensive single token of {max(sizes)} KB: {largest:.1f} ms")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
