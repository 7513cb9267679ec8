"""storage: migrations on a real SQLite file, WAL mode, and the job queries — each query test on
SQLite and on a throwaway PostgreSQL server (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from storage.db import HEAD_REVISION, alembic_config, current_revision, downgrade, open_engine, upgrade
from storage.jobs import JobStore, NewImage
from storage.models import MAX_JOB_ID, Base, Image, Job, User


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        engine = open_engine(url(tmp_path / "data" / "pintor.db"))
    else:
        engine = open_engine(request.getfixturevalue("postgres_url"))
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine) -> JobStore:
    return JobStore(engine)


async def new_job(store: JobStore, user_id: int = 1, name: str = "ann", prompt: str = "a fox", **kw) -> Job:
    return await store.create_job(user_id=user_id, user_name=name, kind=kw.pop("kind", "imagine"),
                                  model="tiny-sd", prompt=prompt, request='{"x": 1}', **kw)


async def stored(store: JobStore, job_id: int) -> Job:
    """The job, which must be stored."""
    job = await store.get(job_id)
    assert job is not None, f"job {job_id} is not stored"
    return job


def images(tag: str, count: int = 4) -> list[NewImage]:
    return [NewImage(f"/data/jobs/{tag}/{i}.png", 64, 64, 100 + i, f"{tag}{i}".ljust(64, "0"))
            for i in range(1, count + 1)]


# -- the schema -------------------------------------------------------------------------------


async def test_migrations_create_the_tables_on_a_fresh_file(tmp_path: Path):
    path = tmp_path / "new" / "folder" / "pintor.db"  # the folder is created too
    engine = open_engine(url(path))
    assert (await current_revision(engine))[0] is None  # an empty database
    await upgrade(engine)
    assert path.is_file()
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"users", "jobs", "images", "alembic_version"} <= tables
        # the migrations build exactly what the models describe
        diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        assert diff == []
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    current, head = await current_revision(engine)
    assert current == head and head is not None
    await upgrade(engine)  # again: nothing to do, nothing breaks
    assert await current_revision(engine) == (head, head)
    async with engine.connect() as conn:  # what Alembic itself reads there
        assert await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision()) == head
    await engine.dispose()


def test_the_head_revision_written_in_storage_is_alembics_head():
    """`pintor health` compares with HEAD_REVISION instead of importing Alembic: a migration
    added without moving it would make every healthy database read as out of date."""
    assert HEAD_REVISION == ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_migration_0008_stores_pictures_by_key_and_back(database: str, tmp_path: Path,
                                                              request: pytest.FixtureRequest):
    """Rows of 0007 name pictures by absolute path; 0013 turns those inside the pictures
    folder into file-store keys (a "..", a file elsewhere and a missing grid stay as they were),
    and its downgrade turns the keys back into the same paths."""
    engine = open_engine(url(tmp_path / "old.db") if database == "sqlite" else request.getfixturevalue("postgres_url"))
    root = tmp_path / "data" / "images"
    await upgrade(engine, "0007")
    inside = [f"{root}/jobs/7/{n}.png" for n in (1, 2)]
    elsewhere = "/srv/old-pintor/jobs/7/3.png"
    odd = f"{root}/../images-other/jobs/7/4.png"  # beside the folder, not in it
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO users (id, name, created_at) VALUES (42, 'ann', CURRENT_TIMESTAMP)"))
        await conn.execute(text(
            "INSERT INTO jobs (id, user_id, kind, model, prompt, request, status, grid_path, created_at) VALUES "
            "(7, 42, 'imagine', 'tiny-sd', 'a fox', '{}', 'done', :grid, CURRENT_TIMESTAMP), "
            "(8, 42, 'imagine', 'tiny-sd', 'a fox', '{}', 'queued', NULL, CURRENT_TIMESTAMP)"),
            {"grid": f"{root}/jobs/7/grid.png"})
        for index, path in enumerate([*inside, elsewhere, odd], start=1):
            await conn.execute(text(
                "INSERT INTO images (job_id, \"index\", path, width, height, seed, sha256, flagged, created_at) "
                "VALUES (7, :index, :path, 64, 64, 1, :sha, false, CURRENT_TIMESTAMP)"),
                {"index": index, "path": path, "sha": "0" * 64})

    async def pictures() -> tuple[list[str | None], list[str]]:
        async with engine.connect() as conn:
            grids = (await conn.execute(text("SELECT grid_path FROM jobs ORDER BY id"))).scalars().all()
            paths = (await conn.execute(text('SELECT path FROM images ORDER BY "index"'))).scalars().all()
        return list(grids), list(paths)

    await upgrade(engine, pictures_root=root)
    assert await pictures() == (["jobs/7/grid.png", None], ["jobs/7/1.png", "jobs/7/2.png", elsewhere, odd])
    await downgrade(engine, "0007", pictures_root=root)
    assert await pictures() == ([f"{root}/jobs/7/grid.png", None], [*inside, elsewhere, odd])
    with pytest.raises(RuntimeError, match="pictures folder"):  # keys without their folder: refused
        await upgrade(engine, pictures_root=root)
        await downgrade(engine, "0007")
    await engine.dispose()


async def test_data_survives_reopening_the_file(tmp_path: Path):
    engine = open_engine(url(tmp_path / "pintor.db"))
    await upgrade(engine)
    job = await new_job(JobStore(engine))
    await engine.dispose()
    engine = open_engine(url(tmp_path / "pintor.db"))
    assert (await stored(JobStore(engine), job.id)).prompt == "a fox"
    await engine.dispose()


async def test_readers_do_not_wait_for_a_writer(tmp_path: Path):
    """WAL: another connection reads while a write transaction is open (and sees only committed rows)."""
    writer, reader = open_engine(url(tmp_path / "pintor.db")), open_engine(url(tmp_path / "pintor.db"))
    await upgrade(writer)
    await new_job(JobStore(writer), prompt="committed")
    async with writer.begin() as conn:
        await conn.execute(text("INSERT INTO users (id, name, created_at) VALUES (99, 'x', CURRENT_TIMESTAMP)"))
        async with reader.connect() as rconn:
            count = await asyncio.wait_for(
                rconn.scalar(select(func.count()).select_from(User.__table__)), timeout=5)
        assert count == 1  # ann only: the open transaction is not visible, and did not block
    await writer.dispose()
    await reader.dispose()


# -- JobStore ---------------------------------------------------------------------------------


async def test_create_and_get(store: JobStore):
    job = await new_job(store, guild_id=5, channel_id=6)
    assert job.id is not None and job.status == "queued"
    got = await stored(store, job.id)
    assert (got.user_id, got.kind, got.model, got.prompt, got.request) == (1, "imagine", "tiny-sd", "a fox", '{"x": 1}')
    assert (got.guild_id, got.channel_id, got.parent_id, got.parent_index) == (5, 6, None, None)
    assert got.images == [] and got.created_at is not None and got.started_at is None
    assert await store.get(12345) is None


@pytest.mark.parametrize("job_id", [0, -1, MAX_JOB_ID + 1, 10**15, 999_999_999_999_999_999])
async def test_an_id_no_job_can_have_finds_nothing_on_both_databases(store: JobStore, job_id: int):
    """A forged button names up to 18 digits; PostgreSQL refused those past its INTEGER's range
    (asyncpg: "value out of int32 range"), and the press ended in an unhandled error."""
    assert await store.get(job_id) is None


async def test_times_read_back_as_aware_utc(store: JobStore):
    """SQLite keeps no time zone: without care, times come back naive there (aware on PostgreSQL)."""
    before = datetime.now(UTC)
    job = await new_job(store)
    await store.mark_running(job.id)
    got = await stored(store, job.id)
    for value in (got.created_at, got.started_at):
        assert value is not None
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=5) <= value <= datetime.now(UTC)
    assert got.created_at == job.created_at
    # an aware time in another zone is stored as the same instant
    paris = timezone(timedelta(hours=1))
    assert await store.count_since(1, datetime.now(paris) + timedelta(minutes=1)) == 0
    assert await store.count_since(1, (before - timedelta(minutes=1)).astimezone(paris)) == 1


async def test_members_are_created_once_and_renamed(store: JobStore, engine):
    await new_job(store, user_id=7, name="bo")
    await new_job(store, user_id=7, name="bob")
    await new_job(store, user_id=7, name="")  # no name given: keep the one known
    async with engine.connect() as conn:
        rows = (await conn.execute(select(User.id, User.name).where(User.id == 7))).all()
    assert rows == [(7, "bob")]


async def test_children_refer_to_their_parent(store: JobStore):
    parent = await new_job(store)
    child = await new_job(store, kind="variation", parent_id=parent.id, parent_index=3)
    got = await stored(store, child.id)
    assert (got.kind, got.parent_id, got.parent_index) == ("variation", parent.id, 3)


async def test_complete_stores_images_numbered_one_to_four(store: JobStore):
    job = await new_job(store)
    await store.mark_running(job.id)
    await store.complete(job.id, images("a"), "/data/jobs/a/grid.png", ["cut: “x”", "second"])
    got = await stored(store, job.id)
    assert got.status == "done" and got.grid_path == "/data/jobs/a/grid.png"
    assert got.finished_at is not None and got.started_at is not None
    assert got.notices == "cut: “x”\nsecond"
    assert [i.index for i in got.images] == [1, 2, 3, 4]
    assert [(i.path, i.width, i.height, i.seed) for i in got.images] == [
        (f"/data/jobs/a/{n}.png", 64, 64, 100 + n) for n in range(1, 5)]
    assert got.images[0].sha256 == "a1".ljust(64, "0")


async def test_complete_twice_replaces_the_images(store: JobStore, engine):
    job = await new_job(store)
    await store.complete(job.id, images("a"), "/g1.png")
    await store.complete(job.id, images("b"), "/g2.png")  # run again after a crash
    got = await stored(store, job.id)
    assert [i.path for i in got.images] == [f"/data/jobs/b/{n}.png" for n in range(1, 5)]
    assert got.grid_path == "/g2.png" and got.notices is None
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Image.__table__)) == 4


async def test_an_upscale_has_one_image(store: JobStore):
    job = await new_job(store, kind="upscale")
    await store.complete(job.id, images("u", count=1), "/u/grid.png")
    assert [i.index for i in (await stored(store, job.id)).images] == [1]


async def test_status_changes(store: JobStore):
    job = await new_job(store)
    await store.mark_running(job.id)
    running = await stored(store, job.id)
    assert running.status == "running" and running.started_at is not None

    await store.mark_queued(job.id)  # interrupted by a stop: waits for the next start
    queued = await stored(store, job.id)
    assert queued.status == "queued" and queued.started_at is None

    await store.mark_failed(job.id, "The GPU ran out of memory.")
    failed = await stored(store, job.id)
    assert failed.status == "failed" and failed.error == "The GPU ran out of memory." and failed.finished_at

    other = await new_job(store)
    await store.mark_cancelled(other.id)
    cancelled = await stored(store, other.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None

    await store.set_message(other.id, 11, 22)
    assert ((await stored(store, other.id)).channel_id, (await stored(store, other.id)).message_id) == (11, 22)


async def test_unfinished_are_queued_and_running_jobs_oldest_first(store: JobStore):
    jobs = [await new_job(store, user_id=1 + i % 2, prompt=f"p{i}") for i in range(6)]
    await store.mark_running(jobs[1].id)
    await store.complete(jobs[2].id, images("c"), "/c.png")
    await store.mark_failed(jobs[3].id, "no")
    await store.mark_cancelled(jobs[4].id)
    unfinished = await store.unfinished()
    assert [j.id for j in unfinished] == [jobs[0].id, jobs[1].id, jobs[5].id]
    assert [j.status for j in unfinished] == ["queued", "running", "queued"]
    assert unfinished[1].request == '{"x": 1}'  # enough to run it again
