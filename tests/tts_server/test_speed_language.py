"""``speed`` and ``language`` through every protocol that has them, on the real pipeline.

Soprano has no rate of its own: its speed goes through the time-stretch stage. espeak-ng
speaks at another rate and in other languages itself (a ``StyledEngine``): no stretch.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import parselmouth
import pytest
import websockets

from tests.tts_server.test_kokoro_live import pcm_of, read_until_end
from tests.tts_server.test_kokoro_live import ws_url as live_url
from tests.tts_server.test_kokorox import recv_until, send, wav_of
from tests.tts_server.test_kokorox import ws_url as kokorox_url
from tests.tts_server.test_openai_speech import speak
from tests.tts_server.test_rvc_server import rvc_files  # noqa: F401  (a fixture)
from tests.tts_server.test_rvc_server import settings as rvc_settings
from tts_server.engines.espeak import EspeakEngine
from tts_server.engines.soprano import SopranoEngine
from tts_server.voice_catalog import VoiceCatalog

ONE_SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs far away."
RATE = 24_000  # every protocol here speaks at 24 kHz


def half_of(full: int) -> tuple[float, float]:
    """Bounds of the length at speed 2.0 given ``full`` samples at speed 1.0 (24 kHz, one utterance).

    The stretch (tts_server/stretch.py, 1024-sample WSOLA frames at Soprano's 32 kHz) leaves
    out at most frame · (1 + 2 / speed) = 2048 samples at speed 2, 1536 at 24 kHz; the
    resampler rounds each of the two lengths by a sample or two.
    """
    slack = 2048 * RATE / 32_000 + 4
    return full / 2 - slack, full / 2 + slack


async def live_pcm(base: str, **init) -> np.ndarray:
    async with websockets.connect(live_url(base)) as ws:
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(ONE_SENTENCE)
        await ws.send("")
        received = await read_until_end(ws)
        assert received[-1]["type"] == "end"
        return pcm_of(received)


async def kokorox_pcm(base: str, speed: float) -> np.ndarray:
    async with websockets.connect(kokorox_url(base)) as ws:
        await send(ws, command="set_speed", speed=speed)
        assert (await recv_until(ws, "speed_changed"))[-1] == {"type": "speed_changed"}
        await send(ws, command="synthesize", text=ONE_SENTENCE)
        messages = await recv_until(ws, "synthesis_completed")
        assert messages[-1] == {"type": "synthesis_completed"}
        return np.concatenate([wav_of(m) for m in messages if m["type"] == "audio_chunk"])


async def kokorox_stream_pcm(base: str, speed: float) -> np.ndarray:
    async with websockets.connect(kokorox_url(base)) as ws:
        await send(ws, command="stream_start", speed=speed)
        stream_id = (await recv_until(ws, "stream_started"))[-1]["stream_id"]
        await send(ws, command="stream_append", stream_id=stream_id, text=ONE_SENTENCE)
        await send(ws, command="stream_end", stream_id=stream_id)
        messages = await recv_until(ws, "stream_ended")
        assert messages[-1]["type"] == "stream_ended"
        return np.concatenate([wav_of(m) for m in messages if m["type"] == "stream_chunk"])


async def openai_pcm(base: str, speed: float) -> np.ndarray:
    raw, _, _ = await speak(base, "pcm", input=ONE_SENTENCE, speed=speed)
    return np.frombuffer(raw, dtype="<i2")


PROTOCOLS = {
    "kokoro_live": lambda base, speed: live_pcm(base, speed=speed),
    "kokorox_synthesize": kokorox_pcm,
    "kokorox_stream": kokorox_stream_pcm,
    "openai_speech": openai_pcm,
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_speed_two_gives_half_the_audio_through_the_stretch(make_server, soprano_engine, protocol):
    base, _ = await make_server(soprano_engine)
    run = PROTOCOLS[protocol]
    full = await run(base, 1.0)
    fast = await run(base, 2.0)
    assert full.size > 4 * 2048  # enough audio for the bounds to mean something
    low, high = half_of(full.size)
    assert low <= fast.size <= high, (full.size, fast.size)


def median_f0_hz(pcm: np.ndarray) -> float:
    pitch = parselmouth.Sound(pcm.astype(np.float64) / 32768, RATE).to_pitch()
    f0 = pitch.selected_array["frequency"]
    return float(np.median(f0[f0 > 0]))


async def test_espeak_speaks_the_speed_itself_keeping_its_pitch(make_server):
    engine = EspeakEngine()
    base, _ = await make_server(engine)
    full = await live_pcm(base, speed=1.0)
    fast = await live_pcm(base, speed=2.0)
    slow = await live_pcm(base, speed=0.5)
    # espeak-ng's rate is words per minute: 175 → 350 and 87 wpm. It scales the phonemes and
    # the pauses alike (2.005× and 0.491× measured for this sentence); 10 % covers its own
    # rounding of durations per phoneme. A second stretch on top would give a quarter.
    assert fast.size == pytest.approx(full.size / 2, rel=0.1)
    assert slow.size == pytest.approx(full.size * 2, rel=0.1)
    # Its pitch parameter is untouched: espeak's F0 contour is the same at any rate (1 %
    # measured); 5 % is far from the 100 % a resampling speed-up would give.
    assert median_f0_hz(fast) == pytest.approx(median_f0_hz(full), rel=0.05)


async def test_espeak_honours_the_language_and_maps_kokoros_codes(make_server):
    engine = EspeakEngine()
    base, _ = await make_server(engine)
    text_en = await live_pcm(base, language="en-us")
    text_fr = await live_pcm(base, language="fr-fr")
    text_f = await live_pcm(base, language="f")  # Kokoro's code for French
    by_voice = await live_pcm(base, voice="ff_siwis")  # a Kokoro French voice, no language given
    # The same English sentence read with French rules is another utterance altogether:
    # lengths differ by far more than espeak's few samples from call to call.
    assert abs(text_fr.size - text_en.size) > 0.05 * text_en.size
    for french in (text_f, by_voice):
        assert abs(french.size - text_fr.size) <= 0.001 * text_fr.size


async def test_a_language_the_engine_lacks_is_spoken_in_its_own_and_logged_once(make_server, soprano_engine, caplog):
    base, _ = await make_server(soprano_engine)
    with caplog.at_level(logging.INFO, logger="tts_server.renderer"):
        async with websockets.connect(live_url(base)) as ws:
            await ws.send(json.dumps({"language": "fr-fr"}))
            assert json.loads(await ws.recv())["type"] == "ready"
            for _ in range(2):
                await ws.send("One sentence. And another one.")
                await ws.send("")
                assert (await read_until_end(ws))[-1]["type"] == "end"
    lines = [r for r in caplog.records if "'fr-fr'" in r.getMessage()]
    assert len(lines) == 1 and "speaks its own" in lines[0].getMessage()


def test_soprano_is_not_a_styled_engine_and_espeak_is(soprano_engine):
    from tts_server import StyledEngine

    assert isinstance(soprano_engine, SopranoEngine) and not isinstance(soprano_engine, StyledEngine)
    assert isinstance(EspeakEngine(), StyledEngine)


@pytest.mark.numerical
async def test_speed_with_an_rvc_voice_stretches_the_converted_audio(make_server, soprano_engine, rvc_files):  # noqa: F811
    # The stretch comes after the voice stage, at its 48 kHz: RVC converts speech at its
    # natural rate, and the one resampling (48 → 24 kHz) stays last.
    catalog = VoiceCatalog(rvc_settings(rvc_files), soprano_engine.sample_rate, "cpu", noise=False)
    base, _ = await make_server(soprano_engine, voices=catalog)
    full = await openai_pcm(base, 1.0)
    fast = await openai_pcm(base, 2.0)
    assert full.size > 4 * 2048
    # The 48 kHz stretcher's frame is 1536 samples, 1.5 × the 32 kHz one: the same 1536
    # samples at 24 kHz (see half_of).
    low, high = half_of(full.size)
    assert low <= fast.size <= high, (full.size, fast.size)
