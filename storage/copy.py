"""Moving an installation's data to another database (`pintor db copy FROM TO`): e.g. from the
default SQLite file to PostgreSQL when one machine is no longer enough.

Every table the models describe is copied row by row with its ids kept (members' Discord ids,
job ids that buttons and /show name, image ids), in an order that satisfies the foreign keys;
then PostgreSQL's id sequences are moved past the copied ids, so the next job gets the next id
instead of colliding with a copied one. Picture files are not touched: rows keep their paths
(PINTOR_DATA_DIR stays where it is, or is moved with its paths unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import current_revision, upgrade
from storage.models import Base

BATCH_ROWS = 1000  # rows read and written at a time: bounded memory for large histories


class TargetNotEmpty(Exception):
    """The target database already holds rows: copying would mix two installations."""


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
    """Copy every row of `source` into the empty database `target`, ids kept.

    Both databases are first migrated to this version's newest revision (as `pintor run` would
    do), so their tables are the same. The copy is one transaction on the target: it is all
    there, or (on any error) nothing is. On PostgreSQL each table's id sequence then continues
    after the highest copied id. The source is only read.

    Returns a CopyReport. Raises TargetNotEmpty when the target holds any row in Pintor's
    tables, ValueError when both are the same database, and what SQLAlchemy raises when a
    database cannot be reached.
    """
    if source.url.render_as_string(hide_password=False) == target.url.render_as_string(hide_password=False):
        raise ValueError("the source and the target are the same database")
    await upgrade(source)
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
