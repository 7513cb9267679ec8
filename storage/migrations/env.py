"""Alembic environment: migrations run on the connection that `storage.db.upgrade` passes in
(`config.attributes["connection"]`), or on `sqlalchemy.url` from the command line."""

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from storage.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    # batch mode: SQLite can only change a table by copying it
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    given = config.get_main_option("sqlalchemy.url")
    if given is None:
        raise RuntimeError("no database: set sqlalchemy.url in the Alembic configuration")
    url = given.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    with create_engine(url).connect() as conn:
        run(conn)
