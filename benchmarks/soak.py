"""Soak test: an honest client beside noisy ones, against a real ``tts-server`` on loopback.

``python -m benchmarks.soak [--duration-s 120] [--engine espeak] [--json out.json]``

Starts ``tts-server`` (its own process, espeak engine by default, 127.0.0.1 on a free
port: loopback only, nothing else is contacted), then:

1. **alone** (the first ``--alone-fraction`` of the time): one honest client speaks a
   sentence, waits until its listener would have heard the reply out (its audio in real
   time from the first frame) and 0.3 s more, again. Its TTFA is the time from its flush
   to the first audio frame.
2. **noise**: the honest client goes on while noisy clients run (in a process of their
   own), each from its own loopback address (127.0.0.10, .11, ...): one that cancels mid-reply, one that drops its
   connection mid-audio, one that never reads, one that floods ``x.`` tokens, one that
   sends 10 000-character adversarial tokens, one that asks ``/api/speak`` for 50 KB of
   digits and for real speech (reading some responses, abandoning others), one that
   holds idle WebSockets, one that opens half-sent HTTP requests, one that sends
   malformed frames, and one that calls from a foreign origin.

Every second the server's RSS (psutil) and ``/health`` latency are sampled. At the end
the noise stops, the server must drop back to zero streams within its idle timeout
(what remains is a hung stream), and it is stopped with SIGTERM (exit status 0 expected).

Errors counted: anything the honest client did not get (an error, a lost connection, a
reply not flushed within 30 s), any 5xx, any answer a noisy client should not have had
(the 50 KB request accepted, a half-sent request left open, a foreign origin served),
and any ERROR line or traceback in the server's log. Refusals the guards are meant to
give (429, 413, 403, 1008...) are counted per kind, not as errors.

Prints a table and writes ``--json``. Bounded: ``--duration-s`` of load, a fixed number
of clients, each with a bounded number of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil

SENTENCES = [
    "The weather is lovely today, isn't it?",
    "I will read you the next chapter now.",
    "Can you hear me clearly over there?",
    "That was the last question for today!",
]
LONG_REPLY = "This is a long reply that someone will interrupt before it is done. " * 6
NESTED_MARKDOWN = ("> **_[`" * 8 + "a" + "`](https://x.io/p_q)_**" * 8 + ", ") * 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Soak:
    """The load and its tallies (see the module docstring)."""

    def __init__(self, base: str, pause_s: float, honest_timeout_s: float = 30.0) -> None:
        self.base = base
        self.pause_s = pause_s  # between two actions of a noisy client
        self.ws_url = base.replace("http://", "ws://") + "/ws/stream"
        self.port = int(base.rsplit(":", 1)[1])
        self.honest_timeout_s = honest_timeout_s
        self.ttfa: dict[str, list[float]] = {"alone": [], "noise": []}
        self.server_ttfa: dict[str, list[float]] = {"alone": [], "noise": []}  # segment cut → first chunk, inside
        self.phase = "alone"
        self.errors: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.noise_on = asyncio.Event()
        self.stopping = asyncio.Event()

    def session(self, address: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    # -- the honest client ---------------------------------------------------------------------

    async def honest(self) -> None:
        async with self.session("127.0.0.1") as http:
            while not self.stopping.is_set():
                try:
                    async with http.ws_connect(self.ws_url) as ws:
                        await ws.send_json({"events": True})
                        turn = 0
                        while not self.stopping.is_set():
                            listened = await self._honest_turn(ws, SENTENCES[turn % len(SENTENCES)])
                            turn += 1
                            # A listener hears the reply out before the next one comes (the
                            # server schedules by when each listener runs out of audio: a
                            # client asking again while its audio still plays is not urgent).
                            await asyncio.sleep(max(0.0, listened - time.perf_counter()) + 0.3)
                except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                    self.error(f"honest client: {type(exc).__name__}")
                    await asyncio.sleep(1)

    async def _honest_turn(self, ws: aiohttp.ClientWebSocketResponse, sentence: str) -> float:
        """One reply; returns when (perf_counter) a listener would have heard it out."""
        for word in sentence.split(" "):
            await ws.send_json({"token": word + " "})
        phase = self.phase
        sent = time.perf_counter()
        await ws.send_json({"flush": True})
        first = None
        samples = 0
        async with asyncio.timeout(self.honest_timeout_s):
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    first = first or time.perf_counter()
                    samples += len(msg.data) // 4
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    if "error" in event:
                        self.error(f"honest client: server error {event['error'][:60]}")
                    elif event.get("type") == "segment" and event.get("ttfa_ms") is not None:
                        self.server_ttfa[phase].append(event["ttfa_ms"] / 1000)
                    elif event.get("type") == "flushed":
                        break
                else:
                    raise ConnectionError(f"closed: {msg.type.name} {ws.close_code}")
        if first is None:
            self.error("honest client: a reply without audio")
            return time.perf_counter()
        self.ttfa[phase].append(first - sent)
        return first + samples / 48_000

    # -- noise ---------------------------------------------------------------------------------

    async def repeat(self, name: str, address: str, action: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
        await self.noise_on.wait()
        async with self.session(address) as http:
            while not self.stopping.is_set():
                try:
                    await action(http)
                    self.actions[name] += 1
                    await asyncio.sleep(self.pause_s)
                except aiohttp.WSServerHandshakeError as exc:
                    self.refusals[f"{name}: {exc.status}"] += 1
                    if exc.status >= 500:
                        self.error(f"{name}: {exc.status}")
                    await asyncio.sleep(0.5)
                except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                    self.refusals[f"{name}: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.2)

    async def canceller(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.ws_url) as ws:
            await ws.send_json({"events": True, "token": LONG_REPLY, "flush": True})
            while (await ws.receive(timeout=30)).type != aiohttp.WSMsgType.BINARY:
                pass
            await ws.send_json({"cancel": True})
            async with asyncio.timeout(10):
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "cancelled":
                        break
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        self.error("canceller: closed before the cancel was acknowledged")
                        break

    async def disconnector(self, http: aiohttp.ClientSession) -> None:
        ws = await http.ws_connect(self.ws_url)
        await ws.send_json({"token": LONG_REPLY, "flush": True})
        await ws.receive(timeout=30)
        transport = ws._response.connection.transport if ws._response.connection else None
        if transport is not None:
            transport.abort()  # gone without a close frame
        await asyncio.sleep(0.2)

    async def never_reader(self, http: aiohttp.ClientSession) -> None:
        """Asks for minutes of audio and stops reading for a minute; by then the server must have
        dropped it (1008 once its writes stalled for idle_timeout_s, or 1000 once all was written)."""
        ws = await http.ws_connect(self.ws_url, max_msg_size=0)
        try:
            await ws.send_json({"token": LONG_REPLY * 8, "flush": True})
            connection = ws._response.connection
            assert connection is not None and connection.protocol is not None
            connection.protocol.pause_reading()  # the socket is not read any more
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            connection.protocol.resume_reading()
            async with asyncio.timeout(30):
                while (msg := await ws.receive()).type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    pass
            self.refusals[f"never-reader: dropped ({ws.close_code or msg.type.name})"] += 1
        except TimeoutError:
            self.error("never-reader still served after a minute of not reading")
        except (ConnectionError, aiohttp.ClientError):
            self.refusals["never-reader: dropped (reset)"] += 1
        finally:
            await ws.close()

    async def flooder(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.ws_url) as ws:
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                for _ in range(20):
                    await ws.send_str('{"token": "x."}')
                await asyncio.sleep(0.01)  # ~2 000 tokens per second
            await ws.send_json({"cancel": True})
        await asyncio.sleep(1.0)

    async def adversarial(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.ws_url) as ws:
            for token in ("!" * 10_000, "a!" * 5_000, "x." * 5_000, "a" * 10_000, NESTED_MARKDOWN[:10_000]):
                await ws.send_json({"token": token})
            await ws.send_json({"cancel": True, "events": True})
            async with asyncio.timeout(30):
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "cancelled":
                        break
        await asyncio.sleep(1.0)

    async def speaker(self, http: aiohttp.ClientSession) -> None:
        async with http.post(self.base + "/api/speak", json={"text": "1 " * 25_000}) as r:
            if r.status == 413:
                self.refusals["speak 50 KB: 413"] += 1
            else:
                self.error(f"speak 50 KB: {r.status} instead of 413")
        async with http.post(self.base + "/api/speak", json={"text": LONG_REPLY}) as r:
            if r.status >= 500:
                self.error(f"speak: {r.status}")
            await r.read()
        async with http.post(self.base + "/api/speak", json={"text": LONG_REPLY}) as r:
            await r.content.read(1000)  # and leave
        await asyncio.sleep(0.5)

    async def idler(self, http: aiohttp.ClientSession) -> None:
        held = []
        try:
            for _ in range(8):
                try:
                    held.append(await http.ws_connect(self.ws_url))
                except aiohttp.WSServerHandshakeError as exc:
                    self.refusals[f"idle sockets: {exc.status}"] += 1
            for ws in held:
                msg = await ws.receive(timeout=300)
                if msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000:
                    self.refusals["idle sockets: closed 1000"] += 1
        finally:
            for ws in held:
                await ws.close()

    async def half_sender(self, http: aiohttp.ClientSession) -> None:
        opened = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=("127.0.0.17", 0))
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            opened.append((reader, writer))
        for reader, writer in opened:
            try:
                async with asyncio.timeout(30):
                    if await reader.read() != b"":
                        self.error("half-sent request answered")
                self.refusals["half-sent: closed"] += 1
            except TimeoutError:
                self.error("half-sent request left open")
            finally:
                writer.close()

    async def malformed(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.ws_url) as ws:
            for frame in ("{not json", '{"token": "x", "pitch_shift": NaN}', "[" * 5000, '{"speak": 1}'):
                await ws.send_str(frame)
                if "error" not in json.loads((await ws.receive(timeout=10)).data):
                    self.error("malformed frame not answered with an error")
            await ws.send_bytes(b"\x00" * 100)
            await ws.receive(timeout=10)
        for headers in ({"Content-Type": "application/json; charset=bogus"}, {"Content-Type": "text/plain"}):
            async with http.post(self.base + "/api/speak", data="{}", headers=headers) as r:
                if r.status >= 500:
                    self.error(f"malformed HTTP: {r.status}")
        await asyncio.sleep(0.5)

    async def foreign_origin(self, http: aiohttp.ClientSession) -> None:
        headers = {"Origin": "https://attacker.example", "Host": "attacker.example"}
        async with http.post(self.base + "/api/speak", json={"text": "Hi."}, headers=headers) as r:
            if r.status != 403:
                self.error(f"foreign origin served ({r.status})")
            else:
                self.refusals["foreign origin: 403"] += 1
        await asyncio.sleep(1.0)


async def sample(pid: int, base: str, stop: asyncio.Event, rss: list[tuple[float, float]], health: list[float]) -> None:
    process = psutil.Process(pid)
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while not stop.is_set():
            rss.append((time.monotonic() - start, process.memory_info().rss / 2**20))
            t = time.perf_counter()
            try:
                async with http.get(base + "/health") as r:
                    await r.read()
                health.append(time.perf_counter() - t)
            except (aiohttp.ClientError, TimeoutError):
                health.append(float("inf"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()


def noise_clients(soak: Soak) -> list[tuple[str, Callable[[aiohttp.ClientSession], Awaitable[None]]]]:
    return [
        ("canceller", soak.canceller),
        ("disconnector", soak.disconnector),
        ("never-reader", soak.never_reader),
        ("flooder", soak.flooder),
        ("adversarial text", soak.adversarial),
        ("speaker", soak.speaker),
        ("idle sockets", soak.idler),
        ("half-sent HTTP", soak.half_sender),
        ("malformed", soak.malformed),
        ("foreign origin", soak.foreign_origin),
    ]


async def run_noise(args: argparse.Namespace, base: str) -> dict:
    """The noisy clients, for ``args.duration_s`` (in a process of their own: see :func:`run`)."""
    soak = Soak(base, args.pause_s)
    noise = noise_clients(soak)
    chosen = set(args.noise.split(",")) if args.noise else {name for name, _ in noise}
    tasks = [
        asyncio.create_task(soak.repeat(name, f"127.0.0.{10 + i}", action))
        for i, (name, action) in enumerate(noise)
        if name in chosen
    ]
    soak.noise_on.set()
    await asyncio.sleep(args.duration_s)
    soak.stopping.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(40):
            await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        task.cancel()
    return {
        "errors": dict(soak.errors),
        "refusals": dict(soak.refusals),
        "actions": dict(soak.actions),
        "cpu_s": _cpu_s(psutil.Process()),
    }


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds (user + system) a process has used so far."""
    times = process.cpu_times()
    return times.user + times.system


