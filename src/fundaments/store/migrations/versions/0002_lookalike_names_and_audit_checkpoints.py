"""look-alike username keys and audit checkpoints

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fundaments_users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("username_skeleton", sa.String(length=254), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_fundaments_users_username_skeleton"), ["username_skeleton"]
        )
    op.create_table(
        "fundaments_audit_checkpoints",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("event_hash", sa.String(length=64), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fundaments_audit_checkpoints")),
        sa.UniqueConstraint("event_id", name=op.f("uq_fundaments_audit_checkpoints_event_id")),
    )


def downgrade() -> None:
    op.drop_table("fundaments_audit_checkpoints")
    with op.batch_alter_table("fundaments_users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_fundaments_users_username_skeleton"), type_="unique")
        batch_op.drop_column("username_skeleton")
