"""servers' LoRA rules: which LoRAs members may use, and how many per job

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # servers that exist already get what a new server gets (ServerRules.new): every configured
    # LoRA, at most 2 per job (DEFAULT_MAX_LORAS)
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("allowed_loras", sa.Text(), nullable=True))
        batch.add_column(sa.Column("max_loras", sa.Integer(), nullable=True))
    op.execute("UPDATE guild_settings SET max_loras = 2")


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("max_loras")
        batch.drop_column("allowed_loras")