async def run(args: argparse.Namespace, base: str, pid: int) -> dict:
    """The honest client and the sampling here; the noise in a child process, so that its own
    work (receiving audio, building 10 000-character tokens) does not delay the honest
    client's measurements: only the server is shared, as between real clients."""
    known = {name for name, _ in noise_clients(Soak(base, 0.0))}
    unknown = (set(args.noise.split(",")) if args.noise else set()) - known
    if unknown:
        raise SystemExit(f"unknown noise {sorted(unknown)}: choose from {', '.join(sorted(known))}")
    soak = Soak(base, args.pause_s)
    server, here = psutil.Process(pid), psutil.Process()
    cpu: dict[str, float] = {}  # CPU seconds used per process and phase
    rss: list[tuple[float, float]] = []
    health: list[float] = []
    sampler_stop = asyncio.Event()
    sampler = asyncio.create_task(sample(pid, base, sampler_stop, rss, health))
    honest = asyncio.create_task(soak.honest())
    marks = [(time.perf_counter(), _cpu_s(server), _cpu_s(here))]
    await asyncio.sleep(args.duration_s * args.alone_fraction)
    marks.append((time.perf_counter(), _cpu_s(server), _cpu_s(here)))
    soak.phase = "noise"
    noise_s = args.duration_s * (1 - args.alone_fraction)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.soak",
        "--noise-only",
        base,
        "--duration-s",
        str(noise_s),
        "--noise",
        args.noise,
        "--pause-s",
        str(args.pause_s),
        stdout=asyncio.subprocess.PIPE,
    )
    if args.noise_cpus:
        os.sched_setaffinity(child.pid, {int(c) for c in args.noise_cpus.split(",")})
    out, _ = await child.communicate()
    noise = json.loads(out)
    marks.append((time.perf_counter(), _cpu_s(server), _cpu_s(here)))
    for phase, (t0, server0, here0), (t1, server1, here1) in zip(("alone", "noise"), marks, marks[1:], strict=False):
        cpu[f"server, {phase}"] = (server1 - server0) / (t1 - t0)
        cpu[f"honest client and sampler, {phase}"] = (here1 - here0) / (t1 - t0)
    cpu["noisy clients, noise"] = noise["cpu_s"] / noise_s
    soak.stopping.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(40):
            await honest
    honest.cancel()
    # Every stream should end by itself now: closed by its client, or idle / not reading.
    hung = None
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + args.idle_timeout_s + 15
        while time.monotonic() < deadline:
            async with http.get(base + "/health") as r:
                hung = (await r.json())["active_streams"]
            if hung == 0:
                break
            await asyncio.sleep(1)
    sampler_stop.set()
    await sampler
    return {
        "ttfa": soak.ttfa,
        "server_ttfa": soak.server_ttfa,
        "errors": dict(Counter(soak.errors) + Counter(noise["errors"])),
        "refusals": noise["refusals"],
        "actions": noise["actions"],
        "hung_streams": hung,
        "cores_used": cpu,
        "rss_mb": rss,
        "health_s": health,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=120.0, help="seconds of load (both phases)")
    parser.add_argument("--alone-fraction", type=float, default=0.2, help="share of the time without noise")
    parser.add_argument("--engine", default="espeak", choices=["espeak", "soprano", "auto"], help="tts-server engine")
    parser.add_argument("--noise", default="", help="comma-separated noisy clients to run (default: all)")
    parser.add_argument("--pause-s", type=float, default=0.5, help="pause between two actions of a noisy client")
    parser.add_argument("--idle-timeout-s", type=float, default=10.0, help="the server's idle_timeout_s")
    parser.add_argument("--gil-switch-interval-ms", type=float, default=1.0, help="the server's gil_switch_interval_ms")
    parser.add_argument(
        "--noise-cpus",
        default="",
        help="comma-separated CPUs the noisy clients' process is pinned to (default: any); on one machine "
        "their own work competes with the server for the cores, which a remote client's would not",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--noise-only", metavar="URL", help=argparse.SUPPRESS)  # the child process of `run`
    args = parser.parse_args(argv)
    if args.noise_only:
        print(json.dumps(asyncio.run(run_noise(args, args.noise_only))))
        return 0

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[engine]\nname = "{args.engine}"\n'
            f"[server]\nidle_timeout_s = {args.idle_timeout_s}\nrequest_timeout_s = 5.0\n"
            f"gil_switch_interval_ms = {args.gil_switch_interval_ms}\n"
        )
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "tts_server", "--config", str(config), "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=1):
                            break
                    except OSError:
                        if server.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit(f"tts-server did not start:\n{log_path.read_text()}") from None
                        time.sleep(0.3)
                time.sleep(1.0)  # warm-up sentence
                results = asyncio.run(run(args, base, server.pid))
                stopped = time.monotonic()
                server.send_signal(signal.SIGTERM)
                exit_status = server.wait(30)
                results["sigterm_exit_status"] = exit_status
                results["sigterm_exit_s"] = time.monotonic() - stopped
            finally:
                if server.poll() is None:
                    server.kill()
        server_log = log_path.read_text()
    bad_lines = [line for line in server_log.splitlines() if " ERROR " in line or "Traceback" in line]
    results["server_error_lines"] = bad_lines[:20]
    results["server_log_lines"] = len(server_log.splitlines())
    if bad_lines:
        results["errors"]["server log: ERROR or traceback"] = len(bad_lines)
    print_report(args, results)
    if args.json:
        summary = {k: v for k, v in results.items() if k not in ("rss_mb", "health_s")}
        summary["rss_mb_series"] = results["rss_mb"]
        summary["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
        summary["args"] = vars(args) | {"json": str(args.json)}
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


def print_report(args: argparse.Namespace, results: dict) -> None:
    rss = [mb for _, mb in results["rss_mb"]]
    health = [s for s in results["health_s"] if s != float("inf")]
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"  # noqa: E731
    print(
        f"soak: {args.duration_s:.0f} s ({args.alone_fraction:.0%} alone), engine {args.engine}, "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), loopback"
    )
    print(f"{'honest client TTFA':<22} {'n':>5} {'p50':>8} {'p95':>8} {'max':>8}")
    for phase in ("alone", "noise"):
        values = results["ttfa"][phase]
        print(
            f"{phase:<22} {len(values):>5} {ms(percentile(values, 0.5)):>8} {ms(percentile(values, 0.95)):>8} "
            f"{ms(max(values) if values else None):>8}"
        )
    for phase in ("alone", "noise"):
        values = results["server_ttfa"][phase]
        print(
            f"{'  inside, ' + phase:<22} {len(values):>5} {ms(percentile(values, 0.5)):>8} "
            f"{ms(percentile(values, 0.95)):>8} {ms(max(values) if values else None):>8}"
        )
    p95_alone, p95_noise = percentile(results["ttfa"]["alone"], 0.95), percentile(results["ttfa"]["noise"], 0.95)
    if p95_alone and p95_noise:
        print(f"p95 under noise / alone: {p95_noise / p95_alone:.2f}x (target ≤ 2)")
    if rss:
        print(f"server RSS: start {rss[0]:.0f} MB, end {rss[-1]:.0f} MB, max {max(rss):.0f} MB")
    print(
        f"/health: p50 {ms(percentile(health, 0.5))}, p95 {ms(percentile(health, 0.95))}, "
        f"max {ms(max(health) if health else None)}, unanswered {len(results['health_s']) - len(health)}"
    )
    cores = ", ".join(f"{name} {used:.2f}" for name, used in results["cores_used"].items())
    print(
        f"cores used (CPU s per s): {cores}"
        + (f"; noisy clients pinned to CPU {args.noise_cpus}" if args.noise_cpus else "")
    )
    print(f"hung streams after the noise stopped: {results['hung_streams']}")
    print(f"SIGTERM: exit status {results['sigterm_exit_status']} after {results['sigterm_exit_s']:.1f} s")
    print(f"noise actions: {dict(sorted(results['actions'].items()))}")
    print(f"refusals (expected): {dict(sorted(results['refusals'].items()))}")
    errors = results["errors"]
    print(f"errors: {sum(errors.values())} {dict(sorted(errors.items())) if errors else ''}")
    for line in results["server_error_lines"][:5]:
        print("  server:", line)


if __name__ == "__main__":
    raise SystemExit(main())
