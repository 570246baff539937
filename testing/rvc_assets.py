"""Random-weight model files in the exact on-disk formats of the real ones.

Real weights (``hubert_base.pt``, ``rmvpe.pt``, trained voices) cannot be downloaded in
tests or CI, so tests, the server's tests and the benchmark build stand-ins: same file
formats, key names, dtypes and container structure, random (seeded, reproducible)
values. ``small=True`` shrinks the sizes the format leaves free (channels, layers) so
that tests run fast; ``small=False`` gives the real sizes for benchmarks.

Builders:

* :func:`write_voice` — RVC voice ``.pth``: fp16 ``weight`` state_dict with old-style
  weight-norm pairs (``…weight_g``/``…weight_v``) and no ``enc_q``; ``config`` (18
  items), ``info``, ``sr``, ``f0``, ``version``.
* :func:`write_index` — faiss ``IVF{n},Flat`` index (nprobe 1) of 256-/768-d vectors.
* :func:`write_fairseq_hubert` — fairseq HuBERT checkpoint like ``hubert_base.pt``:
  ``args``/``cfg``/``model``/``task_state`` (with a pickled
  ``fairseq.data.dictionary.Dictionary``)/``optimizer_history``/``extra_state``.
* :func:`write_transformers_hubert` — transformers directory (``config.json`` +
  ``model.safetensors``, with ``final_proj`` like ContentVec conversions).
* :func:`write_rmvpe` — plain float32 state_dict like ``rmvpe.pt``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from rvc.rmvpe import RMVPENet
from rvc.synthesizer import Synthesizer, SynthesizerConfig

__all__ = [
    "build_fairseq_hubert_state",
    "build_rmvpe_state",
    "build_voice_checkpoint",
    "voice_config",
    "write_fairseq_hubert",
    "write_index",
    "write_rmvpe",
    "write_transformers_hubert",
    "write_voice",
]

# upsampling of the decoder by (version, sample rate): rates, kernel sizes, spec_channels
_UPSAMPLING = {
    ("v1", 32000): ([10, 4, 2, 2, 2], [16, 16, 4, 4, 4], 513),
    ("v1", 40000): ([10, 10, 2, 2], [16, 16, 4, 4], 1025),
    ("v1", 48000): ([10, 6, 2, 2, 2], [16, 16, 4, 4, 4], 1025),
    ("v2", 32000): ([10, 8, 2, 2], [20, 16, 4, 4], 513),
    ("v2", 40000): ([10, 10, 2, 2], [16, 16, 4, 4], 1025),
    ("v2", 48000): ([12, 10, 2, 2], [24, 20, 4, 4], 1025),
}
_WEIGHT_NORMED = ("dec.ups.", "dec.resblocks.", ".enc.in_layers.", ".enc.res_skip_layers.", ".enc.cond_layer.")


def voice_config(version: str = "v2", sample_rate: int = 48000, *, small: bool = True) -> SynthesizerConfig:
    """Hyper-parameters of a voice: the real ones (``small=False``) or a shrunken set.

    Shrinking keeps everything that defines the format (upsampling rates and kernels,
    resblock layout, 109 speakers) and reduces widths and depth.
    """
    rates, kernels, spec = _UPSAMPLING[(version, sample_rate)]
    if small:
        inter, hidden, filt, heads, layers, up0, gin = 16, 32, 64, 2, 2, 64, 32
    else:
        inter, hidden, filt, heads, layers, up0, gin = 192, 192, 768, 2, 6, 512, 256
    segment = {32000: 40, 40000: 32, 48000: 36}[sample_rate]
    return SynthesizerConfig.from_list(
        [
            spec,
            segment,
            inter,
            hidden,
            filt,
            heads,
            layers,
            3,
            0,
            "1",
            [3, 7, 11],
            [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            rates,
            up0,
            kernels,
            109,
            gin,
            sample_rate,
        ]
    )


def _randomize(net: Synthesizer, gen: torch.Generator) -> None:
    """Give every parameter a random value of a plausible scale (trained nets are not zero-init)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("bias", "beta")):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            elif name.startswith("dec.") and p.dim() == 3:
                # HiFi-GAN init is N(0, 0.01); a bit larger keeps a random vocoder audible
                fan_in = p.shape[1] * p.shape[2] if "ups" not in name else p.shape[0] * p.shape[2]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(fan_in)))
            elif "emb_rel" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(fan_in, 1)))
        # source merge: a clearly positive gain so the excitation reaches the decoder
        if hasattr(net.dec, "m_source"):
            net.dec.m_source.l_linear.weight.fill_(2.0)


