"""Content features: HuBERT-base (``hubert_base.pt``) or a transformers HuBERT/ContentVec.

RVC conditions its synthesizer on self-supervised speech features at 50 frames/s from
16 kHz audio: v1 voices use HuBERT layer 9 projected by ``final_proj`` (256-d), v2
voices the last layer (768-d) (RVC WebUI ``infer/modules/vc/pipeline.py``).

The fairseq checkpoint ``hubert_base.pt`` is read without fairseq: its tensors are
renamed onto ``transformers.HubertModel``, which implements the same network (Hsu et
al., "HuBERT", 2021; fairseq ``fairseq/models/hubert/hubert.py`` and
``fairseq/models/wav2vec/wav2vec2.py``).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .errors import VoiceFileError
from .runtime import TORCH, Backend, Runner, make_runner

log = logging.getLogger(__name__)

CONTENT_SAMPLE_RATE = 16000
HIDDEN_SIZE = 768
PROJECTED_SIZE = 256
_STANDARD_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
_LAYER_FOR_VERSION = {"v1": 9, "v2": 12}


class ContentEncoder(nn.Module):
    """HuBERT feature extractor for RVC (read-only; share it between voices and streams).

    Args:
        model: a ``transformers.HubertModel`` with hidden size 768.
        final_proj: the 768→256 projection used by v1 voices, if the checkpoint has one.
        normalize_waveform: zero-mean unit-variance normalise the input first (fairseq
            ``task.normalize``; False for HuBERT-base).
        source: the file or directory it came from, for messages.
    """

    def __init__(
        self, model, final_proj: nn.Linear | None, *, normalize_waveform: bool = False, source: Path | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.final_proj = final_proj
        self.normalize_waveform = normalize_waveform
        self.source = source
        self.backend = TORCH
        self._runners: dict[str, Runner] = {}

    def use_backend(self, backend: Backend) -> None:
        """Run HuBERT on ``backend`` from now on (OpenVINO compiles per version on :meth:`prepare`).

        Raises:
            ValueError: OpenVINO asked for while the weights are not float32.
        """
        if backend.runtime != "torch" and self.dtype != torch.float32:
            raise ValueError(f"runtime {backend.runtime} needs the content encoder loaded in float32")
        self.backend = backend
        self._runners = {}

    def prepare(self, version: str) -> None:
        """Build the runner for ``version`` now rather than on the first call (OpenVINO: seconds)."""
        self._runner(version)

    def _runner(self, version: str) -> Runner:
        runner = self._runners.get(version)
        if runner is None:
            if version == "v1":
                self.check_compatible("v1")
            net = _FeatureNet(self.model, min(_LAYER_FOR_VERSION[version], self.num_layers), self.final_proj, version)
            example = torch.zeros(1, 16000, dtype=self.dtype, device=self.device)
            runner = self._runners[version] = make_runner(net, self.backend, (example,), ((1,),))
            log.info("content encoder (%s features) runs on %s", version, self.backend.name)
        return runner

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return self.model.feature_projection.projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.feature_projection.projection.weight.dtype

    def check_compatible(self, version: str) -> None:
        """Raise :class:`VoiceFileError` if this encoder cannot serve a ``version`` voice."""
        if version == "v1" and self.final_proj is None:
            raise VoiceFileError(
                f"content encoder {self.source} has no final_proj (768→256) layer, which v1 voices need"
            )

    @torch.inference_mode()
    def forward(self, audio_16k: torch.Tensor, version: str) -> torch.Tensor:
        """Extract features for a voice of ``version``.

        Args:
            audio_16k: ``(N,)`` or ``(1, N)`` float waveform at 16 kHz.
            version: ``"v1"`` (layer 9 → ``final_proj``, 256-d) or ``"v2"`` (layer 12, 768-d).
                With fewer layers than that (test models), the last layer is used.

        Returns:
            ``(1, T, 256|768)`` features at 50 frames/s in the encoder's dtype,
            ``T = ⌊(N − 400) / 320⌋ + 1``.
        """
        x = audio_16k.reshape(1, -1).to(device=self.device, dtype=self.dtype)
        if self.normalize_waveform:
            x = torch.nn.functional.layer_norm(x.float(), x.shape[-1:]).to(self.dtype)
        return self._runner(version)(x).to(self.dtype)


class _FeatureNet(nn.Module):
    """HuBERT up to the layer a voice version uses (+ ``final_proj`` for v1): ``(1, N)`` → ``(1, T, C)``."""

    def __init__(self, model, layer: int, final_proj: nn.Linear | None, version: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.final_proj = final_proj if version == "v1" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == int(self.model.config.num_hidden_layers):
            hidden = self.model(x).last_hidden_state
        else:
            hidden = self.model(x, output_hidden_states=True).hidden_states[self.layer]
        if self.final_proj is not None:
            hidden = self.final_proj(hidden)
        return hidden


# ---------------------------------------------------------------------------- fairseq → transformers


def _parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``conv_feature_layers`` string (lists/tuples of ints, ``+``, ``*``) safely."""

    def ev(node: ast.AST):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported element {ast.dump(node)[:40]}")

    layers = ev(ast.parse(spec, mode="eval"))
    return [(int(c), int(k), int(s)) for c, k, s in layers]


