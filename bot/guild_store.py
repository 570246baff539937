"""Per-guild settings that survive a restart: voice, pitch shift, home voice channel (SQLite).

One SQLite file (``[bot] settings_db``), used through ``aiosqlite`` (its own thread: no
disk access on the event loop). The schema is versioned with SQLite's ``user_version``
pragma: at start the store creates the schema in a new file and applies every migration
in :data:`MIGRATIONS` that an older file lacks, in order, in one transaction each.

A file that SQLite cannot read (not a database, or damaged pages that
``PRAGMA quick_check`` finds) is never silently reset: it is named in an ERROR log line
and moved aside (renamed ``NAME.corrupt-YYYYmmdd-HHMMSS``, with its ``-wal``/``-journal``
files), and a new, empty file takes its place, so the bot still starts and the old data
can still be examined or recovered. A file written by a newer version of the bot (a
``user_version`` above :data:`SCHEMA_VERSION`) stops the start with :class:`GuildStoreError`
instead: it is not ours to change.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

log = logging.getLogger(__name__)

#: SQL of each schema version, in order: ``MIGRATIONS[n]`` takes a file from version n to n + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        voice TEXT,
        pitch_shift REAL NOT NULL DEFAULT 0.0,
        home_channel_id INTEGER
    );
    """,
)
#: The schema version this code reads and writes.
SCHEMA_VERSION = len(MIGRATIONS)


class GuildStoreError(RuntimeError):
    """The settings database cannot be used as it is (the message names the file and why)."""


@dataclass(frozen=True)
class GuildSettings:
    """What is kept for one guild.

    Attributes:
        voice: the voice name (``None``: the default voice).
        pitch_shift: semitones.
        home_channel_id: the voice channel the bot was last asked into (``None``: none;
            the bot rejoins it at start).
    """

    voice: str | None
    pitch_shift: float
    home_channel_id: int | None


class GuildStore:
    """The settings database. Open with :meth:`open`, close with :meth:`close`.

    Args:
        db: an open connection whose schema is current.
        path: the file.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path) -> GuildStore:
        """Open (creating or migrating) the database at ``path``; a corrupt file is moved aside.

        Raises:
            GuildStoreError: the file was written by a newer schema, or cannot be opened or
                created at all (a directory that does not exist, no permission).
        """
        path = Path(path)
        try:
            return await cls._open_checked(path)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise GuildStoreError(f"{path}: {exc}") from None
            aside = _move_aside(path)
            log.error(
                "guild settings database %s is corrupt (%s): moved aside to %s; starting with an empty one",
                path,
                exc,
                aside,
            )
        try:
            return await cls._open_checked(path)
        except sqlite3.Error as exc:
            raise GuildStoreError(f"{path}: {exc}") from None

    @classmethod
    async def _open_checked(cls, path: Path) -> GuildStore:
        try:
            db = await aiosqlite.connect(path)
        except sqlite3.OperationalError as exc:
            raise GuildStoreError(f"{path}: cannot open the guild settings database: {exc}") from None
        try:
            async with db.execute("PRAGMA quick_check") as cursor:
                verdict = [row[0] for row in await cursor.fetchall()]
            if verdict != ["ok"]:
                raise sqlite3.DatabaseError(f"quick_check: {'; '.join(map(str, verdict[:3]))}")
            await _migrate(db, path)
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    async def load_all(self) -> dict[int, GuildSettings]:
        """Every guild's stored settings, by guild id."""
        async with self._db.execute("SELECT guild_id, voice, pitch_shift, home_channel_id FROM guild_settings") as cur:
            rows = await cur.fetchall()
        return {int(g): GuildSettings(v, float(p), None if h is None else int(h)) for g, v, p, h in rows}

    async def save(self, guild_id: int, settings: GuildSettings) -> None:
        """Store ``settings`` for ``guild_id`` (replacing what was there), durably."""
        await self._db.execute(
            "INSERT INTO guild_settings (guild_id, voice, pitch_shift, home_channel_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET voice = excluded.voice, pitch_shift = excluded.pitch_shift, "
            "home_channel_id = excluded.home_channel_id",
            (guild_id, settings.voice, settings.pitch_shift, settings.home_channel_id),
        )
        await self._db.commit()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._db.close()


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise GuildStoreError(
            f"{path}: guild settings schema version {version} is newer than this bot's ({SCHEMA_VERSION}); "
            "upgrade the bot or point [bot] settings_db at another file"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        # executescript commits first; the migration and its version bump then commit together.
        await db.executescript(f"BEGIN; {MIGRATIONS[target - 1]} PRAGMA user_version = {target}; COMMIT;")
        log.info("guild settings database %s: schema version %d", path, target)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """A damaged or foreign file, as opposed to a locked, read-only or missing one."""
    return not isinstance(exc, sqlite3.OperationalError)


def _move_aside(path: Path) -> Path:
    """Rename ``path`` (and its ``-wal``/``-journal``/``-shm`` files) to ``NAME.corrupt-STAMP``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    path.rename(aside)
    for suffix in ("-wal", "-journal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(aside.with_name(aside.name + suffix))
    return aside
