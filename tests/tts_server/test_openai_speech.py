"""POST /v1/audio/speech, GET /v1/models, GET /v1/audio/voices, spoken to by the real ``openai`` client."""

from __future__ import annotations

import asyncio
import io
import logging

import aiohttp
import av
import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI

from tests.tts_server.test_server import read_streamed_wav

TEXT = "The first sentence. And then a second one!"
SENTENCES = ["The first sentence.", "And then a second one!"]


def reference_24k(engine, texts: list[str]) -> np.ndarray:
    """The engine's audio for ``texts`` resampled to 24 kHz in one go (what the stream must produce)."""
    native = np.concatenate([np.concatenate(list(engine.synthesize(t))) for t in texts])
    return soxr.resample(native, engine.sample_rate, 24_000, quality="HQ")


def decode(data: bytes) -> tuple[int, np.ndarray]:
    """Decode a compressed file with FFmpeg (PyAV): its stream's sample rate and mono audio as float32
    (in [-1, 1], or 16-bit sample values for FLAC, which decodes to its integers)."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        audio = np.concatenate(frames)
        return stream.codec_context.sample_rate, audio.astype(np.float32)


async def speak(base: str, fmt: str, **kwargs) -> tuple[bytes, int, dict]:
    """The ``openai`` client's streaming call: (body, number of chunks read, headers)."""
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    params = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt, **kwargs}
    async with client.audio.speech.with_streaming_response.create(**params) as response:
        chunks = [chunk async for chunk in response.iter_bytes()]
        headers = dict(response.headers)
    await client.close()
    return b"".join(chunks), len(chunks), headers


@pytest.mark.numerical
async def test_pcm_and_wav_are_the_pipelines_audio_at_24khz_streamed(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    reference = reference_24k(soprano_engine, SENTENCES)
    raw, _, headers = await speak(base, "pcm")
    assert headers["transfer-encoding"] == "chunked" and headers["content-type"] == "audio/pcm"
    pcm = np.frombuffer(raw, dtype="<i2")
    # 16-bit rounding: at most half a step, plus float32 reordering of the two syntheses (EXACT of the peak).
    from tests.conftest import EXACT

    bound = 0.5 + EXACT * np.abs(reference).max() * 32767
    assert pcm.size == reference.size
    assert np.abs(pcm - reference.astype(np.float64) * 32767).max() <= bound
    wav, _, headers = await speak(base, "wav")
    rate, samples = read_streamed_wav(wav)
    assert headers["content-type"] == "audio/wav" and rate == 24_000 and samples.dtype == np.int16
    assert np.abs(samples - reference.astype(np.float64) * 32767).max() <= bound  # a synthesis of its own


@pytest.mark.numerical
@pytest.mark.parametrize(
    ("fmt", "codec", "rate"),
    # Opus decodes at 48 kHz whatever the input rate (RFC 7845, section 5.1); its header keeps 24 kHz.
    [("mp3", "mp3", 24_000), ("opus", "opus", 48_000), ("aac", "aac", 24_000), ("flac", "flac", 24_000)],
)
async def test_compressed_formats_decode_to_the_same_speech(make_server, soprano_engine, fmt, codec, rate):
    base, _ = await make_server(soprano_engine)
    reference = reference_24k(soprano_engine, SENTENCES)
    data, _, headers = await speak(base, fmt)
    assert headers["transfer-encoding"] == "chunked"
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].codec_context.codec.name.startswith(codec)  # mp3: "mp3float"
    got_rate, audio = decode(data)
    assert got_rate == rate
    duration_s = audio.size / got_rate
    # Lossy codecs add their priming and padding (mp3: up to 2 × 1152 samples; aac: 2 × 1024; opus: 312 at 48 kHz).
    assert reference.size / 24_000 <= duration_s + 1e-9 and duration_s <= reference.size / 24_000 + 0.1
    if fmt == "flac":  # lossless: the 16-bit samples, as FFmpeg converts float (× 32768, rounded)
        from tests.conftest import EXACT

        bound = 0.5 + EXACT * np.abs(reference).max() * 32768
        assert audio.size == reference.size
        assert np.abs(audio - reference.astype(np.float64) * 32768).max() <= bound
    else:  # lossy: not silence (the random-weight model's audio is noise-like: no finer check holds for it)
        assert np.abs(audio).max() > 0.5 * np.abs(reference).max()


async def test_models_and_voices_are_listed_and_unknown_voices_speak_in_the_default(
    make_server, soprano_engine, caplog
):
    caplog.set_level(logging.INFO, "tts_server.protocols.common")
    base, _ = await make_server(soprano_engine, {"voices": {"aliases": {"nova": ""}}})
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    models = [model.id async for model in client.models.list()]
    assert models == [soprano_engine.name, "tts-1", "tts-1-hd"]
    async with aiohttp.ClientSession() as http, http.get(base + "/v1/audio/voices") as r:
        assert await r.json() == {"voices": ["nova"], "default": None}
    for voice in ("af_heart", "af_heart", "nova"):
        async with client.audio.speech.with_streaming_response.create(
            model="kokoro", voice=voice, input="Hi.", response_format="pcm"
        ) as response:
            assert response.status_code == 200 and len(await response.read()) > 0
    await client.close()
    lines = [r.getMessage() for r in caplog.records if "af_heart" in r.getMessage()]
    assert len(lines) == 1 and "default voice" in lines[0]  # once per name; an alias is silent
    assert not [r for r in caplog.records if "nova" in r.getMessage()]


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ("{bad", 400, "malformed JSON"),
        ('{"model": "tts-1", "voice": "alloy"}', 400, "input"),
        ('{"input": ""}', 400, "input"),
        ('{"input": 3}', 400, "input"),
        ('{"input": "Hi.", "response_format": "ogg"}', 400, "response_format"),
        ('{"input": "Hi.", "speed": 9}', 400, "speed"),
        ('{"input": "Hi.", "stream_format": "sse"}', 400, "sse"),
        ('{"input": "' + "word " * 12_000 + '"}', 413, "limit"),
    ],
)
async def test_bad_requests_get_an_openai_error(make_server, soprano_engine, body, status, expected):
    base, app = await make_server(soprano_engine)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(base + "/v1/audio/speech", data=body, headers=headers) as r:
        assert r.status == status
        error = (await r.json())["error"]
        assert expected in error["message"] and error["type"] == "invalid_request_error"
    await asyncio.sleep(0)
    from tts_server.app import PIPELINE

    assert app[PIPELINE].active_streams == 0  # nothing was opened, or it was closed
