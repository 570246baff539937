"""Benchmark: time-stretch libraries fed a stream chunk by chunk, as the pipeline does.

``python -m benchmarks.stretch [--seconds 3] [--json out.json]``

For each library that is installed and each speed, a 32 kHz voiced tone
(:func:`testing.stretch_signals.voiced_tone`: harmonics to 3.5 kHz, vibrato) is stretched
whole, and streamed: one stretcher per stream fed the engines' irregular chunk sizes,
then flushed. Columns: the stage's real-time factor streamed (CPU seconds per second of
input), the click level (loudest 5 ms above 7 kHz, where the tone has nothing) streamed
and whole, the F0 error (Praat, median) and the duration error against ``len / speed``.

* ``audiotsm`` (WSOLA, MIT) through :class:`tts_server.stretch.TimeStretcher`: the one
  the server uses.
* ``python-stretch`` (Signalsmith Stretch, MIT) and ``bungee-python`` (Bungee, MPL-2.0),
  if installed (``pip install python-stretch bungee-python``; benchmark only): their Python
  ``process`` calls each start a new signal, so streamed they click at every chunk edge.

Rubber Band (``pylibrb``) is not timed: it is GPL-2.0 (unless licensed commercially) and
may not be imported by the product. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from testing.stretch_signals import click_level_db, in_chunks, median_f0_hz, voiced_tone
from tts_server.stretch import TimeStretcher

SAMPLE_RATE = 32_000
SPEEDS = (0.5, 0.8, 1.25, 2.0)

#: A library as a factory of per-stream stretchers: ``make(speed)`` → ``(process, flush)``.
Maker = Callable[[float], tuple[Callable[[np.ndarray], np.ndarray], Callable[[], np.ndarray]]]


def _audiotsm(speed: float):
    stretcher = TimeStretcher(SAMPLE_RATE, speed)
    return stretcher.process, stretcher.flush


def _signalsmith(speed: float):
    from python_stretch.Signalsmith import Stretch

    stretch = Stretch()
    stretch.preset(1, SAMPLE_RATE)
    stretch.setTimeFactor(speed)
    return (lambda x: np.asarray(stretch.process(x[None, :]))[0]), (lambda: np.zeros(0, np.float32))


def _bungee(speed: float):
    from bungee_python.bungee import Bungee

    bungee = Bungee(SAMPLE_RATE, 1, speed=speed)
    return (lambda x: np.asarray(bungee.process(x[:, None])).reshape(-1)), (lambda: np.zeros(0, np.float32))


LIBRARIES: dict[str, tuple[str, Maker]] = {
    "audiotsm (WSOLA)": ("MIT", _audiotsm),
    "python-stretch (Signalsmith)": ("MIT", _signalsmith),
    "bungee-python": ("MPL-2.0", _bungee),
}


def _run(make: Maker, x: np.ndarray, speed: float, chunked: bool) -> tuple[np.ndarray, float]:
    process, flush = make(speed)
    pieces = in_chunks(x) if chunked else [x]
    start = time.process_time()
    out = np.concatenate([*(process(c) for c in pieces), flush()])
    return out, time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stretch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the test signal")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    x = voiced_tone(SAMPLE_RATE, args.seconds)
    f0_in = median_f0_hz(x, SAMPLE_RATE)
    rows = []
    for name, (licence, make) in LIBRARIES.items():
        try:
            make(1.5)
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        for speed in SPEEDS:
            whole, _ = _run(make, x, speed, chunked=False)
            streamed, cpu_s = _run(make, x, speed, chunked=True)
            rows.append(
                {
                    "library": name,
                    "licence": licence,
                    "speed": speed,
                    "rtf": cpu_s / args.seconds,
                    "click_db_streamed": click_level_db(streamed, SAMPLE_RATE),
                    "click_db_whole": click_level_db(whole, SAMPLE_RATE),
                    "streamed_equals_whole": bool(streamed.size == whole.size and np.array_equal(streamed, whole)),
                    "f0_error_pct": 100 * (median_f0_hz(streamed, SAMPLE_RATE) / f0_in - 1),
                    "duration_error_pct": 100 * (streamed.size * speed / x.size - 1),
                }
            )
    machine = platform.processor() or platform.machine()
    print(f"Time stretch of a {args.seconds:g} s voiced tone at 32 kHz, streamed in chunks; {machine}")
    print(
        f"{'library':<30} {'licence':<8} {'speed':>5} {'RTF':>7} {'click dB streamed':>17} "
        f"{'whole':>7} {'= whole':>7} {'F0 err %':>8} {'dur err %':>9}"
    )
    for r in rows:
        print(
            f"{r['library']:<30} {r['licence']:<8} {r['speed']:>5g} {r['rtf']:>7.4f} {r['click_db_streamed']:>17.1f} "
            f"{r['click_db_whole']:>7.1f} {'yes' if r['streamed_equals_whole'] else 'no':>7} "
            f"{r['f0_error_pct']:>8.2f} {r['duration_error_pct']:>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "seconds": args.seconds, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
