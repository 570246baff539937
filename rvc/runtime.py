"""Where RVC's heavy networks run: PyTorch eager, or OpenVINO on the CPU.

Profiled on the 2-core CPU this project targets (AMD EPYC Zen 5, AVX-512 with BF16 and
VNNI; real-size random-weight v2 48k voice, 250 ms block, 500 ms context, best of 9):

=================================  ==========  =============  ==============
part of one block                  torch fp32  OpenVINO fp32  OpenVINO bf16
=================================  ==========  =============  ==============
HuBERT-base over the 0.82 s buffer    300 ms        72 ms          41 ms
prior encoder + flow (82 frames)       61 ms        27 ms          20 ms
NSF-HiFi-GAN decoder, 310 ms @48k     426 ms       182 ms         110 ms
=================================  ==========  =============  ==============

(F0 by ``pm`` takes 1–2 ms and index retrieval 0.3 ms.) PyTorch's eager CPU kernels
leave most of the machine idle on these shapes (many small 1-D convolutions, batch 1);
OpenVINO's graph compiler fuses them and picks AVX-512 kernels, and on CPUs with
AVX-512 BF16 or AMX it can run them in bfloat16. ONNX Runtime was measured too
(decoder 278 ms in fp32) and loses to OpenVINO here, so it is not offered.

A :class:`Runner` wraps one ``nn.Module`` for one :class:`Backend`: ``torch`` calls the
module itself (whatever dtype it was loaded in), ``openvino`` converts it once
(TorchScript tracing through ``openvino.convert_model``, with the time axes left
dynamic) and compiles it for the CPU with ``INFERENCE_PRECISION_HINT`` set to the
backend's precision. Inputs and outputs stay torch tensors; random draws (the prior's
and the NSF source's noise) stay in PyTorch outside the compiled graphs, so every
backend sees the same noise for the same seed.

Reference: OpenVINO ``convert_model`` / ``Core.compile_model`` (docs.openvino.ai).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "openvino")
PRECISIONS = ("float32", "bfloat16")
#: What ``pip install`` line brings a runtime's package.
_INSTALL = {"openvino": "pip install openvino"}


@dataclass(frozen=True)
class Backend:
    """A runtime and the precision it computes in.

    Attributes:
        runtime: ``"torch"`` (eager PyTorch in the modules' own dtype) or ``"openvino"``.
        precision: for OpenVINO, ``"float32"`` or ``"bfloat16"`` (the CPU plugin's
            inference precision); ignored by ``"torch"``, whose precision is the dtype
            the models were loaded in.
    """

    runtime: str = "torch"
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.runtime == "openvino" and importlib.util.find_spec("openvino") is None:
            raise ValueError(f"runtime 'openvino' needs the openvino package: {_INSTALL['openvino']}")

    @property
    def name(self) -> str:
        """``"torch"``, ``"openvino-float32"`` or ``"openvino-bfloat16"``."""
        return "torch" if self.runtime == "torch" else f"{self.runtime}-{self.precision}"


TORCH = Backend()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (AVX-512 BF16 or AMX-BF16).

    Read from ``/proc/cpuinfo`` (Linux); ``False`` where that cannot be read. Without
    them OpenVINO emulates bfloat16 and gains nothing.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def openvino_available() -> bool:
    """Whether the ``openvino`` package is installed."""
    return importlib.util.find_spec("openvino") is not None


class Runner(Protocol):
    """One network, callable on torch tensors; returns its first output as float32."""

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor: ...


class EagerRunner:
    """Calls the module itself (PyTorch eager, in the module's dtype)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @torch.inference_mode()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


class OpenVINORunner:
    """The module compiled by OpenVINO for the CPU.

    Args:
        module: an ``nn.Module`` in eval mode, float32, whose ``forward`` takes tensors and
            returns one tensor.
        example_inputs: tensors of the right dtypes and ranks (used for tracing).
        dynamic_axes: for each input, the axes whose size may change between calls.
        precision: ``"float32"`` or ``"bfloat16"`` (``INFERENCE_PRECISION_HINT``).
        threads: CPU threads per inference (default: torch's thread count).

    One compiled model serves every caller; each thread gets its own infer request.
    """

    def __init__(
        self,
        module: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        dynamic_axes: tuple[tuple[int, ...], ...],
        precision: str = "float32",
        threads: int | None = None,
    ) -> None:
        import openvino as ov

        shapes = [
            ov.PartialShape([-1 if axis in dyn else int(size) for axis, size in enumerate(x.shape)])
            for x, dyn in zip(example_inputs, dynamic_axes, strict=True)
        ]
        with torch.no_grad():
            model = ov.convert_model(module, example_input=example_inputs, input=shapes)
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.precision = precision
        self._local = threading.local()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        arrays = [np.ascontiguousarray(x.detach().cpu().numpy()) for x in inputs]
        out = request.infer(arrays)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))


def make_runner(
    module: nn.Module,
    backend: Backend,
    example_inputs: tuple[torch.Tensor, ...],
    dynamic_axes: tuple[tuple[int, ...], ...],
) -> Runner:
    """A :class:`Runner` of ``module`` for ``backend`` (OpenVINO compiles here: seconds)."""
    if backend.runtime == "torch":
        return EagerRunner(module)
    return OpenVINORunner(module, example_inputs, dynamic_axes, backend.precision)
