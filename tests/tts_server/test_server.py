"""The real server on a free port, spoken to with real WebSocket and HTTP clients."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import numpy as np
import pytest
import soxr
import websockets
from scipy.io import wavfile

from tests.conftest import TEST_AUDIO_TOKENS
from tts_server import text_pieces
from tts_server.cli import say
from tts_server.engines.soprano import TOKEN_SAMPLES, prepare_text

SEGMENT_SAMPLES_48K = (TEST_AUDIO_TOKENS - 1) * TOKEN_SAMPLES * 3 // 2  # one segment's audio at 48 kHz


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws/stream"


async def recv_until(ws, predicate, timeout_s: float = 30.0) -> list:
    """Receive frames until ``predicate(frame)`` is true; return all frames received."""
    frames = []
    async with asyncio.timeout(timeout_s):
        while True:
            frame = await ws.recv()
            frames.append(frame)
            if predicate(frame):
                return frames


def is_event(kind: str):
    return lambda f: isinstance(f, str) and json.loads(f).get("type") == kind


def audio_of(frames) -> np.ndarray:
    parts = [np.frombuffer(f, dtype="<f4") for f in frames if isinstance(f, bytes)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def read_streamed_wav(data: bytes) -> tuple[int, np.ndarray]:
    """A WAV from /api/speak: its header says "length unknown" (0xFFFFFFFF); read it all."""
    assert data[4:8] == b"\xff\xff\xff\xff" and data.index(b"data") > 0
    data_at = data.index(b"data") + 8
    fixed = bytearray(data)
    fixed[4:8] = (len(data) - 8).to_bytes(4, "little")
    fixed[data_at - 4 : data_at] = (len(data) - data_at).to_bytes(4, "little")
    if b"fact" in data[:data_at]:
        fact = data.index(b"fact") + 8
        fixed[fact : fact + 4] = ((len(data) - data_at) // 4).to_bytes(4, "little")
    return wavfile.read(io.BytesIO(bytes(fixed)))


def reference_audio(engine, texts: list[str]) -> np.ndarray:
    """What the pipeline must produce: the engine's chunks, resampled to 48 kHz in one shot.

    The text is synthesised again, and the decoder's chunks follow the machine's speed: the
    audio may differ from the server's by float32 reordering (see :func:`assert_same_audio`).
    """
    native = np.concatenate([np.concatenate(list(engine.synthesize(t))) for t in texts])
    return soxr.resample(native, engine.sample_rate, 48_000, quality="HQ")


def assert_same_audio(audio: np.ndarray, reference: np.ndarray) -> None:
    """Equal up to float32 reordering: measured ≤ 1.2e-6 of the peak (0 when both runs decoded
    the same chunks), bound EXACT = 1e-5 of the peak (tests/conftest.py)."""
    from tests.conftest import EXACT

    np.testing.assert_allclose(audio, reference, rtol=0, atol=EXACT * np.abs(reference).max())


# -- the seed-004 protocol -------------------------------------------------------------------


@pytest.mark.numerical
async def test_seed_flow_audio_for_a_sentence_arrives_before_any_flush(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        for token in ["Hello", " ", "world", "!"]:
            await ws.send(json.dumps({"token": token, "pitch_shift": 0}))
        frames = []
        async with asyncio.timeout(30):
            while sum(len(f) for f in frames) < SEGMENT_SAMPLES_48K * 4:
                frame = await ws.recv()
                assert isinstance(frame, bytes), frame  # seed clients see audio only
                frames.append(frame)
    audio = audio_of(frames)
    assert len(audio) == SEGMENT_SAMPLES_48K
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert_same_audio(audio, reference_audio(soprano_engine, ["Hello world!"]))


async def test_audio_is_sent_per_decoded_chunk_not_per_sentence(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        await ws.send(json.dumps({"token": "One sentence that is spoken.", "pitch_shift": 0}))
        await ws.send(json.dumps({"flush": True}))
        frames = await recv_until(ws, is_event("flushed"))
    sizes = [len(f) // 4 for f in frames if isinstance(f, bytes)]
    assert len(sizes) >= 4
    assert max(sizes) <= 4 * TOKEN_SAMPLES * 3 // 2 + 64  # at most 4 tokens (256 ms) per frame


async def test_seed_python_client_works_unchanged(make_server, soprano_engine):
    """The seed's own Python client, verbatim apart from collecting the audio it plays."""
    base, _ = await make_server(soprano_engine)
    received: list[bytes] = []

    async def text_stream():
        for token in text_pieces("Hello world! How are you today? I am fine"):
            yield token

    async def speak(text_stream):
        async with websockets.connect(ws_url(base)) as ws:
            async for token in text_stream:
                await ws.send(json.dumps({"token": token, "pitch_shift": 0}))
                try:
                    audio_bytes = await asyncio.wait_for(ws.recv(), timeout=0.5)
                    np.frombuffer(audio_bytes, dtype=np.float32)
                    received.append(audio_bytes)
                except TimeoutError:
                    continue
            await ws.send(json.dumps({"flush": True}))
            while True:
                try:
                    audio_bytes = await asyncio.wait_for(ws.recv(), timeout=1.0)
                    received.append(audio_bytes)
                except TimeoutError:
                    break

    await speak(text_stream())
    audio = audio_of(received)
    assert len(audio) == 3 * SEGMENT_SAMPLES_48K  # three segments, none lost


