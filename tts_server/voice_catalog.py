"""The server's RVC voices (a :class:`~tts_server.voice_stage.VoiceProvider`): the configured
default and a folder of voices to choose from.

Builds stage 3 of the pipeline from ``[rvc]``: the content encoder (HuBERT) and the F0
estimator are loaded once and shared; each voice's models are loaded once (the default
at start-up, folder voices on first use) and every stream gets its own
:class:`rvc.StreamingConverter` (its own buffers, pitch cache and crossfade state).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RVCSettings
from .events import UnknownVoice
from .voice_stage import Passthrough, VoiceStage

if TYPE_CHECKING:
    import torch

    import rvc

log = logging.getLogger(__name__)


def _dtype(precision: str, device: str) -> torch.dtype:
    import torch

    if precision == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, precision)


def _backend(settings: RVCSettings, device: str) -> tuple[rvc.Backend, torch.dtype]:
    """The runtime and torch dtype ``[rvc]`` asks for on ``device`` (see config.toml)."""
    import torch

    import rvc

    on_cpu = device == "cpu"
    runtime = settings.runtime
    if runtime == "auto":
        runtime = "openvino" if on_cpu and rvc.openvino_available() else "torch"
    if runtime == "openvino":
        if not on_cpu:
            raise ValueError(f"[rvc] runtime 'openvino' runs on the CPU, not on {device}")
        precision = settings.precision
        if precision == "auto":
            precision = "bfloat16" if rvc.cpu_has_bf16() else "float32"
        if precision == "float16":
            raise ValueError("[rvc] precision float16 is for GPUs; with openvino use float32 or bfloat16")
        return rvc.Backend("openvino", precision), torch.float32
    return rvc.Backend(), _dtype(settings.precision, device)


class VoiceCatalog:
    """Voice stages by name, for :class:`~tts_server.scheduler.Pipeline` (its ``voices``).

    Args:
        settings: the ``[rvc]`` section.
        input_sample_rate: sample rate in Hz of the TTS engine's audio (32 000 for Soprano).
        device: device for RVC when ``settings.device`` is ``"auto"`` (the engine's).
        noise: sample the prior and NSF noise (RVC's behaviour); ``False`` makes the
            conversion deterministic (tests).

    Raises (from the constructor, so the server refuses to start):
        rvc.VoiceFileError: the default voice, its index, the HuBERT or ``rmvpe.pt`` file
            is missing or unusable (the message names the file and the problem).
        FileNotFoundError: ``voices_dir`` is not a directory.
    """

    def __init__(
        self, settings: RVCSettings, input_sample_rate: int, device: str = "cpu", *, noise: bool = True
    ) -> None:
        self.settings = settings
        self.noise = noise
        self.input_sample_rate = input_sample_rate
        self.device = device if settings.device == "auto" else settings.device
        self.backend, self.dtype = _backend(settings, self.device)
        self._blocks: dict[str, tuple[float, float]] = {}
        self._files: dict[str, tuple[Path, Path | None]] = {}
        self._converters: dict[str, rvc.VoiceConverter] = {}
        self._lock = threading.Lock()
        self.default: str | None = None
        if settings.voices_dir:
            folder = Path(settings.voices_dir).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"[rvc] voices_dir {folder} is not a directory")
            for pth in sorted(folder.glob("*.pth")):
                index = pth.with_suffix(".index")
                self._files[pth.stem] = (pth, index if index.is_file() else None)
        if settings.voice:
            pth = Path(settings.voice).expanduser()
            self.default = pth.stem
            self._files[pth.stem] = (pth, Path(settings.index).expanduser() if settings.index else None)
        self.enabled = bool(self._files)
        if not self.enabled:
            return
        import rvc

        self._content = rvc.load_content_encoder(
            Path(settings.hubert).expanduser(), device=self.device, dtype=self.dtype, backend=self.backend
        )
        rmvpe = Path(settings.rmvpe).expanduser() if settings.rmvpe else None
        self._f0 = rvc.load_f0_estimator(settings.f0_method, rmvpe, device=self.device, dtype=self.dtype)
        if self.default is not None:
            self._converter(self.default)  # a bad default voice stops the server here

    def names(self) -> list[str]:
        """Names of the voices offered (file stems)."""
        return sorted(self._files)

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /voices`` lists: name, files, whether it is the default and loaded."""
        return [
            {
                "name": name,
                "file": str(pth),
                "index": str(index) if index else None,
                "default": name == self.default,
                "loaded": name in self._converters,
            }
            for name, (pth, index) in sorted(self._files.items())
        ]

    def _converter(self, name: str) -> rvc.VoiceConverter:
        import rvc

        with self._lock:
            if name not in self._converters:
                pth, index = self._files[name]
                voice = rvc.load_voice(
                    pth,
                    index_path=index,
                    index_rate=self.settings.index_rate,
                    device=self.device,
                    dtype=self.dtype,
                    backend=self.backend,
                )
                converter = rvc.VoiceConverter(
                    voice, self._content, self._f0, protect=self.settings.protect, noise=self.noise
                )
                self._blocks[name] = self._block_settings(name, converter)
                self._converters[name] = converter
            return self._converters[name]

    def block_settings(self, name: str) -> tuple[float, float]:
        """``(block_ms, context_ms)`` the streams of a loaded voice use."""
        return self._blocks[name]

    def _block_settings(self, name: str, converter: rvc.VoiceConverter) -> tuple[float, float]:
        """Measure the voice on a CPU and pick its block and context (``auto_block``), else the configured ones."""
        import rvc

        s = self.settings
        configured = (s.block_ms, s.context_ms)
        if not s.auto_block or self.device != "cpu":
            return configured
        measured = {
            (b, c): rvc.measure_block_ms(converter, b, c)
            for b in rvc.CANDIDATE_BLOCKS_MS
            for c in rvc.CANDIDATE_CONTEXTS_MS
            if b >= s.crossfade_ms
        }
        chosen = rvc.choose_block_settings(measured, crossfade_ms=s.crossfade_ms)
        if chosen is None:
            b, c = min(measured, key=lambda k: measured[k] / k[0])
            log.warning(
                "voice %s cannot convert in real time on this CPU (best: %d ms blocks take %.0f ms, on %s); "
                "using block %g ms, context %g ms: playback must buffer ahead",
                name,
                b,
                measured[(b, c)],
                self.backend.name,
                *configured,
            )
            return configured
        b, c = chosen
        log.info(
            "voice %s on %s: block %d ms, context %d ms (converts a block in %.0f ms, RTF %.2f; "
            "the least added latency within 80%% of real time)",
            name,
            self.backend.name,
            b,
            c,
            measured[chosen],
            measured[chosen] / b,
        )
        return float(b), float(c)

    def __call__(self, name: str | None) -> VoiceStage:
        """A new voice stage for one stream (blocking: may load the voice's files).

        Args:
            name: a voice name, or ``None`` for the default (no conversion if there is none).

        Raises:
            UnknownVoice: no such voice, or its files are unusable (the message says why).
        """
        import rvc

        name = name if name is not None else self.default
        if name is None:
            return Passthrough(self.input_sample_rate)
        if name not in self._files:
            raise UnknownVoice(f"unknown voice {name!r}: available voices: {', '.join(self.names()) or 'none'}")
        try:
            converter = self._converter(name)
        except rvc.VoiceFileError as exc:
            raise UnknownVoice(f"voice {name!r} refused: {exc}") from exc
        block_ms, context_ms = self._blocks[name]
        return rvc.StreamingConverter(
            converter,
            self.input_sample_rate,
            block_ms=block_ms,
            context_ms=context_ms,
            crossfade_ms=self.settings.crossfade_ms,
        )