def build_voice_checkpoint(
    version: str = "v2",
    sample_rate: int = 48000,
    *,
    f0: bool = True,
    small: bool = True,
    seed: int = 0,
    fp16: bool = True,
    weight_norm_names: str = "old",
) -> dict:
    """The dict that a real RVC ``.pth`` holds, with random weights.

    Args:
        version: ``"v1"`` or ``"v2"``.
        sample_rate: 32000, 40000 or 48000.
        f0: pitch-guided voice.
        small: shrunken widths (fast) or the real sizes.
        seed: the random values are a function of the seed only.
        fp16: store weights as float16, as the WebUI does.
        weight_norm_names: ``"old"`` (``weight_g``/``weight_v``), ``"parametrizations"``
            (``parametrizations.weight.original0/1``) or ``"folded"`` (plain ``weight``).
    """
    cfg = voice_config(version, sample_rate, small=small)
    gen = torch.Generator().manual_seed(seed)
    net = Synthesizer(cfg, version, f0)
    _randomize(net, gen)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, w in net.state_dict().items():
        if weight_norm_names != "folded" and key.endswith(".weight") and any(s in key for s in _WEIGHT_NORMED):
            g = torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)
            v = w * (0.5 + torch.rand((w.shape[0],) + (1,) * (w.dim() - 1), generator=gen))
            base = key[: -len(".weight")]
            if weight_norm_names == "old":
                state[base + ".weight_g"], state[base + ".weight_v"] = g, v
            else:
                state[base + ".parametrizations.weight.original0"] = g
                state[base + ".parametrizations.weight.original1"] = v
        else:
            state[key] = w
    if fp16:
        state = OrderedDict((k, v.half()) for k, v in state.items())
    return {
        "weight": state,
        "config": cfg.to_list(),
        "info": f"random test voice (seed {seed})",
        "sr": f"{sample_rate // 1000}k",
        "f0": int(f0),
        "version": version,
    }


