"""PostgreSQL through the same SQLAlchemy code and Alembic migrations as SQLite, on a throwaway
server (tests/postgres_server.py): the schema the migrations build, Discord's 64-bit ids, the
result_key index between two writers, `pintor db upgrade`, and `pintor db copy` from an
existing SQLite installation (ids kept, sequences advanced)."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.copy import SourceAtOtherRevision, SourceRefused, TargetNotEmpty, copy_database, copy_urls, tables
from storage.db import current_revision, open_engine, upgrade
from storage.jobs import DuplicateJob, JobStore, NewImage
from storage.models import Base, JobStatus
from storage.settings import PreferencesAndRulesStore
from tests.conftest import ON_POSTGRESQL_TOO, chosen_for_postgresql

ROOT = Path(__file__).resolve().parents[1]
# Discord snowflakes are 64-bit: a member id of today (~1.2e18) and the largest signed one
DISCORD_ID = 1_234_567_890_123_456_789
LARGEST_ID = 2**63 - 1


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = open_engine(postgres_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


async def test_the_migrations_build_the_models_schema_on_postgresql(postgres_url: str):
    engine = open_engine(postgres_url)
    try:
        assert (await current_revision(engine))[0] is None
        await upgrade(engine)
        current, head = await current_revision(engine)
        assert current == head
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
            assert diff == []
            columns = await conn.run_sync(lambda c: {
                (table, column["name"]): str(column["type"]) for table in ("users", "jobs", "images",
                                                                            "member_settings", "guild_settings")
                for column in inspect(c).get_columns(table)})
        # Discord ids (and seeds) are 64-bit columns; times keep their zone
        for name in [("users", "id"), ("jobs", "user_id"), ("jobs", "guild_id"), ("jobs", "channel_id"),
                     ("jobs", "message_id"), ("images", "seed"), ("member_settings", "user_id"),
                     ("guild_settings", "guild_id")]:
            assert columns[name] == "BIGINT", name
        assert columns[("jobs", "created_at")] == "TIMESTAMP"  # reflected without the zone flag…
        async with engine.connect() as conn:
            timezones = await conn.run_sync(lambda c: {column["name"]: getattr(column["type"], "timezone", None)
                                                       for column in inspect(c).get_columns("jobs")
                                                       if column["name"].endswith("_at")})
        assert timezones == {"created_at": True, "started_at": True, "finished_at": True}  # …but with it
        await upgrade(engine)  # again: nothing to do
    finally:
        await engine.dispose()


async def test_discord_ids_and_times_round_trip(pg: AsyncEngine):
    store, settings = JobStore(pg), PreferencesAndRulesStore(pg)
    job = await store.create_job(user_id=DISCORD_ID, user_name="ann", kind="imagine", model="tiny-sd",
                                 prompt="a fox", request="{}", guild_id=LARGEST_ID, channel_id=LARGEST_ID - 1)
    await store.set_message(job.id, LARGEST_ID - 1, LARGEST_ID - 2)
    await store.complete(job.id, [NewImage("/x/1.png", 64, 64, 2**32 - 1, "a" * 64)], "/x/grid.png")
    got = await store.get(job.id)
    assert got is not None
    assert (got.user_id, got.guild_id, got.channel_id, got.message_id) == (
        DISCORD_ID, LARGEST_ID, LARGEST_ID - 1, LARGEST_ID - 2)
    assert got.images[0].seed == 2**32 - 1 and got.status == JobStatus.DONE
    assert got.finished_at is not None and got.finished_at.utcoffset() == timedelta(0)
    rules = await settings.update_guild(LARGEST_ID, max_queued_per_member=None, daily_quota=3)
    assert (rules.guild_id, rules.max_queued_per_member, rules.daily_quota) == (LARGEST_ID, None, 3)
    preferences = await settings.update_member(DISCORD_ID, "ann", aspect="16:9", private=True)
    assert (preferences.user_id, preferences.aspect, preferences.private) == (DISCORD_ID, "16:9", True)
    assert await store.count_since(DISCORD_ID, datetime.now(UTC) - timedelta(minutes=1)) == 1


async def test_one_result_key_from_two_writers_at_once(pg: AsyncEngine, postgres_url: str):
    """Two processes (two engines, two connection pools) store the same upscale at the same
    moment: PostgreSQL's unique index lets one in, the other hears DuplicateJob with that job."""
    other = open_engine(postgres_url)
    try:
        stores = [JobStore(pg), JobStore(other)] * 4

        async def upscale(store: JobStore) -> int | str:
            try:
                job = await store.create_job(user_id=7, user_name="bo", kind="upscale", model="tiny-upscaler",
                                             prompt="a fox", request="{}", result_key="upscale:7:1:2")
                return job.id
            except DuplicateJob as duplicate:
                return f"duplicate of {duplicate.job.id}"

        outcomes = await asyncio.gather(*(upscale(store) for store in stores))
        [stored] = [o for o in outcomes if isinstance(o, int)]
        assert sorted(o for o in outcomes if isinstance(o, str)) == [f"duplicate of {stored}"] * 7
        # a failed job gives its key back
        await JobStore(pg).mark_failed(stored, "out of memory")
        again = await JobStore(other).create_job(user_id=7, user_name="bo", kind="upscale", model="tiny-upscaler",
                                                 prompt="a fox", request="{}", result_key="upscale:7:1:2")
        assert again.id > stored
    finally:
        await other.dispose()


