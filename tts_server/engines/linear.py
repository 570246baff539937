"""Matrix products with their weights stored for speed: float32, bfloat16, float16 or int8.

Shared by the lean Qwen3 backbone (:mod:`.qwen3`) and the streaming decoder
(:mod:`.soprano_decoder`). Every :class:`Linear` takes and returns float32, so the
precision of the weights is a load option that changes nothing around it.

On CPU the weights are pre-packed for oneDNN (``torch.ops.mkldnn._reorder_linear_weight``
and ``_linear_pointwise``, the ops torch's own compiler uses for frozen CPU models) when
this torch build has them: for the 1–64 rows a decode step multiplies, that path was
2–3× faster than ``F.linear`` (MKL) on this project's AMD EPYC CPU (measured, 1 thread:
17 layers of Soprano's products, 4 rows: 15 ms packed vs 42 ms ``F.linear``). Without
them (another build, a GPU) ``F.linear`` runs.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .base import EngineLoadError

log = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16", "float16", "int8"]
#: Every weight precision a :class:`Linear` supports.
PRECISIONS: tuple[Precision, ...] = ("float32", "bfloat16", "float16", "int8")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mkldnn_pack(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's pre-packed form of an (N, K) weight, or ``None`` where torch has no such op."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        probe = torch.zeros(2, weight.shape[1], dtype=weight.dtype)
        torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):  # an older torch or a build without oneDNN
        return None
    return packed


class Linear:
    """``y = x Wᵀ + b`` with the weight stored for speed; float32 (M, K) in, float32 (M, N) out.

    Args:
        weight: ``(N, K)`` float32 on the target device.
        bias: ``(N,)`` float32, or ``None``.
        precision: ``"float32"``; ``"bfloat16"`` / ``"float16"`` (activations cast at the
            product, float32 out); ``"int8"`` (CPU only: symmetric per-output-channel int8
            weights, activations quantised per call, fbgemm's dynamic quantisation, which
            uses AVX-512 VNNI where the CPU has it).
        pack: use oneDNN's pre-packed weights on CPU when available (``False``: always
            ``F.linear``, the path every other device takes).

    Raises:
        EngineLoadError: ``int8`` off the CPU, or a torch build without quantised kernels.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        precision: Precision = "float32",
        pack: bool = True,
    ) -> None:
        self.out_features, self.in_features = weight.shape
        self.precision = precision
        self._packed: torch.Tensor | None = None
        self._int8: Any = None
        if precision == "int8":
            if weight.device.type != "cpu":
                raise EngineLoadError("int8 weights are a CPU option (fbgemm); use bfloat16 on a GPU")
            try:
                scales = (weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0).double()
                zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
                with warnings.catch_warnings():
                    # fbgemm's prepack takes a quantised tensor, a type torch announces it will
                    # drop; until a replacement is as fast (torch._int_mm and the weight-only
                    # int8 kernel were 2-4x slower here), this is the int8 path, and its
                    # removal surfaces as the EngineLoadError below.
                    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
                    qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
                self._int8 = torch.ops.quantized.linear_prepack(qweight, bias)
            except (RuntimeError, AttributeError) as exc:
                raise EngineLoadError(f"int8 weights need torch's fbgemm kernels: {exc}") from None
            self.weight = weight.new_zeros(0)
            self.bias = bias
            return
        dtype = _DTYPES[precision]
        self.weight = weight.to(dtype).contiguous()
        self.bias = None if bias is None else bias.to(dtype).contiguous()
        if pack:
            self._packed = _mkldnn_pack(self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, K)`` float32 → ``(M, N)`` float32."""
        if self._int8 is not None:
            return torch.ops.quantized.linear_dynamic(x, self._int8)
        dtype = self.weight.dtype
        xin = x if dtype == torch.float32 else x.to(dtype)
        if self._packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(xin, self._packed, self.bias, "none", [], "")
        else:
            y = F.linear(xin, self.weight, self.bias)
        return y if dtype == torch.float32 else y.float()
