"""storage.settings: members' preferences and servers' rules are kept a while after they are
read, so that a command is acknowledged without waiting on the database — and never shown
stale after this process changed them, nor longer than `max_age_s` after another process did.
On a real SQLite file; the reads are counted with SQLAlchemy's own statement event."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import event

from storage.db import open_engine, upgrade
from storage.jobs import JobStore
from storage.settings import PreferencesAndRulesStore


@pytest.fixture
async def engine(tmp_path: Path):
    engine = open_engine(f"sqlite+aiosqlite:///{tmp_path / 'pintor.db'}")
    await upgrade(engine)
    yield engine
    await engine.dispose()


def count_reads(engine, table: str) -> list[str]:
    """Every SELECT of `table` the engine runs from now on."""
    reads: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _seen(_conn, _cursor, statement: str, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and table in statement:
            reads.append(statement)

    return reads


async def test_a_burst_of_reads_reads_the_database_once_and_a_write_is_seen_at_once(engine):
    store = PreferencesAndRulesStore(engine, max_age_s=60)
    reads = count_reads(engine, "member_settings")
    burst = await asyncio.gather(*(store.member(7) for _ in range(20)))
    assert len(reads) == 1 and all(p.private is False for p in burst)
    assert (await store.member(7)).private is False and len(reads) == 1  # kept
    await store.update_member(7, "ann", private=True)
    assert (await store.member(7)).private is True  # this process's write: seen at once
    rules = count_reads(engine, "guild_settings")
    await asyncio.gather(*(store.guild(5) for _ in range(10)))
    assert len(rules) == 1
    await store.update_guild(5, max_queued_per_member=2)
    written = len(rules)  # the write reads the row too
    assert (await store.guild(5)).max_queued_per_member == 2 and len(rules) == written + 1
    assert (await store.guild(5)).max_queued_per_member == 2 and len(rules) == written + 1
    assert (await store.guild(None)).guild_id == 0  # DMs: the defaults


async def test_another_process_s_change_is_seen_after_max_age(engine):
    mine, theirs = PreferencesAndRulesStore(engine, max_age_s=0.3), PreferencesAndRulesStore(engine)
    assert (await mine.member(8)).aspect is None
    await theirs.update_member(8, "bo", aspect="3:2")
    assert (await mine.member(8)).aspect is None  # kept: at most max_age_s old
    await asyncio.sleep(0.35)
    assert (await mine.member(8)).aspect == "3:2"


async def test_a_read_that_began_before_a_write_is_not_kept(engine):
    store = PreferencesAndRulesStore(engine, max_age_s=60)
    loop = asyncio.get_running_loop()
    selected, go_on = asyncio.Event(), threading.Event()
    held: list[str] = []

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _hold(_conn, _cursor, statement: str, *_args) -> None:  # in the driver's thread
        if statement.lstrip().upper().startswith("SELECT") and "member_settings" in statement \
                and not held:
            held.append(statement)  # the first read only (the write reads the row too)
            loop.call_soon_threadsafe(selected.set)
            go_on.wait(10)  # the row as it was is read; the write happens meanwhile

    reading = asyncio.create_task(store.member(9))
    await selected.wait()
    await asyncio.wait_for(store.update_member(9, "cy", remix=True), 10)  # another connection
    go_on.set()
    assert (await reading).remix is False  # read before the write
    assert (await store.member(9)).remix is True  # and not kept


async def test_forget_drops_what_is_kept(engine):
    store, jobs = PreferencesAndRulesStore(engine, max_age_s=60), JobStore(engine)
    await store.update_member(10, "di", stylize=700)
    assert (await store.member(10)).stylize == 700
    await jobs.forget_user(10)
    store.forget_member(10)
    assert (await store.member(10)).stylize is None  # the default


async def test_rows_past_their_age_are_let_go_when_many_are_kept(engine):
    store = PreferencesAndRulesStore(engine, max_age_s=0.2)
    store._members.max_kept = 5
    for member in range(5):
        await store.member(member)
    await asyncio.sleep(0.25)
    await store.member(99)  # the sixth: the five past their age go
    assert list(store._members._rows) == [99]
