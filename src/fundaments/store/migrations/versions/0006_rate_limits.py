"""rate limits: one GCRA theoretical arrival time per key

Revision ID: 0006
Revises: 0005

A new table only; nothing existing changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fundaments_rate_limits",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("tat", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_fundaments_rate_limits")),
    )


def downgrade() -> None:
    op.drop_table("fundaments_rate_limits")
