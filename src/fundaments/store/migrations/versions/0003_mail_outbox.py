"""the mail outbox

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fundaments_mail_outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=254), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.Float(precision=53), nullable=False),
        sa.Column("claimed_until", sa.Float(precision=53), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("failed_at", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fundaments_mail_outbox")),
    )
    op.create_index(
        "ix_fundaments_mail_outbox_due", "fundaments_mail_outbox", ["failed_at", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_fundaments_mail_outbox_due", table_name="fundaments_mail_outbox")
    op.drop_table("fundaments_mail_outbox")
