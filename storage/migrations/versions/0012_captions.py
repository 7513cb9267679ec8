"""/describe: the prompts a describe job wrote for its picture (jobs.captions, a JSON list)

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("captions", sa.Text(), nullable=True))


def downgrade() -> None:
    # a plain DROP COLUMN (SQLite has it since 3.35), not batch mode: batch mode copies the jobs
    # table, and dropping the old copy deletes every image row with it (ON DELETE CASCADE)
    op.drop_column("jobs", "captions")
