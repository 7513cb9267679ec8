"""Moving an installation's data to another database (`pintor db copy FROM TO`): e.g. from the
default SQLite file to PostgreSQL when one machine is no longer enough.

Every table the models describe is copied row by row with its ids kept (members' Discord ids,
job ids that buttons and /show name, image ids), in an order that satisfies the foreign keys;
then PostgreSQL's id sequences are moved past the copied ids, so the next job gets the next id
instead of colliding with a copied one. Picture files are not touched: rows keep their paths
(PINTOR_DATA_DIR stays where it is, or is moved with its paths unchanged).
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Table, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import alembic_config, current_revision, missing_sqlite_file, open_engine, open_read_only, upgrade
from storage.models import Base

BATCH_ROWS = 1000  # rows read and written at a time: bounded memory for large histories


class TargetNotEmpty(Exception):
    """The target database already holds rows: copying would mix two installations."""


class SourceRefused(Exception):
    """The source cannot be copied without changing it or inventing it: a SQLite file that
    does not exist, a database without Pintor's tables, or one at a revision this version does
    not know (a later version's) or, on PostgreSQL, an earlier one. str(err) says which and
    what to do."""


class SourceAtOtherRevision(SourceRefused):
    """The source is at `revision`, not this version's `head`."""

    def __init__(self, revision: str, head: str, message: str):
        super().__init__(message)
        self.revision, self.head = revision, head


@dataclass(frozen=True)
class CopyReport:
    """What `copy_database` copied: rows per table (in copy order) and the revision both are at."""

    rows: dict[str, int]
    revision: str


def tables() -> list[Table]:
    """The tables to copy, parents before children (users before jobs, jobs before images)."""
    return list(Base.metadata.sorted_tables)


async def _row_counts(connection: AsyncConnection) -> dict[str, int]:
    return {table.name: int(await connection.scalar(select(func.count()).select_from(table)) or 0)
            for table in tables()}


async def copy_database(source: AsyncEngine, target: AsyncEngine) -> CopyReport:
    """Copy every row of `source`, which must be at this version's newest revision, into the
    empty database `target`, ids kept.

    The source is only read: never migrated (a migrated file could no longer be opened by the
    version that wrote it; `copy_urls` copies an older SQLite file through a migrated
    temporary copy). The target is migrated to the newest revision (as `pintor run` would do),
    so their tables are the same. The copy is one transaction on the target: it is all there,
    or (on any error) nothing is. On PostgreSQL each table's id sequence then continues after
    the highest copied id.

    Returns a CopyReport. Raises SourceRefused (SourceAtOtherRevision for a revision other than
    the newest) before the target is touched, TargetNotEmpty when the target holds any row in
    Pintor's tables, ValueError when both are the same database, and what SQLAlchemy raises
    when a database cannot be reached.
    """
    if source.url.render_as_string(hide_password=False) == target.url.render_as_string(hide_password=False):
        raise ValueError("the source and the target are the same database")
    await _check_source(source)
    await upgrade(target)
    revision, _ = await current_revision(target)
    assert revision is not None  # just migrated
    async with target.connect() as connection:
        filled = {name: count for name, count in (await _row_counts(connection)).items() if count}
    if filled:
        listed = ", ".join(f"{name}: {count} rows" for name, count in filled.items())
        raise TargetNotEmpty(f"the target database is not empty ({listed}); copy into a new, empty database")

    copied: dict[str, int] = {}
    async with source.connect() as reading, target.begin() as writing:
        for table in tables():
            copied[table.name] = 0
            rows = await reading.stream(select(table).order_by(*table.primary_key.columns))
            async for batch in rows.partitions(BATCH_ROWS):
                await writing.execute(table.insert(), [dict(row._mapping) for row in batch])
                copied[table.name] += len(batch)
        if writing.dialect.name == "postgresql":
            await _advance_sequences(writing)
    return CopyReport(copied, revision)


async def _check_source(source: AsyncEngine) -> None:
    """Raise SourceRefused unless `source` is a Pintor database at this version's revision."""
    revision, head = await current_revision(source)
    shown = source.url.render_as_string(hide_password=True)
    if revision is None:
        raise SourceRefused(f"{shown} is not a Pintor database (it has no migration revision): nothing to copy")
    if revision == head:
        return
    try:
        known = ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        known = False
    if not known:
        raise SourceAtOtherRevision(revision, head, (
            f"{shown} is at revision {revision}, which this version of Pintor does not know (a later "
            f"version wrote it; this one is at {head}): copy it with that version"))
    raise SourceAtOtherRevision(revision, head, (
        f"{shown} is at revision {revision}, older than this version's {head}: run `pintor db upgrade` "
        f"on it first (DATABASE_URL={shown}), or copy it with the version that wrote it"))


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


async def copy_urls(source_url: str, target_url: str) -> CopyReport:
    """`pintor db copy FROM TO`: copy_database from the database at `source_url` into the one
    at `target_url`, the source opened read-only (storage.db.open_read_only).

    A SQLite source at an older revision is copied through a temporary copy of the file (made
    with SQLite's backup API from the read-only source), migrated to the newest revision and
    deleted after; the file itself stays as it was, so the version that wrote it still opens
    it. Any other source at another revision is refused (SourceAtOtherRevision).

    Returns a CopyReport. Raises SourceRefused for a SQLite source file that does not exist
    (naming it; nothing is created), a database without Pintor's tables, or a revision it
    cannot copy; ValueError for the same database twice; TargetNotEmpty and SQLAlchemy's
    errors as copy_database does. A refusal leaves both databases as they were.
    """
    if (missing := missing_sqlite_file(source_url)) is not None:
        raise SourceRefused(f"there is no SQLite database at {missing}: nothing copied, nothing created "
                            "(check the path: three slashes before a relative one, four before an absolute one)")
    source_path, target_path = _sqlite_path(source_url), _sqlite_path(target_url)
    if source_path is not None and target_path is not None and source_path.resolve() == target_path.resolve():
        raise ValueError("the source and the target are the same database")
    source, target = open_read_only(source_url), open_engine(target_url)
    try:
        try:
            return await copy_database(source, target)
        except SourceAtOtherRevision as other:
            if source_path is None or other.revision not in _older_revisions():
                raise
        with tempfile.TemporaryDirectory(prefix="pintor-copy-") as folder:
            migrated_path = Path(folder) / "source.db"
            _backup(source_path, migrated_path)
            migrated = open_engine(f"sqlite+aiosqlite:///{migrated_path}")
            try:
                await upgrade(migrated)
                return await copy_database(migrated, target)
            finally:
                await migrated.dispose()
    finally:
        await source.dispose()
        await target.dispose()


def _older_revisions() -> set[str]:
    """Every revision before this version's newest one."""
    script = ScriptDirectory.from_config(alembic_config())
    return {revision.revision for revision in script.walk_revisions()} - set(script.get_heads())


def _backup(source: Path, copy: Path) -> None:
    """A consistent copy of the SQLite database `source` (its write-ahead log included) at
    `copy`, reading `source` read-only."""
    reading = sqlite3.connect(f"file:{quote(str(source.resolve()))}?mode=ro", uri=True)
    try:
        writing = sqlite3.connect(copy)
        try:
            reading.backup(writing)
        finally:
            writing.close()
    finally:
        reading.close()


async def _advance_sequences(connection: AsyncConnection) -> None:
    """Each serial id column's sequence set so that its next value is one past the highest id
    (1 for an empty table): inserting explicit ids does not move a PostgreSQL sequence."""
    for table in tables():
        column = table.autoincrement_column
        if column is None:
            continue  # ids given by Discord (users, servers) or keys that are not serial
        await connection.execute(text(
            f"SELECT setval(pg_get_serial_sequence(:table, :column), "
            f"COALESCE((SELECT MAX({connection.dialect.identifier_preparer.quote(column.name)}) "
            f"FROM {connection.dialect.identifier_preparer.format_table(table)}), 0) + 1, false)"),
            {"table": table.name, "column": column.name})