def pintor(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DATABASE_URL": database_url, "PINTOR_DATA_DIR": str(cwd / "data"),
                        "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=240, check=False)


def test_pintor_db_upgrade_doctor_and_health_on_postgresql(postgres_url: str, tmp_path: Path):
    # a password in the URL (the throwaway server trusts loopback and ignores it) is never shown
    url = postgres_url.replace("postgres@", "postgres:hunter2@")
    done = pintor("db", "upgrade", database_url=url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "database at revision" in done.stdout
    (tmp_path / "data").mkdir()
    health = pintor("health", database_url=url, cwd=tmp_path)
    assert health.returncode == 0 and health.stdout.startswith("healthy"), health.stdout + health.stderr
    doctor = pintor("doctor", database_url=url, cwd=tmp_path)
    assert "postgresql+asyncpg://postgres:***@127.0.0.1" in doctor.stdout and " at revision " in doctor.stdout
    assert "hunter2" not in done.stdout + done.stderr + health.stdout + doctor.stdout + doctor.stderr
    # a server that is not there: unhealthy, said without the password
    gone = url.replace(f":{make_url(url).port}/", f":{_closed_port()}/")
    down = pintor("health", database_url=gone, cwd=tmp_path)
    assert down.returncode == 1 and down.stdout.startswith("unhealthy"), down.stdout + down.stderr
    assert "hunter2" not in down.stdout + down.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket is


async def an_installation(engine: AsyncEngine) -> dict[str, int]:
    """A SQLite installation as months of use leave it: members with Discord ids, jobs of every
    kind and status with their images, a U of a grid, an upscale holding its result_key, gaps
    in the ids (a forgotten member), member defaults and server rules."""
    store, settings = JobStore(engine), PreferencesAndRulesStore(engine)
    ids: dict[str, int] = {}
    grid = await store.create_job(user_id=DISCORD_ID, user_name="ann", kind="imagine", model="tiny-sd",
                                  prompt="a fox --ar 3:2", request='{"seed": 7}', guild_id=LARGEST_ID,
                                  channel_id=DISCORD_ID + 1, notices="Ignored “--tile”.")
    await store.complete(grid.id, [NewImage(f"/data/images/jobs/{grid.id}/{i}.png", 96, 64, 7 + i, f"{i}" * 64)
                                   for i in range(1, 5)], f"/data/images/jobs/{grid.id}/grid.png")
    await store.set_message(grid.id, DISCORD_ID + 1, DISCORD_ID + 2)
    ids["grid"] = grid.id
    gone = await store.create_job(user_id=99, user_name="gone", kind="imagine", model="tiny-sd", prompt="x",
                                  request="{}")
    upscale = await store.create_job(user_id=DISCORD_ID, user_name="ann", kind="upscale", model="tiny-upscaler",
                                     prompt="a fox", request="{}", parent_id=grid.id, parent_index=2,
                                     result_key=f"upscale:{DISCORD_ID}:{grid.id}:2", private=True)
    await store.complete(upscale.id, [NewImage("/u/1.png", 384, 256, 9, "f" * 64, flagged=True)], "/u/1.png")
    ids["upscale"] = upscale.id
    await store.forget_user(99)  # a hole in the ids: the copy keeps them, it does not renumber
    failed = await store.create_job(user_id=5, user_name="bo", kind="blend", model="tiny-kandinsky", prompt="",
                                    request="{}")
    await store.mark_failed(failed.id, "The picture could not be read.")
    queued = await store.create_job(user_id=5, user_name="bo", kind="imagine", model="tiny-sd", prompt="later",
                                    request="{}")
    ids["queued"] = queued.id
    assert gone.id < upscale.id
    await settings.update_member(DISCORD_ID, "ann", aspect="16:9", quality=0.5, append="--no text")
    await settings.update_guild(LARGEST_ID, allowed_models="tiny-sd,tiny-sdxl", daily_quota=None, paused=True)
    return ids


async def all_rows(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    async with engine.connect() as conn:
        return {table.name: [dict(row._mapping) for row in await conn.execute(
            select(table).order_by(*table.primary_key.columns))] for table in tables()}


async def test_db_copy_moves_a_sqlite_installation_to_postgresql(tmp_path: Path, postgres_url: str):
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'pintor.db'}"
    source = open_engine(sqlite_url)
    await upgrade(source)
    ids = await an_installation(source)
    before = await all_rows(source)
    await source.dispose()

    done = await asyncio.to_thread(pintor, "db", "copy", sqlite_url, postgres_url, database_url="", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "jobs             4 rows" in done.stdout and "images           5 rows" in done.stdout

    target, source = open_engine(postgres_url), open_engine(sqlite_url)
    try:
        # every row of every table, ids, Discord ids, times (to the microsecond), flags and texts
        assert await all_rows(target) == before
        assert await all_rows(source) == before  # the source was only read
        # the sequences moved past the copied ids: the next job and image do not collide
        store = JobStore(target)
        new = await store.create_job(user_id=5, user_name="bo", kind="imagine", model="tiny-sd", prompt="next",
                                     request="{}")
        assert new.id == max(row["id"] for row in before["jobs"]) + 1
        await store.complete(new.id, [NewImage("/n/1.png", 64, 64, 1, "0" * 64)], "/n/grid.png")
        got = await store.get(new.id)
        assert got is not None and got.images[0].id == max(row["id"] for row in before["images"]) + 1
        # what the bot reads works on the copy: the unfinished job, the U's parent, the held key
        assert [job.id for job in await store.unfinished()] == [ids["queued"]]
        upscale = await store.get(ids["upscale"])
        assert upscale is not None and upscale.parent_id == ids["grid"] and upscale.private
        with pytest.raises(DuplicateJob):
            await store.create_job(user_id=DISCORD_ID, user_name="ann", kind="upscale", model="tiny-upscaler",
                                   prompt="a fox", request="{}", result_key=f"upscale:{DISCORD_ID}:{ids['grid']}:2")
        # a second copy into the now-used database is refused and changes nothing
        after = await all_rows(target)
        with pytest.raises(TargetNotEmpty, match="not empty"):
            await copy_database(source, target)
        assert await all_rows(target) == after
    finally:
        await target.dispose()
        await source.dispose()
    again = await asyncio.to_thread(pintor, "db", "copy", sqlite_url, postgres_url, database_url="", cwd=tmp_path)
    assert again.returncode == 1 and "not empty" in again.stderr


async def test_db_copy_back_to_sqlite_gives_the_same_rows(tmp_path: Path, pg: AsyncEngine):
    """The way back (PostgreSQL to a new SQLite file) keeps everything too; the same database
    twice is refused."""
    await an_installation(pg)
    before = await all_rows(pg)
    target = open_engine(f"sqlite+aiosqlite:///{tmp_path / 'back.db'}")
    try:
        report = await copy_database(pg, target)
        assert report.rows == {name: len(rows) for name, rows in before.items()}
        assert await all_rows(target) == before
        with pytest.raises(ValueError, match="same database"):
            await copy_database(target, target)
    finally:
        await target.dispose()


PREVIOUS = "0012"  # the revision before this version's newest (0013)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def sqlite_installation(path: Path, revision: str = "head") -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """A SQLite installation at `revision`: (its URL, its rows); the engine closed again."""
    url = f"sqlite+aiosqlite:///{path}"
    engine = open_engine(url)
    try:
        await upgrade(engine, revision)
        await an_installation(engine)
        return url, await all_rows(engine)
    finally:
        await engine.dispose()


async def test_db_copy_of_a_sqlite_file_at_the_previous_revision_leaves_it_as_it_was(tmp_path: Path, monkeypatch):
    """issue 26: `pintor db copy` migrated its source (0012 → 0013), so the version that wrote it
    could no longer open it. Now copied through a migrated temporary copy: the file keeps its
    bytes and its revision, the target has every row at the newest revision."""
    url, rows = await sqlite_installation(tmp_path / "old.db", PREVIOUS)
    before = digest(tmp_path / "old.db")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    target_url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    report = await copy_urls(url, target_url)
    assert digest(tmp_path / "old.db") == before
    source, target = open_engine(url), open_engine(target_url)
    try:
        assert (await current_revision(source))[0] == PREVIOUS
        assert report.revision == (await current_revision(target))[1] == (await current_revision(target))[0]
        assert await all_rows(target) == rows  # 0013 without a pictures folder keeps the paths as they are
    finally:
        await source.dispose()
        await target.dispose()
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary copy is gone


async def test_db_copy_from_postgresql_at_the_previous_revision_is_refused_and_changes_nothing(
        tmp_path: Path, postgres_url: str):
    source = open_engine(postgres_url)
    await upgrade(source, PREVIOUS)
    await an_installation(source)
    rows = await all_rows(source)
    target_path = tmp_path / "new.db"
    try:
        with pytest.raises(SourceAtOtherRevision, match=f"at revision {PREVIOUS}, older than this version's "
                                                        ".*run `pintor db upgrade` on it first"):
            await copy_urls(postgres_url, f"sqlite+aiosqlite:///{target_path}")
        assert (await current_revision(source))[0] == PREVIOUS and await all_rows(source) == rows
    finally:
        await source.dispose()
    target = open_engine(f"sqlite+aiosqlite:///{target_path}")
    try:
        assert (await current_revision(target))[0] is None  # the target was not migrated either
    finally:
        await target.dispose()


async def test_db_copy_from_a_revision_this_version_does_not_know_is_refused(tmp_path: Path):
    url, _ = await sqlite_installation(tmp_path / "later.db")
    with sqlite3.connect(tmp_path / "later.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")  # written by a later version
    db.close()
    before = digest(tmp_path / "later.db")
    with pytest.raises(SourceAtOtherRevision, match="revision 0099, which this version of Pintor does not know"):
        await copy_urls(url, f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    assert digest(tmp_path / "later.db") == before


@pytest.mark.parametrize("make", ["empty file", "other tables"])
async def test_db_copy_from_a_file_that_is_no_pintor_database_is_refused(tmp_path: Path, make: str):
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as db:
        if make == "other tables":
            db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    db.close()
    before = digest(path)
    with pytest.raises(SourceRefused, match="is not a Pintor database"):
        await copy_urls(f"sqlite+aiosqlite:///{path}", f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    assert digest(path) == before


async def test_db_copy_of_one_sqlite_file_under_two_spellings_is_refused(tmp_path: Path, monkeypatch):
    url, _ = await sqlite_installation(tmp_path / "pintor.db")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="same database"):
        await copy_urls(url, "sqlite+aiosqlite:///./pintor.db")


def test_pintor_db_copy_from_a_missing_sqlite_file_creates_nothing(tmp_path: Path):
    """issue 26: from a path that did not exist, `pintor db copy` created an empty database,
    copied 0 rows and said to point DATABASE_URL at the result (exit 0)."""
    for source in (tmp_path / "data" / "pintor.db", tmp_path / "typo.db"):
        target = tmp_path / "copy" / "new.db"
        done = pintor("db", "copy", f"sqlite+aiosqlite:///{source}", f"sqlite+aiosqlite:///{target}",
                      database_url="", cwd=tmp_path)
        assert done.returncode == 1 and done.stdout == ""
        assert f"there is no SQLite database at {source}: nothing copied, nothing created" in done.stderr
        assert not source.exists() and not target.exists() and not (tmp_path / "copy").exists()
    assert not (tmp_path / "data").exists()


def test_every_discord_test_chosen_for_postgresql_is_still_a_test():
    """tests/discord_on_postgresql.txt names the Discord tests CI runs again on PostgreSQL: a
    name that no longer matches a test (renamed, removed) would drop out silently."""
    root = ON_POSTGRESQL_TOO.parent.parent
    chosen = chosen_for_postgresql()
    assert len(chosen) >= 20
    missing = []
    for nodeid in chosen:
        path, name = nodeid.split("::")
        tree = ast.parse((root / path).read_text(encoding="utf-8"))
        if not any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
                   for node in tree.body):
            missing.append(nodeid)
    assert missing == []
