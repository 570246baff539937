"""espeak-ng call time beside a busy Python thread, by synth-callback buffer length.

``python -m benchmarks.espeak_gil [--calls 20] [--rounds 2] [--json out.json]``

Each espeak-ng call hands its audio to a Python callback, which must take the GIL. In a
server the event loop runs Python most of the time, so every callback waits up to a GIL
switch interval (1 ms in ``tts-server``) to take it. This times one sentence (67
characters, about 4 s of speech) per call, with espeak-ng's buffers of 100 ms (one callback
per 100 ms of audio) and of :data:`~tts_server.engines.espeak.CALLBACK_BUFFER_MS`, alone
and beside a thread spinning in Python (the busy event loop), alternated in the same run.
Each setting runs in a process of its own (the library is initialised once per process).

Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SENTENCE = "This is a long reply that someone will interrupt before it is done."

CHILD = """
import json, statistics, sys, threading, time
import tts_server.engines.espeak as espeak
sys.setswitchinterval(0.001)
espeak.CALLBACK_BUFFER_MS = int(sys.argv[1])
busy, calls = sys.argv[2] == "busy", int(sys.argv[3])
lib = espeak.EspeakEngine()._lib
lib.synthesize(sys.argv[4], "en-us", 175, 50)  # warm
stop = threading.Event()
def spin():
    while not stop.is_set():
        pass
if busy:
    threading.Thread(target=spin, daemon=True).start()
times = []
for _ in range(calls):
    start = time.perf_counter()
    audio = lib.synthesize(sys.argv[4], "en-us", 175, 50)
    times.append(time.perf_counter() - start)
stop.set()
print(json.dumps({"times_s": times, "audio_s": audio.size / lib.sample_rate}))
"""


def run_one(buffer_ms: int, busy: bool, calls: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(buffer_ms), "busy" if busy else "alone", str(calls), SENTENCE],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> None:
    from tts_server.engines.espeak import CALLBACK_BUFFER_MS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per setting and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the settings alternated in each")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    settings = [(buffer_ms, busy) for busy in (False, True) for buffer_ms in (100, CALLBACK_BUFFER_MS)]
    times: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    audio_s = 0.0
    for _ in range(args.rounds):
        for buffer_ms, busy in settings:
            result = run_one(buffer_ms, busy, args.calls)
            times[buffer_ms, busy] += result["times_s"]
            audio_s = result["audio_s"]
    print(
        f"espeak-ng, one sentence of {len(SENTENCE)} characters ({audio_s:.1f} s of speech) per call, GIL switch 1 ms"
    )
    print(f"{'buffer':>8} {'beside':>22} {'calls':>6} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    rows = []
    for (buffer_ms, busy), values in times.items():
        ordered = sorted(values)
        row = {
            "buffer_ms": buffer_ms,
            "busy_thread": busy,
            "calls": len(values),
            "median_ms": statistics.median(values) * 1000,
            "p95_ms": ordered[round(0.95 * (len(ordered) - 1))] * 1000,
            "max_ms": ordered[-1] * 1000,
        }
        rows.append(row)
        beside = "a busy Python thread" if busy else "nothing"
        print(
            f"{buffer_ms:>6}ms {beside:>22} {row['calls']:>6} {row['median_ms']:>10.1f} {row['p95_ms']:>8.1f} "
            f"{row['max_ms']:>8.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"sentence": SENTENCE, "audio_s": audio_s, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
