"""The lean Qwen3 backbone against transformers' ``Qwen3ForCausalLM`` on the same checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from testing.soprano_model import REAL_CONFIG
from tts_server.engines.base import EngineLoadError
from tts_server.engines.qwen3 import Qwen3Backbone, Qwen3Shape, Row, load_weights

#: Float results against derived bounds: CI runs these again on one thread (see tests/conftest.py).
pytestmark = pytest.mark.numerical

#: The bound the issue sets for the hidden states, relative L2 per position.
HIDDEN_RTOL = 1e-4


@pytest.fixture(scope="module")
def real_size_dir(make_soprano_dir):
    """Soprano-1.1-80M's real sizes (17 layers), plain random weights (no forced length)."""
    return make_soprano_dir(None, config=REAL_CONFIG)


@pytest.fixture(scope="module")
def reference(real_size_dir):
    """transformers' model in float32 and float64 (the float64 one measures float32's own error)."""
    from transformers import AutoModelForCausalLM

    return (
        AutoModelForCausalLM.from_pretrained(real_size_dir, dtype=torch.float32).eval(),
        AutoModelForCausalLM.from_pretrained(real_size_dir, dtype=torch.float64).eval(),
    )


def _backbone(model_dir, slots: int, precision="float32", **kwargs) -> Qwen3Backbone:
    shape = Qwen3Shape.from_config(json.loads((model_dir / "config.json").read_text()), "config.json")
    return Qwen3Backbone(
        load_weights(model_dir / "model.safetensors", shape), shape, slots=slots, precision=precision, **kwargs
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [[23], [5, 40], [1, 17, 9, 30], [12, 3, 60, 7, 25, 2, 44, 18]])
def test_hidden_states_equal_transformers_for_ragged_batches(real_size_dir, reference, lengths):
    """Prompts of different lengths prefilled together, then decoded together token by token:
    every row's hidden state equals transformers' full forward of that row alone."""
    ref32, ref64 = reference
    g = torch.Generator().manual_seed(len(lengths))
    decode_steps = 4
    seqs = [torch.randint(4, 8192, (n + decode_steps,), generator=g) for n in lengths]
    backbone = _backbone(real_size_dir, slots=len(lengths) + 2)
    # Rows use scattered slots (not 0..n-1) and a mixed step: prefill rows next to one-token rows.
    slots = [len(lengths) + 1 - i for i in range(len(lengths))]
    rows = [Row(slot, 0, n) for slot, n in zip(slots, lengths, strict=True)]
    outs = [backbone.forward(torch.cat([s[:n] for s, n in zip(seqs, lengths, strict=True)]), rows)]
    for k in range(decode_steps):
        rows = [Row(slot, n + k, 1) for slot, n in zip(slots, lengths, strict=True)]
        outs.append(backbone.forward(torch.stack([s[n + k] for s, n in zip(seqs, lengths, strict=True)]), rows))
    worst, worst_fp32 = 0.0, 0.0
    with torch.no_grad():
        for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
            h32 = ref32.model(input_ids=s[None]).last_hidden_state[0]
            h64 = ref64.model(input_ids=s[None]).last_hidden_state[0]
            for k, out in enumerate(outs):
                position = n - 1 + k
                worst = max(worst, _rel(out[i], h32[position]))
                worst_fp32 = max(worst_fp32, _rel(h32[position], h64[position]))
    # The bound is meaningful only if it is at least 5× what float32 arithmetic itself
    # costs (transformers' float32 forward against its float64 one, measured here):
    # ~1e-6 over 17 layers, so 1e-4 is ~100× it and leaves room for summation order.
    assert 5 * worst_fp32 <= HIDDEN_RTOL, worst_fp32
    assert worst <= HIDDEN_RTOL, worst


