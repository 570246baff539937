"""Benchmark: the capacity benchmark's clients through HAProxy, with one and with two replicas.

``python -m benchmarks.replicas [--clients 1,2,4,8] [--sentences 4] [--tokens 32] [--json out.json]``

Each replica is a real ``tts-server`` process (``python -m tts_server``) with the
Soprano-1.1-80M configuration and random weights (every sentence forced to ``--tokens``
audio tokens, as in :mod:`benchmarks.capacity`), and HAProxy (``deploy/haproxy.cfg``,
leastconn with the agent check) is in front. N clients stream LLM-paced replies through
HAProxy at the same moment; TTFA, stalls and the aggregate audio seconds per second are
those of :mod:`benchmarks.capacity`.

* one replica: one process using every core (``--threads-one``, default all);
* two replicas: two processes sharing the same cores (``--threads-two`` each, default
  half). On a machine with one GPU per replica the second replica brings its own GPU;
  here both share the CPU, so the figures show the cost of the split, not its gain.

Needs ``haproxy`` on the PATH (Debian: apt-get install haproxy). Not a test: numbers depend
on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.capacity import ClientRun, _client, _model_dir, _replies, _summary
from tts_server.service import inference_threads

HAPROXY_CONFIG = Path(__file__).parents[1] / "deploy" / "haproxy.cfg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_replica(workdir: Path, name: str, model_dir: Path, threads: int) -> tuple[subprocess.Popen, int, int]:
    port, agent_port = _free_port(), _free_port()
    config = workdir / f"{name}.toml"
    config.write_text(
        f'[server]\nport = {port}\nagent_port = {agent_port}\nmax_streams_per_client = 16\nlog_level = "WARNING"\n'
        f'[engine]\nname = "soprano"\ndevice = "cpu"\nthreads = {threads}\nmax_batch = 16\n'
        f'[soprano]\nmodel_path = "{model_dir}"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tts_server", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    return process, port, agent_port


def _wait_http(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g} s")


def _haproxy_up(stats: str, expected: int) -> bool:
    with urllib.request.urlopen(f"{stats}/;csv", timeout=2) as r:
        rows = r.read().decode().lstrip("# ").splitlines()
    header = rows[0].split(",")
    up = 0
    for line in rows[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "tts_replicas" and row.get("svname", "").startswith("tts"):
            up += row.get("status") == "UP"
    return up == expected


async def _run_clients(
    url: str, counts: list[int], replies: list[str], interval_s: float
) -> dict[int, list[ClientRun]]:
    out: dict[int, list[ClientRun]] = {}
    for n in counts:
        start = asyncio.Event()
        tasks = [asyncio.create_task(_client(url, replies[i], interval_s, start)) for i in range(n)]
        await asyncio.sleep(0.5)  # all connected
        start.set()
        out[n] = list(await asyncio.gather(*tasks))
    return out


def _bench(replicas: int, threads: int, model_dir: Path, args: Any, counts: list[int]) -> dict[int, list[ClientRun]]:
    workdir = Path(tempfile.mkdtemp(prefix="replicas-"))
    processes: list[subprocess.Popen] = []
    haproxy: subprocess.Popen | None = None
    try:
        started = [_start_replica(workdir, f"tts{i + 1}", model_dir, threads) for i in range(replicas)]
        processes = [p for p, _, _ in started]
        for _, port, _ in started:
            _wait_http(f"http://127.0.0.1:{port}/health")
        front, stats = _free_port(), _free_port()
        addresses = [(port, agent) for _, port, agent in started]
        if replicas == 1:
            addresses.append((_free_port(), _free_port()))  # nothing listens: HAProxy marks it down
        env = {
            **os.environ,
            "TTS_BIND": f"127.0.0.1:{front}",
            "STATS_BIND": f"127.0.0.1:{stats}",
            "TTS1_ADDR": f"127.0.0.1:{addresses[0][0]}",
            "TTS1_AGENT_PORT": str(addresses[0][1]),
            "TTS2_ADDR": f"127.0.0.1:{addresses[1][0]}",
            "TTS2_AGENT_PORT": str(addresses[1][1]),
        }
        haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(HAPROXY_CONFIG)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        stats_url = f"http://127.0.0.1:{stats}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, IndexError):
                if _haproxy_up(stats_url, replicas):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("HAProxy did not see the replicas up")
            time.sleep(0.2)
        time.sleep(3)  # the agents' first answers, and a dead second server marked down for good
        replies = _replies(max(counts), args.sentences)
        return asyncio.run(
            _run_clients(f"ws://127.0.0.1:{front}/ws/stream", counts, replies, args.token_interval_ms / 1000)
        )
    finally:
        for process in ([haproxy] if haproxy else []) + processes:
            process.terminate()
        for process in ([haproxy] if haproxy else []) + processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,2,4,8", help="numbers of concurrent clients")
    parser.add_argument("--sentences", type=int, default=4, help="sentences per reply")
    parser.add_argument("--tokens", type=int, default=32, help="audio tokens (64 ms) per sentence")
    parser.add_argument("--token-interval-ms", type=float, default=25.0, help="time between LLM tokens")
    parser.add_argument("--start-buffer-ms", type=float, default=200.0, help="audio a client buffers before playing")
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--threads-one",
        type=int,
        default=inference_threads(0),
        help="torch threads of the single replica (default: the server's, all cores but one)",
    )
    parser.add_argument("--threads-two", type=int, default=max(1, cores // 2), help="torch threads of each of two")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if shutil.which("haproxy") is None:
        print("haproxy is not installed (Debian: apt-get install haproxy)", file=sys.stderr)
        return 2
    counts = [int(n) for n in args.clients.split(",")]
    model_dir = _model_dir(args.tokens)
    start_buffer_s = args.start_buffer_ms / 1000
    setups = {
        f"1 replica x {args.threads_one} threads": (1, args.threads_one),
        f"2 replicas x {args.threads_two} threads": (2, args.threads_two),
    }
    table: dict[str, dict[int, dict[str, float]]] = {}
    for name, (replicas, threads) in setups.items():
        runs = _bench(replicas, threads, model_dir, args, counts)
        table[name] = {n: _summary(r, start_buffer_s) for n, r in runs.items()}
    print(
        f"Through HAProxy (deploy/haproxy.cfg), {platform.processor() or platform.machine()}, {cores} cores; "
        f"Soprano-1.1-80M configuration, random weights; {args.sentences} sentences x {args.tokens} tokens "
        f"per reply, LLM tokens every {args.token_interval_ms:g} ms"
    )
    print(f"{'setup':<26}{'N':>3}{'TTFA p50':>10}{'TTFA p95':>10}{'stall sum':>11}{'worst':>8}{'audio s/s':>11}")
    for name, by_n in table.items():
        for n, row in by_n.items():
            print(
                f"{name:<26}{n:>3}{row['ttfa_ms_p50']:>8.0f}ms{row['ttfa_ms_p95']:>8.0f}ms"
                f"{row['stall_s_sum']:>10.2f}s{row['stall_s_worst']:>7.2f}s{row['aggregate_rtx']:>11.2f}"
            )
    one, two = table.values()
    ratios = "  ".join(f"N={n}: {two[n]['aggregate_rtx'] / one[n]['aggregate_rtx']:.2f}x" for n in counts)
    print(f"aggregate, two replicas / one: {ratios}")
    if args.json:
        results = {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": cores},
            "tokens_per_sentence": args.tokens,
            "sentences_per_reply": args.sentences,
            "token_interval_ms": args.token_interval_ms,
            "results": {name: {str(n): row for n, row in by_n.items()} for name, by_n in table.items()},
        }
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
