"""The incremental, batched Soprano decoder against the package's one-shot decoder."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from tts_server.engines.soprano_decoder import (
    LOOKAHEAD_SAMPLES,
    TOKEN_SAMPLES,
    DecoderState,
    StreamingDecoder,
    final_samples,
)

#: Float results against derived bounds: CI runs these again on one thread (see tests/conftest.py).
pytestmark = pytest.mark.numerical


@pytest.fixture(scope="module")
def strong_decoder():
    """A SopranoDecoder whose output depends on its whole receptive field.

    Random initialisation decays too fast across the ConvNeXt blocks (γ = 1/√8) for a
    missing neighbour to show; larger depthwise taps, γ = 1 and a louder input make every
    frame of the receptive field matter, so an inexact chunk edge cannot hide.
    """
    from soprano.vocos.decoder import SopranoDecoder

    torch.manual_seed(0)
    decoder = SopranoDecoder().eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for block in decoder.decoder.convnext:
            block.dwconv.weight.copy_(torch.randn(block.dwconv.weight.shape, generator=g) * 0.6)
            block.gamma.fill_(1.0)
        decoder.decoder.embed.weight.mul_(20)
    return decoder


def one_shot(decoder, latents: torch.Tensor) -> torch.Tensor:
    """The package's decoder on all latents at once: ``(T, 512)`` → ``(2048·(T−1),)``."""
    if latents.shape[0] < 2:
        return torch.zeros(0, dtype=latents.dtype)
    with torch.inference_mode():
        return decoder(latents.T[None])[0]


def float32_error(decoder, latents: torch.Tensor) -> float:
    """How far float32 one-shot decoding is from float64 (max abs): the scale of rounding."""
    exact = one_shot(copy.deepcopy(decoder).double(), latents.double())
    return float((one_shot(decoder, latents).double() - exact).abs().max())


def test_batched_incremental_decoding_equals_one_shot_for_every_sequence(strong_decoder):
    """Five sequences of different lengths share every call, each fed a random number of
    latents per call (0-5, as streams of different pace in one batch): each sequence's
    concatenated output equals the one-shot decoding of its own latents."""
    streaming = StreamingDecoder(strong_decoder)
    g = torch.Generator().manual_seed(3)
    lengths = [0, 1, 2, 13, 40]
    latents = [torch.randn(n, 512, generator=g) for n in lengths]
    states = [DecoderState() for _ in lengths]
    outputs: list[list[torch.Tensor]] = [[] for _ in lengths]
    fed = [0] * len(lengths)
    rng = random.Random(5)
    calls = 0
    while not all(s.ended for s in states):
        live = [i for i, s in enumerate(states) if not s.ended]
        take = {i: rng.randint(0, 5) for i in live}
        chunks = [latents[i][fed[i] : fed[i] + take[i]] for i in live]
        for i in live:
            fed[i] = min(lengths[i], fed[i] + take[i])
        out = streaming.decode([states[i] for i in live], chunks, [fed[i] == lengths[i] for i in live])
        for i, pcm in zip(live, out, strict=True):
            outputs[i].append(pcm)
            # Each call returns exactly the samples the latents so far make final.
            assert states[i].samples == final_samples(states[i].latents, states[i].ended)
        calls += 1
    assert calls > 5
    for n, lat, out in zip(lengths, latents, outputs, strict=True):
        streamed = torch.cat(out)
        reference = one_shot(strong_decoder, lat)
        assert streamed.shape == reference.shape == (TOKEN_SAMPLES * max(0, n - 1),)
        if n >= 2:
            # Two float32 computations of the same samples (different summation orders):
            # each is within float32_error of exact, so they differ by at most about twice
            # that; 5× it leaves room without admitting a wrong sample (those are O(scale)).
            tolerance = 5 * float32_error(strong_decoder, lat)
            assert float((streamed - reference).abs().max()) <= tolerance


def test_the_lookahead_is_the_least_that_is_exact(strong_decoder):
    """After T latents the first 2048·T − 6656 samples are final; the next ones are not.

    Ending the sequence early (zero padding instead of the latents still to come) leaves
    the emitted samples unchanged but changes the very next ones: a decoder emitting even
    one token of look-ahead less would send samples that later latents alter.
    """
    streaming = StreamingDecoder(strong_decoder)
    latents = torch.randn(30, 512, generator=torch.Generator().manual_seed(11))
    full = one_shot(strong_decoder, latents)
    rounding = float32_error(strong_decoder, latents)
    tolerance = 5 * rounding
    for t in (4, 9, 20):
        state = DecoderState()
        (prefix,) = streaming.decode([state], [latents[:t]], [False])
        assert prefix.shape[0] == TOKEN_SAMPLES * t - LOOKAHEAD_SAMPLES
        assert float((prefix - full[: prefix.shape[0]]).abs().max()) <= tolerance
        (rest,) = streaming.decode([state], [latents[:0]], [True])  # as if the sentence ended here
        truncated_next = rest[:TOKEN_SAMPLES]
        true_next = full[prefix.shape[0] : prefix.shape[0] + TOKEN_SAMPLES]
        # The next samples depend on latents not yet known, by far more than rounding does
        # (the dependence is weakest right at the edge, where the Hann window tapers to 0).
        assert float((truncated_next - true_next).abs().max()) > 100 * rounding


def test_every_frame_is_computed_once(strong_decoder):
    """Streaming in chunks of one latent costs no more decoder frames than one-shot decoding:
    4(T−1)+1 frames through the stack for T latents (the reference streamer re-decodes a
    window of 4 + chunk tokens per chunk)."""
    streaming = StreamingDecoder(strong_decoder)
    rows = 0
    embed = streaming.embed

    class Counting:
        def __call__(self, x):
            nonlocal rows
            rows += x.shape[0]
            return embed(x)

    streaming.embed = Counting()  # a counting stand-in for the same product
    state = DecoderState()
    latents = torch.randn(25, 512, generator=torch.Generator().manual_seed(2))
    for i in range(25):
        streaming.decode([state], [latents[i : i + 1]], [i == 24])
    assert rows == 4 * 24 + 1


def test_a_failed_call_changes_no_state(strong_decoder):
    """A call that raises (here: out of memory in the head) can be retried without loss."""
    streaming = StreamingDecoder(strong_decoder)
    latents = torch.randn(12, 512, generator=torch.Generator().manual_seed(4))
    state = DecoderState()
    (first,) = streaming.decode([state], [latents[:6]], [False])
    head = streaming.head

    def out_of_memory(x):
        raise torch.OutOfMemoryError("injected")

    streaming.head = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        streaming.decode([state], [latents[6:]], [True])
    streaming.head = head
    (rest,) = streaming.decode([state], [latents[6:]], [True])
    reference = one_shot(strong_decoder, latents)
    assert float((torch.cat([first, rest]) - reference).abs().max()) <= 5 * float32_error(strong_decoder, latents)


def test_an_ended_state_is_not_fed_again(strong_decoder):
    streaming = StreamingDecoder(strong_decoder)
    state = DecoderState()
    streaming.decode([state], [torch.randn(3, 512)], [True])
    with pytest.raises(ValueError, match="already ended"):
        streaming.decode([state], [torch.randn(1, 512)], [False])
