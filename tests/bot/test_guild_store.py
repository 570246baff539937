"""Guild settings survive a restart (SQLite); a corrupt database is named and moved aside, never reset."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from bot.guild_store import SCHEMA_VERSION, GuildSettings, GuildStore, GuildStoreError
from bot.session import SessionManager
from tests.bot.test_commands import PitchRecorder, voiced_pipeline  # noqa: F401  (fixture)


async def test_voice_pitch_and_home_channel_are_restored_after_a_restart(harness, voiced_pipeline, tmp_path):  # noqa: F811
    path = tmp_path / "guilds.sqlite3"
    h = await harness(voiced_pipeline, tts={"voice": "alto", "pitch_shift": 2.0})
    h.sessions.store = await GuildStore.open(path)
    a, b = h.guild("a"), h.guild("b")
    await h.invoke("voice", a.ctx, name="bass")
    await h.invoke("pitch", a.ctx, semitones=-5.0)
    await h.invoke("join", a.ctx)
    await h.invoke("pitch", b.ctx, semitones=3.0)
    await h.invoke("join", b.ctx)
    await h.invoke("leave", b.ctx)  # asked to leave: no home channel to rejoin
    assert a.vc.is_connected()
    # The bot stops: every session closes (voice left), the database is closed.
    await h.sessions.aclose()
    await h.sessions.store.close()
    assert not a.vc.is_connected()

    # It starts again: a new session manager over the same file.
    store = await GuildStore.open(path)
    try:
        sessions = SessionManager(h.services, store)
        assert await sessions.restore() == 2
        channels = {a.voice.id: a.voice, b.voice.id: b.voice}
        assert await sessions.rejoin_homes(channels.get) == 1
        restored_a, restored_b = sessions.get(a.guild.id), sessions.get(b.guild.id)
        assert (restored_a.voice, restored_a.pitch_shift, restored_a.home_channel_id) == ("bass", -5.0, a.voice.id)
        assert (restored_b.voice, restored_b.pitch_shift, restored_b.home_channel_id) == ("alto", 3.0, None)
        assert len(a.voice.voice_clients) == 2 and a.voice.voice_clients[-1].is_connected()
        assert len(b.voice.voice_clients) == 1  # not rejoined
        # The restored settings are the ones spoken with.
        PitchRecorder.seen.clear()
        restored_a.submit(_say(a.ctx, "Spoken low by the bass again."))
        async with asyncio.timeout(30):
            while restored_a.busy or not PitchRecorder.seen:
                await asyncio.sleep(0.02)
        assert set(PitchRecorder.seen) == {("bass", -5.0)}
        # A guild never seen before gets the configured defaults.
        fresh = sessions.get(12345)
        assert (fresh.voice, fresh.pitch_shift, fresh.home_channel_id) == ("alto", 2.0, None)
        await sessions.aclose()
    finally:
        await store.close()


def _say(ctx, text: str):
    from bot.session import Job

    return Job(kind="say", text=text, author="Ada", channel_id=ctx.channel.id, send=ctx.send)


async def test_a_home_channel_that_is_gone_is_forgotten(tmp_path, espeak_pipeline, harness):
    path = tmp_path / "guilds.sqlite3"
    store = await GuildStore.open(path)
    await store.save(7, GuildSettings(None, 0.0, 99))
    h = await harness(espeak_pipeline)
    sessions = SessionManager(h.services, store)
    await sessions.restore()
    assert await sessions.rejoin_homes(lambda channel_id: None) == 0
    assert (await store.load_all())[7].home_channel_id is None
    await store.close()


async def test_a_corrupt_database_is_named_moved_aside_and_replaced(tmp_path, caplog):
    path = tmp_path / "guilds.sqlite3"
    store = await GuildStore.open(path)
    await store.save(1, GuildSettings("bass", -5.0, 42))
    await store.close()
    original = path.read_bytes()
    # Damage it: keep SQLite's header, overwrite the pages that follow with garbage.
    damaged = original[:100] + bytes((i * 37 + 11) % 256 for i in range(len(original) - 100))
    path.write_bytes(damaged)
    with caplog.at_level(logging.ERROR, logger="bot.guild_store"):
        store = await GuildStore.open(path)
    try:
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("guilds.sqlite3.corrupt-")]
        assert len(aside) == 1 and aside[0].read_bytes() == damaged  # moved, not altered
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(path) in errors[0] and str(aside[0]) in errors[0]
        assert await store.load_all() == {}  # a new, working database took its place
        await store.save(2, GuildSettings(None, 1.0, None))
        assert (await store.load_all())[2] == GuildSettings(None, 1.0, None)
    finally:
        await store.close()


async def test_a_file_that_is_not_a_database_is_moved_aside_too(tmp_path, caplog):
    path = tmp_path / "guilds.sqlite3"
    path.write_text("these are not the settings you are looking for\n" * 20)
    with caplog.at_level(logging.ERROR, logger="bot.guild_store"):
        store = await GuildStore.open(path)
    await store.close()
    assert any(p.name.startswith("guilds.sqlite3.corrupt-") for p in tmp_path.iterdir())
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


async def test_an_old_schema_is_migrated_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "guilds.sqlite3"
    with sqlite3.connect(path) as db:  # an empty file of schema version 0
        db.execute("CREATE TABLE unrelated (x)")
    store = await GuildStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT count(*) FROM guild_settings").fetchone()[0] == 0
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(GuildStoreError, match="newer"):
        await GuildStore.open(path)
    assert path.exists() and not any(p.name.startswith("guilds.sqlite3.corrupt-") for p in tmp_path.iterdir())
