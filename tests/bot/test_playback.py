"""What goes out to Discord: the real VoiceClient/AudioPlayer, packets decrypted and decoded.

Each test drives discord.py's own ``VoiceClient.play()`` (player thread, Opus encoder,
RTP, transport encryption) with only the socket replaced by a recorder, and compares
the decoded audio with the audio the pipeline produced for the reply.
"""

from __future__ import annotations

import asyncio

import numpy as np

from bot.audio import FRAME_SAMPLES
from tests.bot.bot_harness import VOICE_RMS, find


async def test_say_sends_the_pipeline_audio_in_order_without_inserted_silence(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    g = h.guild()
    await h.invoke("say", g.ctx, text="Hello there. This is the second sentence. And here is a third one.")
    await g.wait_idle()
    await asyncio.sleep(0.1)

    playback = g.tap.playbacks[0]
    assert playback.underrun_frames == 0
    audio = g.tap.audio()
    assert audio.size > 2.0 * 48_000  # three sentences of real speech
    decoded = g.decoded()
    m = g.match_reply(0, decoded)
    # One contiguous match: a single inserted 20 ms frame would shift everything after it.
    assert m.corr > 0.9, m.corr
    # 100 ms windows: all above 0.5 (lowest 0.52; 94 % above 0.7), none when one frame off (median −0.01)
    assert np.mean(m.window_corrs > 0.5) > 0.9, np.sort(m.window_corrs)[:20]
    assert m.tail_corr > 0.9, m.tail_corr  # still aligned at the end
    assert m.lag < 1000  # Opus decoder delay only: the reply starts on the first packet it was read into
    # The packets are consecutive RTP: sequence +1 and timestamp +960 each.
    assert np.all(np.diff(decoded.sequence.astype(np.int64)) % 65536 == 1)
    assert np.all(np.diff(decoded.timestamp.astype(np.int64)) == FRAME_SAMPLES)
    # The reply occupies exactly ceil(N / 960) packets: no frame was added inside it.
    first = g.packet_at(decoded, playback.started_at)
    last = g.packet_at(decoded, playback.done_at)
    assert last - first + 1 == -(-audio.size // FRAME_SAMPLES)


async def test_soprano_reply_reaches_discord_without_inserted_silence(harness, soprano_engine):
    """The random-weight Soprano engine: every sentence is 0.704 s of (noise-like) audio."""
    from tts_server import Pipeline

    pipeline = Pipeline(soprano_engine)
    pipeline.start()
    try:
        h = await harness(pipeline)
        g = h.guild()
        await h.invoke("say", g.ctx, text="One sentence here. A second one follows. And the third.")
        await g.wait_idle()
        audio = g.tap.audio()
        assert audio.size == 3 * round(0.704 * 48_000)
        assert g.tap.playbacks[0].underrun_frames == 0
        m = g.match_reply(0)
        # Opus keeps this noise-like audio's waveform less exactly than speech (0.82 measured);
        # one frame (20 ms) off it correlates 0.12. The bound 0.4 is 2× from both.
        assert m.corr > 0.4, m.corr
        assert np.mean(m.window_corrs > 0.4) > 0.9
        assert m.tail_corr > 0.4, m.tail_corr
    finally:
        pipeline.stop()


async def test_one_player_serves_every_reply_and_is_never_restarted(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    g = h.guild()
    await h.invoke("say", g.ctx, text="First reply.")
    await g.wait_idle()
    player = g.vc._player
    assert player is not None and player.is_alive()
    await asyncio.sleep(0.3)  # idle: the player keeps sending silence frames
    await h.invoke("say", g.ctx, text="Second reply.")
    await g.wait_idle()
    assert g.vc._player is player and player.is_alive()
    assert len(g.voice.voice_clients) == 1
    decoded = g.decoded()
    # Both replies are intact and in order, in the one stream of packets.
    for i in range(2):
        assert g.match_reply(i, decoded).corr > 0.9
    assert g.tap.playbacks[0].done_at < g.tap.playbacks[1].started_at
    # Between the replies the player sent silence at the normal pace (no burst, no gap).
    between = slice(
        g.packet_at(decoded, g.tap.playbacks[0].done_at) + 2, g.packet_at(decoded, g.tap.playbacks[1].started_at)
    )
    idle = decoded.times[between]
    gaps = np.diff(idle)
    assert gaps.size > 5 and gaps.max() < 0.1 and np.median(gaps) > 0.01


async def test_two_guilds_speak_at_once_and_each_hears_only_its_own_reply(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    a, b = h.guild("a"), h.guild("b")
    await asyncio.gather(
        h.invoke("say", a.ctx, text="This server hears about apples and oranges."),
        h.invoke("say", b.ctx, text="Seven, eight, nine, ten, eleven, twelve."),
    )
    await asyncio.gather(a.wait_idle(), b.wait_idle())
    assert a.vc is not b.vc
    da, db = a.decoded(), b.decoded()
    assert a.match_reply(0, da).corr > 0.9
    assert b.match_reply(0, db).corr > 0.9
    # Neither recorder carries the other guild's audio.
    assert find(da, b.tap.audio(), 0, max_lag=len(da.pcm) - 24_000).corr < 0.5
    assert find(db, a.tap.audio(), 0, max_lag=len(db.pcm) - 24_000).corr < 0.5
    # Both were spoken concurrently, not one after the other.
    pa, pb = a.tap.playbacks[0], b.tap.playbacks[0]
    assert pa.started_at < pb.done_at and pb.started_at < pa.done_at


async def test_speak_plays_while_the_llm_is_still_writing(harness, espeak_pipeline, llm_server):
    from testing.llm_server import Script
    from tts_server import text_pieces

    h = await harness(espeak_pipeline)
    g = h.guild()
    text = "Once upon a time there was a bot. It spoke while it was still thinking. The end came much later."
    llm_server.queue(Script(text_pieces(text), delay_s=0.08))
    await h.invoke("speak", g.ctx, prompt="tell me a story")
    await g.wait_idle()
    request = llm_server.requests[0]
    playback = g.tap.playbacks[0]
    assert playback.started_at < request.finished_at  # heard before the LLM finished writing
    assert playback.underrun_frames == 0
    assert g.match_reply(0).corr > 0.9
    decoded = g.decoded()
    voice = np.flatnonzero(decoded.rms() > VOICE_RMS)
    assert decoded.times[voice[0]] < request.finished_at
