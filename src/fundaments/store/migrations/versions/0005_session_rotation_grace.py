"""session rotation grace: the previous token hash, its deadline and the sealed successor

Revision ID: 0005
Revises: 0004

Three nullable columns on fundaments_sessions, so existing rows need no rewrite; on SQLite
``ADD COLUMN`` needs no table copy either.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fundaments_sessions") as batch_op:
        batch_op.add_column(sa.Column("previous_token_hash", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column("previous_until", sa.Float(precision=53), nullable=True))
        batch_op.add_column(sa.Column("successor", sa.LargeBinary(length=96), nullable=True))
    op.create_index(
        "ix_fundaments_sessions_previous_token_hash",
        "fundaments_sessions",
        ["previous_token_hash"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_fundaments_sessions_previous_token_hash", table_name="fundaments_sessions")
    with op.batch_alter_table("fundaments_sessions") as batch_op:
        for name in ("successor", "previous_until", "previous_token_hash"):
            batch_op.drop_column(name)
