"""The tts-server command: "serve" (the default) runs the server, "say" speaks through a running one."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("tts_server")

DEFAULT_CONFIG = Path("config.toml")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the TTS server (default)")
    p.add_argument("--config", type=Path, help="TOML settings file (default: ./config.toml if present)")
    p.add_argument("--host", help="address to listen on")
    p.add_argument("--port", type=int, help="port to listen on")
    p.add_argument("--engine", choices=["auto", "soprano", "espeak"], help="TTS engine")
    p.add_argument("--model-path", help="local Soprano model directory (the Hub repo's files)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--voice", help="RVC voice model (.pth); enables voice conversion")
    p.add_argument("--index", help="the voice's faiss .index")
    p.add_argument("--hubert", help="HuBERT content encoder: hubert_base.pt or a transformers directory")
    p.add_argument("--rmvpe", help="rmvpe.pt for the rmvpe F0 method")
    p.add_argument(
        "--f0-method",
        choices=["pm", "harvest", "dio", "crepe", "crepe-tiny", "fcpe", "rmvpe"],
        help="F0 estimator for RVC",
    )


def _say_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "say",
        help="speak text through a running server's /ws/stream and save a WAV",
        description="Speak text through a running server's /ws/stream and save a WAV. "
        "A server with API keys wants one: it is read from the TTS_API_KEY environment variable.",
    )
    p.add_argument("text", help="text to speak")
    p.add_argument("-o", "--output", type=Path, default=Path("say.wav"), help="WAV file to write")
    p.add_argument("--url", default="ws://127.0.0.1:8765/ws/stream", help="the server's /ws/stream URL")
    p.add_argument("--pitch-shift", type=float, default=0.0, help="semitones, -24..24")
    p.add_argument("--format", choices=["f32", "s16"], default="s16", help="WAV sample format")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the audio")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the server to come up")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tts-server", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub)
    _say_parser(sub)
    return parser


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from rvc import VoiceFileError

    from .app import create_app
    from .config import ConfigError, load_config
    from .engines import EngineLoadError

    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    overrides = {
        "server": {"host": args.host, "port": args.port},
        "engine": {"name": args.engine, "device": args.device},
        "soprano": {"model_path": args.model_path},
        "rvc": {
            "voice": args.voice,
            "index": args.index,
            "hubert": args.hubert,
            "rmvpe": args.rmvpe,
            "f0_method": args.f0_method,
        },
    }
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"tts-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.server.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The event loop and the inference thread share the GIL. Every socket call of the loop
    # gives it up, and then waits for the inference thread's next switch to get it back:
    # up to 5 ms each by default, so a busy server answered its clients in convoys.
    sys.setswitchinterval(config.server.gil_switch_interval_ms / 1000)
    app = create_app(config)
    app.on_startup.append(_freeze_startup_objects)
    try:
        # SIGTERM and SIGINT stop it gracefully (aiohttp's handlers; the application's
        # on_shutdown closes every stream): run_app returns, and the status is 0.
        web.run_app(
            app,
            host=config.server.host,
            port=config.server.port,
            print=None,
            shutdown_timeout=config.server.shutdown_timeout_s / 4,  # on_shutdown takes up to half
        )
    except (EngineLoadError, VoiceFileError, FileNotFoundError, ValueError) as exc:
        print(f"tts-server: cannot start: {exc}", file=sys.stderr)
        return 2
    log.info("stopped")
    return 0


async def _freeze_startup_objects(app: object) -> None:
    """Once the engine is loaded: keep its objects (and torch's, and the app's) out of the
    garbage collector's sight. Otherwise each full collection scans them all, about 0.3 s
    during which the event loop stands still (measured under a flood of small messages);
    they live as long as the process anyway."""
    gc.collect()
    gc.freeze()


async def say(text: str, url: str, pitch_shift: float = 0.0, timeout_s: float = 120.0, wait_s: float = 0.0):
    """Stream ``text`` piece by piece (as an LLM would) to ``/ws/stream`` and collect the reply.

    Returns:
        ``(audio, ttfa_s)``: ``(N,)`` float32 at 48 kHz, and the time from the last token
        sent to the first audio received (``None`` if there was none).

    Raises:
        RuntimeError: the server sent an error or closed the connection.
        TimeoutError: no ``flushed`` event within ``timeout_s``.
        aiohttp.ClientError: no server at ``url`` (after ``wait_s`` seconds of retries).
    """
    import numpy as np

    from .client import API_KEY_ENV, ConnectionClosed, StreamClient, text_pieces
    from .events import Audio, Flushed, StreamError

    parts: list[np.ndarray] = []
    first_audio = None
    api_key = os.environ.get(API_KEY_ENV) or None
    async with await StreamClient.connect(url, wait_s=wait_s, heartbeat_s=None, api_key=api_key) as client:
        for piece in text_pieces(text):
            await client.push(piece, pitch_shift)
        sent = time.perf_counter()
        flush_id = await client.flush()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    event = await client.receive()
                    if isinstance(event, Audio):
                        first_audio = first_audio or time.perf_counter()
                        parts.append(event.pcm)
                    elif isinstance(event, StreamError):
                        raise RuntimeError(f"server error: {event.message}")
                    elif isinstance(event, Flushed) and event.flush_id == flush_id:
                        break
        except ConnectionClosed as exc:
            raise RuntimeError(str(exc)) from None
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return audio, (None if first_audio is None else first_audio - sent)


def say_command(args: argparse.Namespace) -> int:
    import aiohttp

    from .client import API_KEY_ENV
    from .events import OUTPUT_SAMPLE_RATE
    from .transport import encode_wav

    try:
        audio, ttfa = asyncio.run(say(args.text, args.url, args.pitch_shift, args.timeout, args.wait))
    except aiohttp.WSServerHandshakeError as exc:
        why = {
            401: f"it wants an API key: set {API_KEY_ENV}",
            403: "it refused this origin or host name",
            429: "this client holds all the streams it may",
        }.get(exc.status, exc.message)
        print(f"tts-server say: the server at {args.url} refused the connection ({exc.status}): {why}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"tts-server say: {exc or type(exc).__name__} (is the server running at {args.url}?)", file=sys.stderr)
        return 1
    args.output.write_bytes(encode_wav(audio, OUTPUT_SAMPLE_RATE, args.format))
    first = "no audio" if ttfa is None else f"first audio {ttfa * 1000:.0f} ms after the last token"
    print(f"wrote {args.output}: {len(audio) / OUTPUT_SAMPLE_RATE:.2f} s at 48 kHz ({first})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("serve", "say", "-h", "--help"):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    return say_command(args) if args.command == "say" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
