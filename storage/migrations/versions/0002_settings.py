"""member and server settings, NSFW flags on images

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_settings",
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("aspect", sa.String(16), nullable=True),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("stylize", sa.Integer(), nullable=True),
        sa.Column("private", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("append", sa.Text(), nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("allowed_models", sa.Text(), nullable=True),
        sa.Column("channel_ids", sa.Text(), nullable=True),
        sa.Column("max_queued_per_member", sa.Integer(), nullable=True),
        sa.Column("daily_quota", sa.Integer(), nullable=True),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("max_side", sa.Integer(), nullable=True),
        sa.Column("buttons_author_only", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("nsfw_check", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # history pages and daily quotas read a member's jobs by time
    with op.batch_alter_table("jobs") as batch:
        batch.create_index("ix_jobs_user_id_created_at", ["user_id", "created_at"])
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("flagged")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_user_id_created_at")
    op.drop_table("guild_settings")
    op.drop_table("member_settings")