def test_a_row_sees_only_its_own_slot(make_soprano_dir):
    """Rows sharing a step must not attend to each other's cache: changing one row's
    prompt leaves the other's hidden states exactly as they were."""
    model_dir = make_soprano_dir(None)
    backbone = _backbone(model_dir, slots=3)
    g = torch.Generator().manual_seed(1)
    a, b, b2 = (torch.randint(4, 8192, (9,), generator=g) for _ in range(3))
    first = backbone.forward(torch.cat([a, b]), [Row(0, 0, 9), Row(2, 0, 9)])
    second = backbone.forward(torch.cat([a, b2]), [Row(0, 0, 9), Row(2, 0, 9)])
    assert torch.equal(first[0], second[0])
    assert not torch.allclose(first[1], second[1])


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_reduced_precisions_stay_close_to_float32(make_soprano_dir, precision):
    """bf16 and int8 weights change the hidden states by their quantisation error only
    (the figures that choose the default come from ``benchmarks.backbone``)."""
    model_dir = make_soprano_dir(None)
    ids = torch.randint(4, 8192, (20,), generator=torch.Generator().manual_seed(2))
    exact = _backbone(model_dir, slots=1).forward(ids, [Row(0, 0, 20)])
    reduced = _backbone(model_dir, slots=1, precision=precision).forward(ids, [Row(0, 0, 20)])
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 2e-3 per weight), int8 7 bits
    # per output channel: a few per mille to a few per cent through two random layers.
    # Above 10 % would mean a wrong scale or layout, not rounding.
    assert 1e-5 < _rel(reduced, exact) < 0.1


def test_unpacked_path_gives_the_same_hidden_states(make_soprano_dir, monkeypatch):
    """Without oneDNN's packed weights (other builds, GPUs) plain ``F.linear`` runs the same model."""
    from tts_server.engines import linear

    model_dir = make_soprano_dir(None)
    ids = torch.randint(4, 8192, (15,), generator=torch.Generator().manual_seed(3))
    packed = _backbone(model_dir, slots=1)
    assert packed.layers[0].qkv._packed is not None  # this CPU build has the packed path
    monkeypatch.setattr(linear, "_mkldnn_pack", lambda weight: None)
    plain = _backbone(model_dir, slots=1)
    assert plain.layers[0].qkv._packed is None
    a = packed.forward(ids, [Row(0, 0, 15)])
    b = plain.forward(ids, [Row(0, 0, 15)])
    # Two float32 summation orders over K ≤ 2304: each within ~1e-6 of exact (see above).
    assert _rel(a, b) < 1e-5


def test_rows_that_do_not_fit_are_refused(make_soprano_dir):
    backbone = _backbone(make_soprano_dir(None), slots=2)
    with pytest.raises(ValueError, match="does not fit"):
        backbone.forward(torch.zeros(1, dtype=torch.long), [Row(2, 0, 1)])
    with pytest.raises(ValueError, match="does not fit"):
        backbone.forward(torch.zeros(2, dtype=torch.long), [Row(0, backbone.max_positions - 1, 2)])
    with pytest.raises(ValueError, match="tokens"):
        backbone.forward(torch.zeros(3, dtype=torch.long), [Row(0, 0, 2)])


# -- the checkpoint ----------------------------------------------------------------------------


@pytest.fixture
def copied_dir(make_soprano_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(make_soprano_dir(12), target)
    return target


def test_a_missing_tensor_is_named(copied_dir):
    from safetensors.torch import load_file, save_file

    weights = load_file(copied_dir / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, copied_dir / "model.safetensors")
    shape = Qwen3Shape.from_config(json.loads((copied_dir / "config.json").read_text()), "config.json")
    with pytest.raises(EngineLoadError, match=r"model\.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_weights(copied_dir / "model.safetensors", shape)


def test_a_tensor_of_the_wrong_shape_is_named(copied_dir):
    from safetensors.torch import load_file, save_file

    weights = load_file(copied_dir / "model.safetensors")
    weights["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(256, 512)
    save_file(weights, copied_dir / "model.safetensors")
    shape = Qwen3Shape.from_config(json.loads((copied_dir / "config.json").read_text()), "config.json")
    with pytest.raises(EngineLoadError, match=r"k_proj\.weight is \(256, 512\), expected \(128, 512\)"):
        load_weights(copied_dir / "model.safetensors", shape)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0}}, "rope type 'yarn'"),
        ({"model_type": "llama"}, "model_type is 'llama'"),
    ],
)
def test_configurations_this_forward_does_not_implement_are_refused(copied_dir, change, message):
    config = json.loads((copied_dir / "config.json").read_text()) | change
    with pytest.raises(EngineLoadError, match=message):
        Qwen3Shape.from_config(config, "config.json")


def test_both_rope_layouts_of_config_json_are_read(copied_dir):
    config = json.loads((copied_dir / "config.json").read_text())
    old_style = {k: v for k, v in config.items() if k != "rope_parameters"} | {"rope_theta": 5000.0}
    assert Qwen3Shape.from_config(old_style, "config.json").rope_theta == 5000.0
    assert Qwen3Shape.from_config(config, "config.json").rope_theta == 10000.0
