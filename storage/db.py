"""Opening the database: the async engine (WAL mode on SQLite) and Alembic migrations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import event, exc, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config  # Alembic (~0.5 s to import) only where migrations run

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration in MIGRATIONS, written here so that `pintor health` (the container's
# HEALTHCHECK, every minute) compares revisions without importing Alembic; a test fails when
# a new migration does not move it (tests/test_storage.py).
HEAD_REVISION = "0013"


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite `url` when it does not exist (open_engine would create it), else
    None (it exists, it is in memory, or the database is not SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def open_engine(url: str) -> AsyncEngine:
    """An async engine; for SQLite the folder is created and WAL mode switched on, so readers
    (history, /info) never wait for the writer."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def open_read_only(url: str) -> AsyncEngine:
    """An async engine that only reads: for SQLite the file opened read-only (SQLite's
    `mode=ro`: any write fails, nothing is created, no folder made, the journal mode left as
    it is); other databases as open_engine opens them (the caller only reads). The caller
    checks first that a SQLite file exists (missing_sqlite_file): opening a missing one fails
    on first use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return open_engine(url)
    path = quote(str(Path(parsed.database).resolve()))
    return create_async_engine(parsed.set(database=f"file:{path}", query={"mode": "ro", "uri": "true"}),
                               connect_args={"timeout": 30})


def unreachable(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the database could not be reached or lost the
    connection — a server stopped or restarting, SQLite busy past its time-out — rather than
    that a statement was wrong: worth "try again in a moment", not a bug report."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, exc.DBAPIError) and (cause.connection_invalidated
                                                  or isinstance(cause, (exc.OperationalError, exc.InterfaceError))):
            return True
        if isinstance(cause, (ConnectionError, TimeoutError)):  # refused, reset, or no answer (asyncpg's connect)
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def alembic_config() -> Config:
    """Alembic's configuration for the migrations in MIGRATIONS."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head", *, pictures_root: Path | None = None) -> None:
    """Apply the migrations up to `revision` (all by default) on this engine's database.
    `pictures_root`: the file store's folder (generation.files.FileStore), for migration
    0013, which turns the absolute paths of the pictures in it into keys (without it,
    those rows keep their paths, which `FileStore.local` still reads)."""
    from alembic import command

    await _migrate(engine, command.upgrade, revision, pictures_root)


async def downgrade(engine: AsyncEngine, revision: str, *, pictures_root: Path | None = None) -> None:
    """Undo the migrations above `revision` on this engine's database (`pictures_root` as for
    `upgrade`: 0013 needs it to turn keys back into paths)."""
    from alembic import command

    await _migrate(engine, command.downgrade, revision, pictures_root)


async def _migrate(engine: AsyncEngine, step: Callable[[Config, str], None], revision: str,
                   pictures_root: Path | None) -> None:
    """Run Alembic's `step` (command.upgrade or command.downgrade) to `revision` in one
    transaction on this engine's database."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        config.attributes["pictures_root"] = pictures_root
        step(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def current_revision(engine: AsyncEngine) -> tuple[str | None, str]:
    """(the database's revision, None for a database that was never migrated; the newest this
    version of Pintor knows, HEAD_REVISION). Read from Alembic's own table, as Alembic's
    MigrationContext.get_current_revision reads it, without importing Alembic."""
    async with engine.connect() as connection:
        current = await connection.run_sync(_revision_in)
    return current, HEAD_REVISION


def _revision_in(connection: Connection) -> str | None:
    """The revision in Alembic's `alembic_version` table (one row, Pintor's migrations are one
    line), or None where the table does not exist yet."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
