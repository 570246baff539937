"""A lean Qwen3 forward for Soprano's backbone: ragged batches over a preallocated KV cache.

Soprano's language model is a stock ``Qwen3ForCausalLM`` (hidden 512, 17 layers, 4 query
heads and 1 key/value head of width 128, RMSNorm with per-head q/k norms, RoPE θ = 10 000,
SiLU MLP of width 2304). Serving it through ``transformers`` costs ~40 ms per token on two
CPU cores where its weights set a memory-bandwidth floor near 15 ms: most of the time goes
to per-operation overhead of a general-purpose model class and a growing ``DynamicCache``.
This module is the same arithmetic written for the one job the server has (advance many
sequences by one token each, and prefill a few prompts) and nothing else:

* **Weights** come from the checkpoint's ``model.safetensors`` under their own key names
  (``model.layers.{i}.self_attn.q_proj.weight`` ...), upcast to float32 as transformers
  does with ``dtype=float32``. The q/k/v projections are fused into one matrix, and so are
  gate/up: three matrix products per layer instead of seven.
* **Precision** of the matrix products is a load option (:class:`Linear`): ``float32``;
  ``bfloat16`` weights (activations cast to bfloat16 at each product, accumulation and the
  residual stream stay float32); ``int8`` weights (symmetric per output channel, with the
  activations quantised per call: fbgemm's dynamic quantisation, AVX-512 VNNI on x86). On
  CPU the weights are pre-packed for oneDNN where torch offers it (2–3× faster than
  ``F.linear``'s MKL path for a handful of rows on this AMD CPU, measured). Norms,
  RoPE, attention and the KV cache are float32 in every mode.
* **KV cache**: one preallocated tensor for ``slots`` sequences × ``max_positions``
  positions (the model's 512), per layer and for keys and values. Which slot a sequence
  uses and how many positions of it are filled is the caller's (the engine's) business;
  :meth:`Qwen3Backbone.forward` takes it per row.
* **Ragged batches**: one call runs rows of different lengths together. A row is
  ``(slot, start, length)``: its ``length`` tokens take positions ``start … start+length−1``
  and attend to positions ``0 … start+length−1`` of their own slot only. One-token rows (a
  decode step, or the last token of a prompt) share one batched attention; longer rows
  (a prompt chunk) are attended one by one with a causal mask. All rows share every
  matrix product, so a batch of 8 reads the weights once, like a batch of 1.

The arithmetic follows transformers' ``modeling_qwen3.py`` (``Qwen3RMSNorm``,
``apply_rotary_pos_emb`` with ``rotate_half``, grouped-query attention with scale
``head_dim**-0.5``, ``down(silu(gate(x)) * up(x))``), and
``tests/tts_server/test_qwen3.py`` checks the hidden states against it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .base import EngineLoadError
from .linear import Linear, Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Qwen3Shape:
    """The sizes of a Qwen3 backbone, read from its ``config.json``.

    Attributes:
        hidden_size: width of the residual stream (512 for Soprano).
        num_layers: decoder layers (17).
        num_heads: query heads (4).
        num_kv_heads: key/value heads (1); queries are grouped over them.
        head_dim: width of one head (128).
        intermediate_size: MLP width (2304).
        vocab_size: embedding rows and logits (8192).
        rms_norm_eps: epsilon of every RMSNorm (1e-6).
        rope_theta: RoPE base (10 000).
        max_positions: ``max_position_embeddings`` (512): the KV cache's length.
        tie_word_embeddings: the output head reuses the embedding matrix.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> Qwen3Shape:
        """Read and check a transformers ``config.json`` (either RoPE layout of transformers 4 or 5).

        Raises:
            EngineLoadError: not a Qwen3 model, or a feature this forward does not
                implement (attention bias, sliding window, scaled RoPE); ``source`` is named.
        """
        if config.get("model_type") != "qwen3":
            raise EngineLoadError(f"{source}: model_type is {config.get('model_type')!r}, expected 'qwen3'")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        unsupported = []
        if config.get("attention_bias"):
            unsupported.append("attention_bias")
        if config.get("use_sliding_window"):
            unsupported.append("use_sliding_window")
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            unsupported.append(f"rope type {rope.get('rope_type', rope.get('type'))!r}")
        if config.get("hidden_act", "silu") != "silu":
            unsupported.append(f"hidden_act {config.get('hidden_act')!r}")
        if unsupported:
            raise EngineLoadError(f"{source}: unsupported Qwen3 feature(s): {', '.join(unsupported)}")
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            shape = cls(
                hidden_size=hidden,
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads", heads)),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate_size=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                max_positions=int(config.get("max_position_embeddings", 512)),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineLoadError(f"{source}: incomplete Qwen3 configuration ({type(exc).__name__}: {exc})") from None
        if shape.num_heads % shape.num_kv_heads:
            raise EngineLoadError(
                f"{source}: {shape.num_heads} query heads cannot be grouped over {shape.num_kv_heads}"
            )
        return shape


class Row(NamedTuple):
    """One row of a ragged batch.

    Attributes:
        slot: KV-cache slot of the sequence.
        start: position of the row's first token (= tokens of the sequence already cached).
        length: tokens in this row (1 for a decode step).
    """

    slot: int
    start: int
    length: int


class _Layer:
    def __init__(self, w: dict[str, torch.Tensor], shape: Qwen3Shape, precision: Precision) -> None:
        self.input_norm = w["input_layernorm.weight"]
        self.post_norm = w["post_attention_layernorm.weight"]
        self.qkv = Linear(
            torch.cat([w["self_attn.q_proj.weight"], w["self_attn.k_proj.weight"], w["self_attn.v_proj.weight"]]),
            precision=precision,
        )
        self.o = Linear(w["self_attn.o_proj.weight"], precision=precision)
        self.gate_up = Linear(torch.cat([w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"]]), precision=precision)
        self.down = Linear(w["mlp.down_proj.weight"], precision=precision)
        # q_norm for the query heads, k_norm for the key heads: one multiply after one norm.
        self.qk_norm = torch.cat(
            [
                w["self_attn.q_norm.weight"].expand(shape.num_heads, -1),
                w["self_attn.k_norm.weight"].expand(shape.num_kv_heads, -1),
            ]
        ).contiguous()


def _expected_keys(shape: Qwen3Shape) -> dict[str, tuple[int, ...]]:
    h, hd, inter = shape.hidden_size, shape.head_dim, shape.intermediate_size
    keys: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (shape.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not shape.tie_word_embeddings:
        keys["lm_head.weight"] = (shape.vocab_size, h)
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        keys |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (shape.num_heads * hd, h),
            p + "self_attn.k_proj.weight": (shape.num_kv_heads * hd, h),
            p + "self_attn.v_proj.weight": (shape.num_kv_heads * hd, h),
            p + "self_attn.o_proj.weight": (h, shape.num_heads * hd),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
    return keys


def load_weights(path: Path, shape: Qwen3Shape) -> dict[str, torch.Tensor]:
    """Read every tensor the backbone needs from a ``model.safetensors`` file, as float32 on the CPU.

    Raises:
        EngineLoadError: the file is unreadable, or a tensor is missing or of the wrong
            shape; the message names the file and the tensor.
    """
    from safetensors import SafetensorError, safe_open

    expected = _expected_keys(shape)
    weights: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            present = set(f.keys())
            missing = [k for k in expected if k not in present]
            if missing:
                raise EngineLoadError(f"{path}: weights do not match config.json: missing {', '.join(missing[:5])}")
            for key, want in expected.items():
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != want:
                    raise EngineLoadError(
                        f"{path}: weights do not match config.json: {key} is {tuple(tensor.shape)}, expected {want}"
                    )
                weights[key] = tensor.float()
    except EngineLoadError:
        raise
    except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
        raise EngineLoadError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc})") from None
    return weights


class Qwen3Backbone:
    """Qwen3 decoder stack with a preallocated ragged KV cache (see the module docstring).

    Args:
        weights: tensors as read by :func:`load_weights` (checkpoint key names).
        shape: the model's sizes.
        slots: sequences the KV cache holds at once.
        device: where the weights, the cache and every activation live.
        precision: of the matrix products (:class:`Linear`).

    The cache takes ``num_layers × slots × 2 × num_kv_heads × max_positions × head_dim``
    float32 values (8.9 MB per slot for Soprano).
    """

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        shape: Qwen3Shape,
        *,
        slots: int,
        device: str | torch.device = "cpu",
        precision: Precision = "float32",
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.shape = shape
        self.slots = slots
        self.precision = precision
        self.device = torch.device(device)
        dev = {k: v.to(self.device) for k, v in weights.items()}
        self.embed = dev["model.embed_tokens.weight"]
        self.norm = dev["model.norm.weight"]
        self.lm_head = Linear(
            dev["model.embed_tokens.weight" if shape.tie_word_embeddings else "lm_head.weight"], precision=precision
        )
        self.layers = []
        for i in range(shape.num_layers):
            prefix = f"model.layers.{i}."
            self.layers.append(
                _Layer({k[len(prefix) :]: v for k, v in dev.items() if k.startswith(prefix)}, shape, precision)
            )
        self.scale = shape.head_dim**-0.5
        self.group = shape.num_heads // shape.num_kv_heads
        # RoPE tables as transformers builds them (float32 inverse frequencies times positions).
        inv_freq = 1.0 / (
            shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.int64).float() / shape.head_dim)
        )
        freqs = torch.arange(shape.max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(self.device)
        self.sin = emb.sin().to(self.device)
        # keys and values of every layer: (layer, slot, k|v, kv_head, position, head_dim)
        self.kv = torch.zeros(
            shape.num_layers, slots, 2, shape.num_kv_heads, shape.max_positions, shape.head_dim, device=self.device
        )

    @property
    def max_positions(self) -> int:
        """Positions one slot holds (prompt plus generated tokens)."""
        return self.shape.max_positions

    # -- the forward ------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        """Run ``ids`` through the stack, writing their keys and values into the cache.

        Args:
            ids: ``(T,)`` int64 token ids on :attr:`device`, the rows' tokens one after
                the other (``T = Σ length``).
            rows: the rows, in the order of their tokens in ``ids``. Each row's slot must
                hold valid keys/values for positions ``< start``; no two rows may share
                a slot; ``start + length ≤ max_positions``.

        Returns:
            ``(len(rows), hidden_size)`` float32: each row's last-position hidden state
            after the final RMSNorm (Soprano's audio latent).

        Raises:
            ValueError: a row does not fit its slot.
        """
        shape = self.shape
        total = sum(r.length for r in rows)
        if ids.shape != (total,):
            raise ValueError(f"ids has shape {tuple(ids.shape)}, the rows hold {total} tokens")
        for r in rows:
            fits = 0 <= r.slot < self.slots and r.start >= 0 and r.length >= 1
            if not fits or r.start + r.length > shape.max_positions:
                raise ValueError(
                    f"row {r} does not fit a cache of {self.slots} slots × {shape.max_positions} positions"
                )
        positions = torch.cat([torch.arange(r.start, r.start + r.length) for r in rows]).to(self.device)
        token_slots = torch.cat([torch.full((r.length,), r.slot) for r in rows]).to(self.device)
        offsets = [0]
        for r in rows:
            offsets.append(offsets[-1] + r.length)
        singles = [i for i, r in enumerate(rows) if r.length == 1]
        single_tokens = torch.tensor([offsets[i] for i in singles], device=self.device)
        single_slots = [rows[i].slot for i in singles]
        single_lengths = [rows[i].start + 1 for i in singles]
        attend = _SingleTokenAttention(self, single_slots, single_lengths) if singles else None
        cos = self.cos[positions].unsqueeze(1)  # (T, 1, head_dim)
        sin = self.sin[positions].unsqueeze(1)
        heads, kv_heads, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim
        half = hd // 2

        x = self.embed[ids]
        for index, layer in enumerate(self.layers):
            h = F.rms_norm(x, (shape.hidden_size,), layer.input_norm, shape.rms_norm_eps)
            qkv = layer.qkv(h)
            qk = qkv[:, : (heads + kv_heads) * hd].view(total, heads + kv_heads, hd)
            qk = F.rms_norm(qk, (hd,), None, shape.rms_norm_eps) * layer.qk_norm
            rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
            qk = qk * cos + rotated * sin
            q = qk[:, :heads]
            kv = torch.stack([qk[:, heads:], qkv[:, (heads + kv_heads) * hd :].view(total, kv_heads, hd)], dim=1)
            cache = self.kv[index]
            cache[token_slots, :, :, positions] = kv
            out = torch.empty(total, heads * hd, device=self.device)
            if attend is not None:
                out[single_tokens] = attend(q.index_select(0, single_tokens), cache)
            for i, r in enumerate(rows):
                if r.length > 1:
                    out[offsets[i] : offsets[i + 1]] = self._attend_prompt(q[offsets[i] : offsets[i + 1]], cache, r)
            x = x + layer.o(out)
            h = F.rms_norm(x, (shape.hidden_size,), layer.post_norm, shape.rms_norm_eps)
            gate, up = layer.gate_up(h).split(shape.intermediate_size, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        last = torch.tensor([o - 1 for o in offsets[1:]], device=self.device)
        return F.rms_norm(x.index_select(0, last), (shape.hidden_size,), self.norm, shape.rms_norm_eps)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(R, hidden_size)`` float32 hidden states → ``(R, vocab_size)`` float32 logits."""
        return self.lm_head(hidden)

    def _attend_prompt(self, q: torch.Tensor, cache: torch.Tensor, row: Row) -> torch.Tensor:
        """Causal attention of a prompt chunk ``q`` (n, heads, hd) over its slot's positions ``< start + n``."""
        n, end = row.length, row.start + row.length
        kv_heads, hd = self.shape.num_kv_heads, self.shape.head_dim
        keys = cache[row.slot, 0, :, :end]  # (kv_heads, end, hd)
        values = cache[row.slot, 1, :, :end]
        qg = q.view(n, kv_heads, self.group, hd).permute(1, 2, 0, 3).reshape(kv_heads, self.group * n, hd)
        scores = torch.matmul(qg, keys.transpose(1, 2)) * self.scale  # (kv_heads, group·n, end)
        allowed = (
            torch.arange(end, device=self.device)[None, :] <= torch.arange(row.start, end, device=self.device)[:, None]
        )
        scores = scores.view(kv_heads, self.group, n, end).masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).view(kv_heads, self.group * n, end)
        out = torch.matmul(probs, values).view(kv_heads, self.group, n, hd)
        return out.permute(2, 0, 1, 3).reshape(n, self.shape.num_heads * hd)


class _SingleTokenAttention:
    """Attention of one new token per row over its own slot, for many rows in one product.

    The rows' slots are read as one strided view of the cache (``lo … hi``) when they lie
    close together (compact slot allocation keeps them so), and gathered otherwise; each
    row sees only its own slot's first ``length`` positions (a −∞ mask beyond).
    """

    def __init__(self, backbone: Qwen3Backbone, slots: list[int], lengths: list[int]) -> None:
        self.b = backbone
        device = backbone.device
        self.longest = max(lengths)
        lo, hi = min(slots), max(slots) + 1
        if hi - lo <= 2 * len(slots):
            self.window: slice | None = slice(lo, hi)
            self.rows = torch.tensor([s - lo for s in slots], device=device)
            length = torch.ones(hi - lo, dtype=torch.long)
            length[[s - lo for s in slots]] = torch.tensor(lengths)
            self.count = hi - lo
        else:
            self.window = None
            self.gather = torch.tensor(slots, device=device)
            self.rows = torch.arange(len(slots), device=device)
            length = torch.tensor(lengths)
            self.count = len(slots)
        self.mask = (torch.arange(self.longest)[None, :] >= length[:, None]).to(device)[:, None, None, :]

    def __call__(self, q: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        """``q`` (R, heads, hd) → (R, heads·hd)."""
        b = self.b
        kv_heads, hd = b.shape.num_kv_heads, b.shape.head_dim
        if self.window is not None:
            kv = cache[self.window, :, :, : self.longest]
        else:
            kv = cache.index_select(0, self.gather)[:, :, :, : self.longest]
        qs = q.new_zeros(self.count, kv_heads, b.group, hd) if self.window is not None else None
        if qs is not None:
            qs[self.rows] = q.view(-1, kv_heads, b.group, hd)
        else:
            qs = q.view(-1, kv_heads, b.group, hd)
        scores = torch.matmul(qs, kv[:, 0].transpose(-1, -2)) * b.scale  # (count, kv_heads, group, longest)
        probs = torch.softmax(scores.masked_fill(self.mask, float("-inf")), dim=-1)
        out = torch.matmul(probs, kv[:, 1])  # (count, kv_heads, group, hd)
        return out[self.rows].reshape(-1, b.shape.num_heads * hd)