async def test_seed_node_client_works_unchanged(make_server, soprano_engine, tmp_path):
    """The seed's Node.js client (package `ws`), run by node against the server."""
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    client = Path(__file__).with_name("seed_node_client.js")
    if node is None:
        pytest.skip("node is not installed")
    probe = await asyncio.to_thread(
        subprocess.run, [node, "-e", "require('ws')"], capture_output=True, cwd=client.parent
    )
    if probe.returncode != 0:
        pytest.skip("the npm package `ws` is not installed (.ci/run installs it)")
    base, _ = await make_server(soprano_engine)
    proc = await asyncio.create_subprocess_exec(
        node,
        str(client),
        ws_url(base),
        "Hello world! How are you?",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=client.parent,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["samples"] == 2 * SEGMENT_SAMPLES_48K


# -- triggers, flush, events, cancel ------------------------------------------------------------


async def test_each_trigger_produces_a_segment_event(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine, {"segmenter": {"max_chars": 40}})
    text = "Is it done? Yes, it is quite done. Another clause here; then more\nA line without end"
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        for token in [*text_pieces(text), " and this one runs on and on past the limit"]:
            await ws.send(json.dumps({"token": token, "pitch_shift": 0}))
        await ws.send(json.dumps({"flush": True}))
        frames = await recv_until(ws, is_event("flushed"))
    events = [json.loads(f) for f in frames if isinstance(f, str)]
    segments = [e["text"] for e in events if e["type"] == "segment"]
    assert segments == [
        "Is it done?",
        "Yes, it is quite done.",
        "Another clause here;",
        "then more",
        "A line without end and this one runs on",  # over 40 characters: cut at the last word within 40
        "and on past the limit",  # the tail comes with the flush
    ]
    flushed = events[-1]
    assert flushed["segments"] == list(range(6))
    assert len(audio_of(frames)) == 6 * SEGMENT_SAMPLES_48K
    assert flushed["audio_ms"] == pytest.approx(6 * SEGMENT_SAMPLES_48K / 48, abs=0.2)


async def test_flushed_event_follows_all_audio_and_reports_timing(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        await ws.send(json.dumps({"token": "First sentence here. Second sentence here", "pitch_shift": 0}))
        await ws.send(json.dumps({"flush": True}))
        frames = await recv_until(ws, is_event("flushed"))
        # a flush with nothing buffered still answers, at once
        await ws.send(json.dumps({"flush": True}))
        empty = await recv_until(ws, is_event("flushed"), timeout_s=5)
    segment_events = [json.loads(f) for f in frames if isinstance(f, str)]
    assert [e["type"] for e in segment_events] == ["segment", "segment", "flushed"]
    assert all(e["ttfa_ms"] > 0 and e["synth_ms"] > 0 for e in segment_events[:2])
    assert isinstance(frames[-2], bytes) or json.loads(frames[-2])["type"] == "segment"
    assert json.loads(empty[-1])["segments"] == [] and len(empty) == 1


async def test_cancel_drops_buffered_text_and_queued_audio(make_server, make_soprano_dir):
    from tts_server.engines.soprano import SopranoEngine

    engine = SopranoEngine(make_soprano_dir(200), device="cpu")  # 12.8 s per sentence
    base, _app = await make_server(engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        await ws.send(json.dumps({"token": "A long sentence to speak. Another one. And a tail", "pitch_shift": 0}))
        first = await ws.recv()
        assert isinstance(first, bytes)
        await ws.send(json.dumps({"cancel": True}))
        frames = await recv_until(ws, is_event("cancelled"), timeout_s=10)
        # After the ack nothing of the cancelled text may arrive: a flush now speaks nothing.
        await ws.send(json.dumps({"flush": True}))
        after = await recv_until(ws, is_event("flushed"), timeout_s=10)
    assert all(isinstance(f, bytes) for f in frames[:-1])
    assert len(after) == 1 and json.loads(after[0])["segments"] == []
    received = sum(len(f) // 4 for f in [first, *frames] if isinstance(f, bytes))
    assert received < 199 * TOKEN_SAMPLES * 3 // 2  # far from the 3 sentences' audio


async def test_stream_is_usable_after_cancel(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        await ws.send(json.dumps({"token": "Dropped words", "pitch_shift": 0}))
        await ws.send(json.dumps({"cancel": True, "token": "Kept words.", "flush": True}))
        frames = await recv_until(ws, is_event("flushed"))
    events = [json.loads(f) for f in frames if isinstance(f, str)]
    assert events[0] == {"type": "cancelled"}
    assert [e["text"] for e in events if e["type"] == "segment"] == ["Kept words."]


async def test_disconnect_mid_synthesis_frees_the_stream_and_others_continue(make_server, make_soprano_dir):
    from tts_server.engines.soprano import SopranoEngine

    engine = SopranoEngine(make_soprano_dir(300), device="cpu")
    base, app = await make_server(engine)
    from tts_server.app import PIPELINE

    pipeline = app[PIPELINE]
    quitter = await websockets.connect(ws_url(base))
    await quitter.send(json.dumps({"token": "This sentence will never finish. Nor this.", "pitch_shift": 0}))
    assert isinstance(await quitter.recv(), bytes)
    assert pipeline.active_streams == 1
    await quitter.close()
    async with asyncio.timeout(5):
        while pipeline._streams:  # the inference thread drops it at its next chunk boundary
            await asyncio.sleep(0.01)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        await ws.send(json.dumps({"token": "Still here.", "flush": True}))
        frames = await recv_until(ws, is_event("flushed"), timeout_s=60)
    tokens = min(300, int(16 + engine.max_tokens_per_char * len(prepare_text("Still here."))))
    assert len(audio_of(frames)) == (tokens - 1) * TOKEN_SAMPLES * 3 // 2


async def test_two_clients_are_served_concurrently_and_get_their_own_audio(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)

    async def client(text: str) -> tuple[list[str], np.ndarray]:
        async with websockets.connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"events": True}))
            await ws.send(json.dumps({"token": text, "flush": True}))
            frames = await recv_until(ws, is_event("flushed"))
        events = [json.loads(f) for f in frames if isinstance(f, str)]
        return [e["text"] for e in events if e["type"] == "segment"], audio_of(frames)

    (texts_a, audio_a), (texts_b, audio_b) = await asyncio.gather(client("Alpha one. Alpha two."), client("Bravo one."))
    assert texts_a == ["Alpha one.", "Alpha two."] and texts_b == ["Bravo one."]
    assert len(audio_a) == 2 * SEGMENT_SAMPLES_48K and len(audio_b) == SEGMENT_SAMPLES_48K


async def test_connections_past_the_limit_are_closed_with_1013(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine, {"server": {"max_streams": 1}})
    async with websockets.connect(ws_url(base)) as first:
        await first.send(json.dumps({"events": True}))
        second = await websockets.connect(ws_url(base))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(second.recv(), 5)
        assert closed.value.rcvd.code == 1013
        assert "busy" in closed.value.rcvd.reason
        await first.send(json.dumps({"token": "Still served.", "flush": True}))
        assert isinstance(await asyncio.wait_for(first.recv(), 30), bytes)


# -- bad input -------------------------------------------------------------------------------------


BAD_MESSAGES = [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('"token"', "must be a JSON object"),
    ('{"token": 5}', "Expected `str | null`, got `int` - at `$.token`"),
    ('{"token": "x", "pitch_shift": "high"}', "pitch_shift"),
    ('{"token": "x", "pitch_shift": 30}', "pitch_shift"),
    ('{"token": "x", "pitch_shift": -24.5}', "pitch_shift"),
    ('{"token": "x", "pitch_shift": NaN}', "finite"),
    ('{"token": "x", "pitch_shift": Infinity}', "finite"),
    ('{"token": "x", "pitch_shift": true}', "boolean"),
    ('{"flush": "yes"}', "flush"),
    ('{"speak": "hello"}', "unknown command 'speak'"),
    ("{}", "empty command"),
    (json.dumps({"token": "x" * 10_001}), "10001 characters long; the limit is 10000"),
]


@pytest.mark.parametrize(("frame", "expected"), BAD_MESSAGES)
async def test_bad_message_gets_an_error_and_buffered_text_survives(make_server, soprano_engine, frame, expected):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        await ws.send(json.dumps({"token": "Buffered words", "pitch_shift": 0}))
        await ws.send(frame)
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert expected in error["error"]
        await ws.send(json.dumps({"token": " survive", "pitch_shift": 0}))
        await ws.send(json.dumps({"flush": True}))
        frames = await recv_until(ws, is_event("flushed"))
    events = [json.loads(f) for f in frames if isinstance(f, str)]
    assert [e["text"] for e in events if e["type"] == "segment"] == ["Buffered words survive"]


async def test_binary_frame_from_client_gets_an_error(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(b"\x00\x01")
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert "binary frames are not accepted" in error["error"]
        await ws.send(json.dumps({"token": "Still open.", "flush": True}))
        assert isinstance(await asyncio.wait_for(ws.recv(), 30), bytes)


async def test_too_much_pending_text_is_refused_without_losing_the_buffer(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine, {"server": {"max_pending_chars": 100}})
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        for word in ["aaaa"] * 12:
            await ws.send(json.dumps({"token": word}))  # no spaces: one word, never cut
        await ws.send(json.dumps({"token": "b" * 60}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert "too much unspoken text" in error["error"]
        await ws.send(json.dumps({"flush": True}))
        frames = await recv_until(ws, is_event("flushed"))
    events = [json.loads(f) for f in frames if isinstance(f, str)]
    assert [e["text"] for e in events if e["type"] == "segment"] == ["a" * 48]


# -- HTTP --------------------------------------------------------------------------------------------


@pytest.mark.numerical
async def test_api_speak_returns_48k_wav_equal_to_the_stream(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    text = "The first sentence. And then a second one!"
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/api/speak", json={"text": text, "pitch_shift": 0}) as r:
            assert r.status == 200 and r.content_type == "audio/wav"
            assert r.headers["Transfer-Encoding"] == "chunked"  # streamed, not built whole
            rate, f32 = read_streamed_wav(await r.read())
        async with http.post(base + "/api/speak?format=s16", json={"text": text}) as r:
            rate16, s16 = read_streamed_wav(await r.read())
    assert rate == rate16 == 48_000 and f32.dtype == np.float32 and s16.dtype == np.int16
    streamed, _ = await say(text, ws_url(base))
    reference = reference_audio(soprano_engine, ["The first sentence.", "And then a second one!"])
    assert_same_audio(f32, reference)
    # The stream and the s16 request are syntheses of their own: equal up to float32 reordering (asserting
    # bit-equality failed with 3 threads), so the s16 samples are f32's rounded, give or take that reordering.
    from tests.conftest import EXACT

    assert_same_audio(streamed, f32)
    assert np.abs(s16 - f32.astype(np.float64) * 32767).max() <= 0.5 + EXACT * np.abs(f32).max() * 32767


@pytest.mark.parametrize(
    ("body", "query", "status", "expected"),
    [
        ("{bad", "", 400, "malformed JSON"),
        ('{"text": ""}', "", 400, "text"),
        ('{"text": 3}', "", 400, "text"),
        ('{"text": "hi", "pitch_shift": 99}', "", 400, "pitch_shift"),
        ('{"text": "hi", "pitch_shift": NaN}', "", 400, "pitch_shift"),
        ('{"text": "hi", "voice_id": 1}', "", 400, "voice_id"),
        ('{"text": "hi"}', "?format=mp3", 400, "format"),
    ],
)
async def test_api_speak_rejects_bad_requests(make_server, soprano_engine, body, query, status, expected):
    base, _ = await make_server(soprano_engine)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(base + "/api/speak" + query, data=body, headers=headers) as r:
        assert r.status == status
        assert expected in (await r.json())["error"]


async def test_health_reports_engine_and_streams(make_server, soprano_engine, soprano_dir):
    base, _ = await make_server(soprano_engine)
    async with aiohttp.ClientSession() as http, websockets.connect(ws_url(base)), http.get(base + "/health") as r:
        health = await r.json()
    assert health["engine"] == "soprano" and health["device"] == "cpu"
    assert health["sample_rate"] == 48_000 and health["engine_sample_rate"] == 32_000
    assert health["model"] == str(soprano_dir) and health["active_streams"] == 1
    for path in ["/ws/stream", "/api/speak", "/health", "/voices", "/v1/audio/speech", "/v1/models"]:
        assert path in health["endpoints"]
    for path in ["/v1/audio/voices", "/ws/tts", "/ws/tts/live", "/ws/kokorox", "/"]:
        assert path in health["endpoints"]


async def test_pitch_shift_is_carried_to_the_voice_stage(make_server, soprano_engine):
    """Until RVC is configured the voice stage is a passthrough; it must still receive the value."""
    from tts_server.voice_stage import DefaultVoiceOnly, Passthrough

    seen: list[float] = []

    class Recording(Passthrough):
        def process(self, audio, pitch_shift):
            seen.append(pitch_shift)
            return audio

    base, _ = await make_server(soprano_engine, voices=DefaultVoiceOnly(lambda: Recording(soprano_engine.sample_rate)))
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"events": True}))
        await ws.send(json.dumps({"token": "Low voice here.", "pitch_shift": -5}))
        await ws.send(json.dumps({"token": " High voice here.", "pitch_shift": 7.5}))
        await ws.send(json.dumps({"flush": True}))
        await recv_until(ws, is_event("flushed"))
    assert seen and set(seen) == {-5.0, 7.5}
    assert seen == sorted(seen)  # the first segment's chunks carry -5, the second's 7.5


async def test_a_cancel_stops_the_rest_of_a_multi_frame_chunk(soprano_dir):
    """Audio events longer than one frame are cut short by a cancel between their frames."""
    from tts_server import Pipeline
    from tts_server.engines.soprano import SopranoEngine
    from tts_server.protocol import MAX_FRAME_SAMPLES
    from tts_server.transport import Session

    engine = SopranoEngine(soprano_dir, device="cpu", chunk_tokens=16)  # events of up to 4 frames
    pipeline = Pipeline(engine)
    pipeline.start()
    try:
        stream = pipeline.open_stream()
        events, sent = [], []
        receive = stream.get

        async def get():
            events.append(await receive())
            return events[-1]

        stream.get = get

        class CancellingSocket:
            async def send_bytes(self, data: bytes) -> None:
                sent.append((len(events), len(data) // 4))
                if events[-1].pcm.size > MAX_FRAME_SAMPLES and not stream.generation:
                    stream.cancel()  # during the first frame of the first multi-frame event

            async def send_str(self, data: str) -> None:
                pass

        session = Session(CancellingSocket(), stream, 10_000, load_voice=pipeline.preload_voice)
        stream.push("A sentence long enough to give a chunk of several frames.")
        stream.flush()
        sender = asyncio.create_task(session.send_events())
        async with asyncio.timeout(30):
            while not stream.generation:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        sender.cancel()
        big = len(events)
        assert events[big - 1].pcm.size > MAX_FRAME_SAMPLES
        assert [n for event, n in sent if event == big] == [MAX_FRAME_SAMPLES]  # its other frames were dropped
        assert sent[-1][0] == big  # and nothing after it was sent
    finally:
        stream.close()
        pipeline.stop()


async def test_say_sends_the_key_from_the_environment_and_explains_a_refusal(
    make_server, soprano_engine, monkeypatch, capsys
):
    from tts_server.cli import main

    base, _ = await make_server(soprano_engine, {"server": {"api_keys": ["say-key-0123456789"]}})
    monkeypatch.setenv("TTS_API_KEY", "say-key-0123456789")
    audio, _ = await say("Hello there.", ws_url(base))
    assert len(audio) == SEGMENT_SAMPLES_48K
    monkeypatch.delenv("TTS_API_KEY")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await say("Hello there.", ws_url(base))
    assert refused.value.status == 401
    status = await asyncio.to_thread(main, ["say", "Hi.", "--url", ws_url(base), "--wait", "0", "-o", "/dev/null"])
    assert status == 1 and "(401): it wants an API key: set TTS_API_KEY" in capsys.readouterr().err
