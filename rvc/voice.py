"""Loading RVC voice files (``.pth``) and their retrieval indexes (``.index``).

A voice file as written by the RVC WebUI, Applio or rvc-python is a pickled dict:
``weight`` (state_dict of the synthesizer without ``enc_q.*``, usually fp16, with
old-style weight-norm tensors ``…weight_g`` / ``…weight_v``), ``config`` (the
18-item hyper-parameter list, see :class:`~rvc.synthesizer.SynthesizerConfig`),
``info``, ``sr`` (``"32k"``/``"40k"``/``"48k"``), ``f0`` (1 = pitch-guided) and
``version`` (``"v1"``/``"v2"``, missing means v1). Other keys are ignored.

The ``.index`` is a faiss index (``IVF…,Flat``) over the training set's content
features; at inference each frame is replaced in part by the inverse-square-distance
weighted mean of its 8 nearest training frames (RVC WebUI ``infer/modules/vc/pipeline.py``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .errors import VoiceFileError
from .runtime import TORCH, Backend
from .synthesizer import SAMPLE_RATES, Synthesizer, SynthesizerConfig

log = logging.getLogger(__name__)

_INDEX_NEIGHBOURS = 8


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by plain weights, ``w = g · v / ‖v‖``.

    Handles the old names (``X.weight_g`` / ``X.weight_v``, ``torch.nn.utils.weight_norm``)
    and the parametrization names (``X.parametrizations.weight.original0`` / ``original1``).
    The norm is taken over every axis on which ``g`` has size 1 (axis 0 is kept for
    the default ``dim=0``). Folded weights are float32 (rounding them back to the
    file's fp16 would lose precision the reference keeps).

    Returns:
        A new dict with ``X.weight`` instead of each pair; other entries unchanged.

    Raises:
        KeyError: a ``g`` without its ``v`` or the reverse (the caller reports the file).
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for g_suffix, v_suffix in (
            (".weight_g", ".weight_v"),
            (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
        ):
            if key.endswith(g_suffix):
                pairs.setdefault(key[: -len(g_suffix)], {})["g"] = value
                break
            if key.endswith(v_suffix):
                pairs.setdefault(key[: -len(v_suffix)], {})["v"] = value
                break
        else:
            out[key] = value
    for prefix, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            raise KeyError(f"weight-norm tensor {prefix} has only its {'g' if 'g' in pair else 'v'} part")
        g, v = pair["g"].float(), pair["v"].float()
        dims = [d for d in range(v.dim()) if g.dim() <= d or g.shape[d] == 1]
        norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
        out[prefix + ".weight"] = v * (g / norm)
    return out


class FeatureIndex:
    """Nearest-neighbour retrieval over a voice's training features (a faiss index).

    Args:
        index: a loaded ``faiss.Index`` of dimension 256 (v1) or 768 (v2).
        path: where it came from, for messages.
    """

    def __init__(self, index, path: Path) -> None:
        self.index = index
        self.path = path
        self.dim = int(index.d)
        self.vectors = index.reconstruct_n(0, index.ntotal).astype(np.float32)

    def blend(self, features: np.ndarray, rate: float) -> np.ndarray:
        """Mix each frame with its retrieved neighbours.

        Args:
            features: ``(T, dim)`` float32 content features.
            rate: 0 keeps ``features``; 1 uses only the retrieved vectors.

        Returns:
            ``(T, dim)`` float32: ``rate · retrieved + (1 − rate) · features``, where
            ``retrieved`` is the 1/d²-weighted mean of the 8 nearest training vectors.
        """
        feats = np.ascontiguousarray(features, dtype=np.float32)
        dist, ids = self.index.search(feats, _INDEX_NEIGHBOURS)
        weight = np.square(1.0 / np.maximum(dist, 1e-12))
        weight /= weight.sum(axis=1, keepdims=True)
        retrieved = np.sum(self.vectors[ids] * weight[:, :, None], axis=1)
        return (retrieved * rate + (1.0 - rate) * feats).astype(np.float32)


def load_index(path: str | os.PathLike, *, expected_dim: int | None = None) -> FeatureIndex:
    """Read a faiss ``.index`` file.

    Raises:
        VoiceFileError: missing, unreadable, empty, or of a dimension other than
            ``expected_dim``.
    """
    import faiss

    p = Path(path)
    if not p.is_file():
        raise VoiceFileError(f"index file {p} does not exist")
    try:
        index = faiss.read_index(str(p))
    except Exception as exc:  # faiss raises RuntimeError with a C++ trace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VoiceFileError(f"index file {p} is not a readable faiss index: {first}") from exc
    if index.ntotal == 0:
        raise VoiceFileError(f"index file {p} holds no vectors")
    if expected_dim is not None and index.d != expected_dim:
        raise VoiceFileError(
            f"index file {p} has dimension {index.d}, but the voice needs {expected_dim} "
            f"({'v1' if expected_dim == 256 else 'v2'} features): it belongs to another voice or version"
        )
    return FeatureIndex(index, p)


@dataclass
class Voice:
    """A loaded RVC voice, ready for inference (read-only; share it between streams).

    Attributes:
        name: file stem of the ``.pth``.
        path: the ``.pth`` file.
        sample_rate: output sample rate in Hz (32000, 40000 or 48000).
        version: ``"v1"`` (HuBERT layer 9 → 256-d) or ``"v2"`` (layer 12, 768-d).
        f0: pitch-guided voice (needs an F0 estimator).
        synthesizer: the network, in eval mode on ``device`` in ``dtype``.
        index: retrieval index or ``None``; ``index_rate`` its blend weight (0..1).
        info: the file's free-text ``info`` field.
    """

    name: str
    path: Path
    sample_rate: int
    version: str
    f0: bool
    synthesizer: Synthesizer
    index: FeatureIndex | None = None
    index_rate: float = 0.75
    info: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        """Content feature size the voice expects: 256 (v1) or 768 (v2)."""
        return self.synthesizer.feature_dim

    @property
    def hop_length(self) -> int:
        """Output samples per 10 ms frame."""
        return self.synthesizer.hop_length

    @property
    def device(self) -> torch.device:
        return self.synthesizer.emb_g.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.synthesizer.emb_g.weight.dtype


def load_voice(
    pth_path: str | os.PathLike,
    *,
    index_path: str | os.PathLike | None = None,
    index_rate: float = 0.75,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: Backend = TORCH,
) -> Voice:
    """Load an RVC voice file (v1/v2, 32k/40k/48k, with or without pitch guidance).

    The version and pitch guidance are read from the weights themselves (a declared
    ``version``/``f0`` that disagrees is logged and overridden: some tools omit or
    mislabel them); ``spk_embed_dim`` is taken from ``emb_g.weight`` as upstream does.

    Args:
        pth_path: the voice ``.pth``.
        index_path: optional faiss ``.index`` of the same voice.
        index_rate: weight of retrieved features, 0..1 (0 disables retrieval).
        device: torch device for inference.
        dtype: ``torch.float32``, ``torch.bfloat16`` (CPUs with AVX-512 BF16), or
            ``torch.float16`` (CUDA only, in practice).
        backend: where the networks run (:mod:`rvc.runtime`); OpenVINO needs float32.

    Raises:
        VoiceFileError: missing/truncated/non-RVC file, missing or misshapen weights,
            an index whose dimension does not fit the version.
        ValueError: ``index_rate`` outside 0..1.
    """
    if not 0.0 <= index_rate <= 1.0:
        raise ValueError(f"index_rate must be within 0..1, got {index_rate}")
    p = Path(pth_path)
    ckpt = load_checkpoint(p, "RVC voice")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("weight"), dict) or "config" not in ckpt:
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise VoiceFileError(
            f"{p} is not an RVC voice file: expected a dict with 'weight' and 'config' "
            f"(RVC WebUI / Applio format), found {keys}"
        )
    weights = {k: v for k, v in ckpt["weight"].items() if not k.startswith("enc_q.")}
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise VoiceFileError(f"{p}: 'weight' holds values that are not tensors")
    try:
        weights = fold_weight_norm(weights)
    except KeyError as exc:
        raise VoiceFileError(f"{p}: {exc.args[0]}") from exc
    for key in ("emb_g.weight", "enc_p.emb_phone.weight"):
        if key not in weights:
            raise VoiceFileError(f"{p} is not an RVC voice file: 'weight' lacks {key}")
    try:
        cfg_list = list(ckpt["config"])
        cfg_list[-3] = int(weights["emb_g.weight"].shape[0])
        cfg = SynthesizerConfig.from_list(cfg_list)
    except (TypeError, ValueError) as exc:
        raise VoiceFileError(f"{p}: {exc}") from exc

    feature_in = int(weights["enc_p.emb_phone.weight"].shape[1])
    if feature_in not in (256, 768):
        raise VoiceFileError(f"{p}: content feature size {feature_in} is neither 256 (v1) nor 768 (v2)")
    version = "v1" if feature_in == 256 else "v2"
    declared = ckpt.get("version", "v1")
    if declared != version:
        log.warning("%s declares version %r but its weights are %s; using %s", p, declared, version, version)
    use_pitch = "enc_p.emb_pitch.weight" in weights
    declared_f0 = ckpt.get("f0", 1)
    if bool(declared_f0) != use_pitch:
        log.warning(
            "%s declares f0=%r but its weights are %s pitch guidance",
            p,
            declared_f0,
            "with" if use_pitch else "without",
        )
    sr_field = ckpt.get("sr")
    if isinstance(sr_field, str) and SAMPLE_RATES.get(sr_field, cfg.sample_rate) != cfg.sample_rate:
        log.warning("%s: 'sr' says %s but config says %d Hz; using the config", p, sr_field, cfg.sample_rate)

    try:
        net = Synthesizer(cfg, version, use_pitch)
    except (ValueError, RuntimeError) as exc:
        raise VoiceFileError(f"{p}: hyper-parameters do not describe a valid synthesizer: {exc}") from exc
    expected = net.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise VoiceFileError(f"{p}: weights missing for {len(missing)} tensors, e.g. {missing[:3]}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        log.warning("%s: ignoring %d unexpected tensors, e.g. %s", p, len(extra), extra[:3])
    bad = [(k, tuple(weights[k].shape), tuple(t.shape)) for k, t in expected.items() if weights[k].shape != t.shape]
    if bad:
        k, got, want = bad[0]
        raise VoiceFileError(f"{p}: {len(bad)} tensors do not match the config, e.g. {k} is {got}, expected {want}")
    net.load_state_dict({k: weights[k].float() for k in expected})
    net.eval().to(device=device, dtype=dtype)
    net.use_backend(backend)

    index = None
    if index_path is not None:
        index = load_index(index_path, expected_dim=net.feature_dim)
    meta = {k: v for k, v in ckpt.items() if k != "weight" and isinstance(v, (str, int, float))}
    voice = Voice(
        name=p.stem,
        path=p,
        sample_rate=cfg.sample_rate,
        version=version,
        f0=use_pitch,
        synthesizer=net,
        index=index,
        index_rate=index_rate,
        info=str(ckpt.get("info", "")),
        metadata=meta,
    )
    log.info(
        "loaded voice %s: %s, %d Hz, %s pitch guidance%s",
        voice.name,
        version,
        voice.sample_rate,
        "with" if use_pitch else "without",
        f", index {index.path.name}" if index else "",
    )
    return voice