def write_voice(path: str | Path, version: str = "v2", sample_rate: int = 48000, **kwargs) -> Path:
    """Write :func:`build_voice_checkpoint` to ``path`` with ``torch.save``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_voice_checkpoint(version, sample_rate, **kwargs), path)
    return path


def write_index(
    path: str | Path, dim: int = 768, *, n_vectors: int = 400, n_lists: int | None = None, seed: int = 0
) -> Path:
    """Write a faiss ``IVF{n},Flat`` index like the WebUI's ``added_*.index`` (nprobe 1)."""
    import faiss

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_vectors, dim)).astype(np.float32)
    n_lists = n_lists or max(1, min(int(16 * math.sqrt(n_vectors)), n_vectors // 39))
    index = faiss.index_factory(dim, f"IVF{n_lists},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(vectors)
    index.add(vectors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


# ---------------------------------------------------------------------------- HuBERT


class _FairseqDictionary:
    """Pickled under fairseq's name, ``fairseq.data.dictionary.Dictionary``, like the real file."""

    def __init__(self, symbols: list[str]) -> None:
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>", *symbols]
        self.count = [1] * len(self.symbols)
        self.indices = {s: i for i, s in enumerate(self.symbols)}
        self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
        self.nspecial = 4


@contextlib.contextmanager
def _pickle_as_fairseq():
    """Make ``_FairseqDictionary`` picklable as ``fairseq.data.dictionary.Dictionary``.

    Registers placeholder modules for the duration of a ``torch.save`` (only those that
    are not already imported), then removes them.
    """
    names = ["fairseq", "fairseq.data", "fairseq.data.dictionary"]
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    saved = (_FairseqDictionary.__module__, _FairseqDictionary.__qualname__)
    _FairseqDictionary.__module__, _FairseqDictionary.__qualname__ = "fairseq.data.dictionary", "Dictionary"
    mod = sys.modules["fairseq.data.dictionary"]
    had = getattr(mod, "Dictionary", None)
    mod.Dictionary = _FairseqDictionary
    try:
        yield
    finally:
        _FairseqDictionary.__module__, _FairseqDictionary.__qualname__ = saved
        if had is None:
            with contextlib.suppress(AttributeError):
                delattr(mod, "Dictionary")
        else:
            mod.Dictionary = had
        for n in added:
            sys.modules.pop(n, None)


def build_fairseq_hubert_state(
    *, num_layers: int = 12, hidden: int = 768, ffn: int = 3072, final_dim: int = 256, seed: int = 0
) -> OrderedDict:
    """A fairseq ``HubertModel`` state_dict (``hubert_base.pt``'s ``model``) with random values.

    Key names and shapes follow fairseq's ``HubertModel`` with the base configuration:
    7 conv feature layers (GroupNorm on the first, no conv bias), ``layer_norm`` and
    ``post_extract_proj`` 512→hidden, weight-normed (dim 2) positional conv of 128 taps
    in 16 groups, post-norm transformer layers, ``final_proj`` hidden→256,
    ``label_embs_concat`` (504 labels) and ``mask_emb``.
    """
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float | None = None) -> torch.Tensor:
        fan = shape[1] * (shape[2] if len(shape) > 2 else 1) if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / math.sqrt(fan)
        return torch.randn(shape, generator=gen) * s

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["label_embs_concat"] = rnd(504, final_dim, scale=1.0)
    sd["mask_emb"] = torch.rand(hidden, generator=gen)
    conv = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    c_in = 1
    for i, (c, k, _) in enumerate(conv):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = rnd(c, c_in, k)
        if i == 0:
            sd["feature_extractor.conv_layers.0.2.weight"] = 1.0 + 0.1 * rnd(c, scale=1.0)
            sd["feature_extractor.conv_layers.0.2.bias"] = 0.1 * rnd(c, scale=1.0)
        c_in = c
    sd["post_extract_proj.weight"] = rnd(hidden, 512)
    sd["post_extract_proj.bias"] = 0.02 * rnd(hidden, scale=1.0)
    sd["encoder.pos_conv.0.bias"] = 0.02 * rnd(hidden, scale=1.0)
    sd["encoder.pos_conv.0.weight_g"] = 0.5 + torch.rand(1, 1, 128, generator=gen)
    sd["encoder.pos_conv.0.weight_v"] = rnd(hidden, hidden // 16, 128)
    for n in range(num_layers):
        p = f"encoder.layers.{n}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"] = rnd(hidden, hidden)
            sd[p + f"self_attn.{proj}.bias"] = 0.02 * rnd(hidden, scale=1.0)
        sd[p + "self_attn_layer_norm.weight"] = 1.0 + 0.1 * rnd(hidden, scale=1.0)
        sd[p + "self_attn_layer_norm.bias"] = 0.1 * rnd(hidden, scale=1.0)
        sd[p + "fc1.weight"] = rnd(ffn, hidden)
        sd[p + "fc1.bias"] = 0.02 * rnd(ffn, scale=1.0)
        sd[p + "fc2.weight"] = rnd(hidden, ffn)
        sd[p + "fc2.bias"] = 0.02 * rnd(hidden, scale=1.0)
        sd[p + "final_layer_norm.weight"] = 1.0 + 0.1 * rnd(hidden, scale=1.0)
        sd[p + "final_layer_norm.bias"] = 0.1 * rnd(hidden, scale=1.0)
    sd["layer_norm.weight"] = 1.0 + 0.1 * rnd(512, scale=1.0)
    sd["layer_norm.bias"] = 0.1 * rnd(512, scale=1.0)
    sd["encoder.layer_norm.weight"] = 1.0 + 0.1 * rnd(hidden, scale=1.0)
    sd["encoder.layer_norm.bias"] = 0.1 * rnd(hidden, scale=1.0)
    sd["final_proj.weight"] = rnd(final_dim, hidden)
    sd["final_proj.bias"] = 0.02 * rnd(final_dim, scale=1.0)
    return sd


def write_fairseq_hubert(
    path: str | Path, *, num_layers: int = 12, hidden: int = 768, ffn: int = 3072, seed: int = 0, fp16: bool = True
) -> Path:
    """Write a fairseq HuBERT checkpoint in the layout of ``hubert_base.pt``.

    ``num_layers=12, hidden=768, ffn=3072`` is the real size (~95 M parameters); tests
    use fewer layers and a narrower FFN. The real file stores fp16 tensors.
    """
    state = build_fairseq_hubert_state(num_layers=num_layers, hidden=hidden, ffn=ffn, seed=seed)
    if fp16:
        state = OrderedDict((k, v.half()) for k, v in state.items())
    model_cfg = {
        "_name": "hubert",
        "label_rate": 50.0,
        "extractor_mode": "default",
        "encoder_layers": num_layers,
        "encoder_embed_dim": hidden,
        "encoder_ffn_embed_dim": ffn,
        "encoder_attention_heads": 12,
        "activation_fn": "gelu",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": 256,
        "untie_final_proj": False,
        "layer_norm_first": False,
        "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
        "conv_bias": False,
        "logit_temp": 0.1,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.8,
        "conv_pos": 128,
        "conv_pos_groups": 16,
        "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False,
        "skip_nomask": False,
    }
    task_cfg = {
        "_name": "hubert_pretraining",
        "data": "/checkpoint/librispeech",
        "labels": ["km"],
        "label_dir": None,
        "label_rate": 50.0,
        "sample_rate": 16000,
        "normalize": False,
        "enable_padding": False,
        "max_sample_size": 250000,
        "min_sample_size": 32000,
        "single_target": False,
        "random_crop": True,
        "pad_audio": False,
    }
    ckpt = {
        "args": None,
        "cfg": {
            "_name": None,
            "common": {"fp16": True, "log_interval": 200, "seed": 1337},
            "model": model_cfg,
            "task": task_cfg,
            "criterion": {"_name": "hubert", "pred_masked_weight": 1.0},
        },
        "model": state,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 400000,
            }
        ],
        "task_state": {"dictionaries": [_FairseqDictionary([str(i) for i in range(500)])]},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 0.0,
            "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
        },
        "last_optimizer_state": None,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _pickle_as_fairseq():
        torch.save(ckpt, path)
    return path


def write_transformers_hubert(
    directory: str | Path,
    *,
    num_layers: int = 2,
    hidden: int = 768,
    ffn: int = 512,
    seed: int = 0,
    final_proj: bool = True,
) -> Path:
    """Write a transformers HuBERT directory (``config.json`` + ``model.safetensors``).

    With ``final_proj`` the weights also hold ``final_proj.weight``/``bias`` (768→256), as
    the ContentVec/``hubert_base`` conversions used by RVC forks do. The values are the
    mapping of :func:`build_fairseq_hubert_state` with the same arguments, so a
    fairseq file and a directory built with equal arguments hold the same network.
    """
    from safetensors.torch import save_file
    from transformers import HubertConfig, HubertModel

    from rvc.content import _pos_conv_names, fairseq_to_transformers_key

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = build_fairseq_hubert_state(num_layers=num_layers, hidden=hidden, ffn=ffn, seed=seed)
    config = HubertConfig(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        intermediate_size=ffn,
        num_attention_heads=12,
        classifier_proj_size=256,
        conv_bias=False,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )
    config.architectures = ["HubertModelWithFinalProj"] if final_proj else ["HubertModel"]
    model = HubertModel(config)
    targets = model.state_dict()
    g_name, v_name = _pos_conv_names(targets)
    tensors = {}
    for k, v in state.items():
        name = fairseq_to_transformers_key(k, g_name, v_name)
        if name is not None:
            tensors[name] = v.contiguous()
    model.load_state_dict(tensors, strict=False)
    out = {k: v.contiguous() for k, v in model.state_dict().items()}
    if final_proj:
        out["final_proj.weight"] = state["final_proj.weight"].contiguous()
        out["final_proj.bias"] = state["final_proj.bias"].contiguous()
    config.save_pretrained(str(directory))
    save_file(out, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


# ---------------------------------------------------------------------------- RMVPE


def build_rmvpe_state(seed: int = 0) -> OrderedDict:
    """An ``rmvpe.pt`` state_dict (real size, ~90 MB in float32) with random values.

    BatchNorm running statistics are random too (means near 0, variances near 1), so
    that eval-mode normalisation is exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    net = RMVPENet()
    state = OrderedDict()
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1000)
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(v.shape, generator=gen)
        elif k.endswith("running_mean"):
            state[k] = 0.1 * torch.randn(v.shape, generator=gen)
        elif v.dim() > 1:
            fan = v[0].numel()
            state[k] = torch.randn(v.shape, generator=gen) / math.sqrt(fan)
        else:
            state[k] = (1.0 if k.endswith(".weight") else 0.0) + 0.1 * torch.randn(v.shape, generator=gen)
    return state


def write_rmvpe(path: str | Path, *, seed: int = 0) -> Path:
    """Write :func:`build_rmvpe_state` with ``torch.save`` (a bare state_dict, as the real file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_rmvpe_state(seed), path)
    return path