def _fairseq_model_cfg(ckpt: dict) -> tuple[dict, dict]:
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"], cfg.get("task") or {}
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        d = vars(args)
        return d, d
    return {}, {}


_FAIRSEQ_LAYER_RENAMES = {
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}


def fairseq_to_transformers_key(key: str, pos_conv_g: str, pos_conv_v: str) -> str | None:
    """Name in ``transformers.HubertModel`` of a fairseq HuBERT tensor, or ``None`` if unused.

    ``pos_conv_g`` / ``pos_conv_v`` are the target names of the positional convolution's
    weight-norm pair, which depend on the transformers version.
    """
    if key in ("label_embs_concat", "final_proj.weight", "final_proj.bias") or key.startswith("label_embs"):
        return None
    if key == "mask_emb":
        return "masked_spec_embed"
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", key)
    if m:
        return f"feature_extractor.conv_layers.{m[1]}.conv.{m[2]}"
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)", key)
    if m:
        return f"feature_extractor.conv_layers.{m[1]}.layer_norm.{m[2]}"
    if key.startswith("layer_norm."):
        return "feature_projection." + key
    if key.startswith("post_extract_proj."):
        return "feature_projection.projection." + key.split(".", 1)[1]
    if key == "encoder.pos_conv.0.weight_g":
        return pos_conv_g
    if key == "encoder.pos_conv.0.weight_v":
        return pos_conv_v
    if key == "encoder.pos_conv.0.bias":
        return "encoder.pos_conv_embed.conv.bias"
    if key.startswith("encoder.layer_norm."):
        return key
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m[2] in _FAIRSEQ_LAYER_RENAMES:
        return f"encoder.layers.{m[1]}.{_FAIRSEQ_LAYER_RENAMES[m[2]]}.{m[3]}"
    return None


def _pos_conv_names(targets: dict) -> tuple[str, str]:
    """Names of the positional conv's weight-norm pair in this transformers version."""
    keys = [k for k in targets if k.startswith("encoder.pos_conv_embed.conv.")]
    g = next(k for k in keys if k.endswith(("original0", "weight_g")))
    v = next(k for k in keys if k.endswith(("original1", "weight_v")))
    return g, v


