"""jobs.result_key: a job whose result would be identical to another's (an upscale of the same
picture) cannot be stored twice

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for every existing job (and for every job that can repeat): unique indexes on SQLite
    # and PostgreSQL let any number of NULLs through
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_key", sa.String(200), nullable=True))
        batch.create_index("ux_jobs_result_key", ["result_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ux_jobs_result_key")
        batch.drop_column("result_key")
