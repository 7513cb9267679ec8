"""pictures by key: images.path and jobs.grid_path hold file-store keys ("jobs/12/1.png"),
relative to the file store's folder, instead of absolute local paths

The folder comes from `storage.db.upgrade(..., pictures_root=...)` (`pintor run` and
`pintor db upgrade` pass PINTOR_DATA_DIR/images). Upgrade: absolute paths inside it become
keys; others (or all, when no folder is given) stay as they are, and `FileStore.local` still
reads them. Downgrade: keys become absolute paths in that folder again (it needs the folder).

Revision ID: 0013
Revises: 0012
"""
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from alembic import context, op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

COLUMNS = (("images", "path"), ("jobs", "grid_path"))


def _root() -> Path | None:
    root = context.config.attributes.get("pictures_root")
    return None if root is None else Path(root).resolve()


def _rewrite(change: Callable[[str], str | None]) -> None:
    """Apply `change(value) -> new value or None (unchanged)` to every stored picture."""
    connection = op.get_bind()
    for table, column in COLUMNS:
        rows = connection.execute(sa.text(f"SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL")).all()
        for row_id, value in rows:
            new = change(value)
            if new is not None and new != value:
                connection.execute(sa.text(f"UPDATE {table} SET {column} = :value WHERE id = :id"),
                                   {"value": new, "id": row_id})


def upgrade() -> None:
    root = _root()
    if root is None:
        return

    def to_key(value: str) -> str | None:
        path = Path(value)
        if not path.is_absolute():
            return None
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            return None  # outside the store: kept as it is

    _rewrite(to_key)


def downgrade() -> None:
    root = _root()
    if root is None:
        raise RuntimeError("downgrading 0013 needs the pictures folder: "
                           "storage.db.upgrade/downgrade(..., pictures_root=PINTOR_DATA_DIR/images)")

    def to_path(value: str) -> str | None:
        if Path(value).is_absolute():
            return None
        return str(root.joinpath(*PurePosixPath(value).parts))

    _rewrite(to_path)