def _load_fairseq(path: Path) -> ContentEncoder:
    from transformers import HubertConfig, HubertModel

    ckpt = load_checkpoint(path, "HuBERT")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise VoiceFileError(f"{path} is not a fairseq HuBERT checkpoint: no 'model' state_dict")
    state = ckpt["model"]
    if "feature_extractor.conv_layers.0.0.weight" not in state or "encoder.pos_conv.0.weight_v" not in state:
        raise VoiceFileError(f"{path} is not a fairseq HuBERT checkpoint: feature extractor or encoder tensors missing")
    model_cfg, task_cfg = _fairseq_model_cfg(ckpt)
    if model_cfg.get("extractor_mode", "default") != "default" or model_cfg.get("layer_norm_first", False):
        raise VoiceFileError(
            f"{path}: only HuBERT-base-style checkpoints are supported (extractor_mode=default, layer_norm_first=False)"
        )
    layer_ids = {int(m[1]) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    num_layers = max(layer_ids) + 1 if layer_ids else 0
    hidden = int(state["post_extract_proj.weight"].shape[0])
    if hidden != HIDDEN_SIZE:
        raise VoiceFileError(
            f"{path}: HuBERT hidden size is {hidden}, RVC needs {HIDDEN_SIZE} (HuBERT-base / ContentVec)"
        )
    try:
        conv = _parse_conv_layers(str(model_cfg.get("conv_feature_layers", _STANDARD_CONV_LAYERS)))
    except (ValueError, SyntaxError, TypeError) as exc:
        raise VoiceFileError(f"{path}: unreadable conv_feature_layers: {exc}") from exc
    pos_v = state["encoder.pos_conv.0.weight_v"]
    config = HubertConfig(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=int(model_cfg.get("encoder_attention_heads", 12)),
        intermediate_size=int(state["encoder.layers.0.fc1.weight"].shape[0]) if num_layers else 3072,
        conv_dim=[c for c, _, _ in conv],
        conv_kernel=[k for _, k, _ in conv],
        conv_stride=[s for _, _, s in conv],
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=int(pos_v.shape[2]),
        num_conv_pos_embedding_groups=hidden // int(pos_v.shape[1]),
        classifier_proj_size=int(state["final_proj.weight"].shape[0]) if "final_proj.weight" in state else 256,
        layer_norm_eps=1e-5,
    )
    model = HubertModel(config)
    targets = model.state_dict()
    pos_g, pos_v_name = _pos_conv_names(targets)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = fairseq_to_transformers_key(key, pos_g, pos_v_name)
        if name is not None:
            mapped[name] = value.float()
    missing = sorted(set(targets) - set(mapped) - {"masked_spec_embed"})
    if missing:
        raise VoiceFileError(f"{path}: HuBERT tensors missing, e.g. {missing[:3]}")
    bad = [k for k in mapped if k in targets and mapped[k].shape != targets[k].shape]
    if bad:
        raise VoiceFileError(
            f"{path}: HuBERT tensor {bad[0]} has shape {tuple(mapped[bad[0]].shape)}, "
            f"expected {tuple(targets[bad[0]].shape)}"
        )
    model.load_state_dict(mapped, strict=False)
    final_proj = None
    if "final_proj.weight" in state:
        w = state["final_proj.weight"]
        if tuple(w.shape) != (PROJECTED_SIZE, hidden):
            raise VoiceFileError(f"{path}: final_proj is {tuple(w.shape)}, RVC v1 needs ({PROJECTED_SIZE}, {hidden})")
        final_proj = nn.Linear(hidden, PROJECTED_SIZE)
        final_proj.load_state_dict({"weight": w.float(), "bias": state["final_proj.bias"].float()})
    normalize = bool(task_cfg.get("normalize", False))
    return ContentEncoder(model, final_proj, normalize_waveform=normalize, source=path)


def _load_transformers_dir(path: Path) -> ContentEncoder:
    from transformers import HubertConfig, HubertModel

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise VoiceFileError(f"HuBERT directory {path} has no config.json")
    try:
        config = HubertConfig.from_pretrained(str(path))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise VoiceFileError(f"HuBERT directory {path}: unreadable config.json: {exc}") from exc
    if config.hidden_size != HIDDEN_SIZE:
        raise VoiceFileError(
            f"HuBERT directory {path}: hidden size is {config.hidden_size}, RVC needs {HIDDEN_SIZE} "
            f"(HuBERT-base / ContentVec)"
        )
    weights = _read_transformers_weights(path)
    prefix = "hubert." if any(k.startswith("hubert.") for k in weights) else ""
    body = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    model = HubertModel(config)
    targets = model.state_dict()
    pos_g, pos_v = _pos_conv_names(targets)
    renamed = {}
    for k, v in body.items():
        if k.startswith("encoder.pos_conv_embed.conv.") and (k.endswith(("weight_g", "original0"))):
            k = pos_g
        elif k.startswith("encoder.pos_conv_embed.conv.") and (k.endswith(("weight_v", "original1"))):
            k = pos_v
        if k in targets:
            renamed[k] = v.float()
    missing = sorted(set(targets) - set(renamed) - {"masked_spec_embed"})
    if missing:
        raise VoiceFileError(f"HuBERT directory {path}: tensors missing, e.g. {missing[:3]}")
    bad = [k for k in renamed if renamed[k].shape != targets[k].shape]
    if bad:
        raise VoiceFileError(
            f"HuBERT directory {path}: tensor {bad[0]} has shape {tuple(renamed[bad[0]].shape)}, "
            f"expected {tuple(targets[bad[0]].shape)}"
        )
    model.load_state_dict(renamed, strict=False)
    final_proj = None
    w = weights.get("final_proj.weight", body.get("final_proj.weight"))
    if w is not None:
        b = weights.get("final_proj.bias", body.get("final_proj.bias"))
        if tuple(w.shape) != (PROJECTED_SIZE, HIDDEN_SIZE):
            raise VoiceFileError(
                f"HuBERT directory {path}: final_proj is {tuple(w.shape)}, "
                f"RVC v1 needs ({PROJECTED_SIZE}, {HIDDEN_SIZE})"
            )
        if b is None:
            raise VoiceFileError(f"HuBERT directory {path}: final_proj.weight has no final_proj.bias")
        final_proj = nn.Linear(HIDDEN_SIZE, PROJECTED_SIZE)
        final_proj.load_state_dict({"weight": w.float(), "bias": b.float()})
    return ContentEncoder(model, final_proj, source=path)


def _read_transformers_weights(path: Path) -> dict[str, torch.Tensor]:
    st = path / "model.safetensors"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except (SafetensorError, OSError, ValueError) as exc:
            raise VoiceFileError(f"{st} is truncated or not a safetensors file: {exc}") from exc
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        data = load_checkpoint(binary, "HuBERT")
        if not isinstance(data, dict):
            raise VoiceFileError(f"{binary} is not a state_dict")
        return data
    raise VoiceFileError(f"HuBERT directory {path} has neither model.safetensors nor pytorch_model.bin")


def load_content_encoder(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: Backend = TORCH,
) -> ContentEncoder:
    """Load HuBERT-base/ContentVec from ``hubert_base.pt`` (fairseq) or a transformers directory.

    Args:
        path: a fairseq checkpoint file, or a directory with ``config.json`` and
            ``model.safetensors`` / ``pytorch_model.bin`` (optionally with ``final_proj``).
        device: torch device.
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16`` (CUDA).
        backend: where HuBERT runs (:mod:`rvc.runtime`); OpenVINO needs float32.

    Raises:
        VoiceFileError: missing, truncated, not a HuBERT checkpoint, or not of hidden
            size 768 (RVC voices are trained on HuBERT-base features).
    """
    p = Path(path)
    if not p.exists():
        raise VoiceFileError(f"HuBERT file {p} does not exist")
    encoder = _load_transformers_dir(p) if p.is_dir() else _load_fairseq(p)
    encoder.eval().to(device=device, dtype=dtype)
    encoder.use_backend(backend)
    log.info(
        "loaded content encoder %s: %d layers%s",
        p,
        encoder.num_layers,
        ", with final_proj" if encoder.final_proj is not None else "",
    )
    return encoder
