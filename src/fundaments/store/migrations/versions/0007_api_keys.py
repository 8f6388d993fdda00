"""API keys: prefixed tokens stored as keyed digests, scoped, expiring, rotatable

Revision ID: 0007
Revises: 0006

One new table; nothing existing changes, so the revision can sit anywhere after 0005 (only
``down_revision`` names its place in the chain).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "fundaments_api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("old_digest", sa.LargeBinary(length=32), nullable=True),
        sa.Column("old_key_id", sa.String(length=16), nullable=True),
        sa.Column("old_expires_at", Timestamp, nullable=True),
        sa.Column(
            "current_used", sa.Boolean(create_constraint=False), server_default=sa.false(), nullable=False
        ),
        sa.Column("scopes", sa.Text(), server_default="", nullable=False),
        sa.Column("allowed_ips", sa.Text(), server_default="", nullable=False),
        sa.Column("rate_limit", sa.String(length=32), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=True),
        sa.Column("last_used_at", Timestamp, nullable=True),
        sa.Column("rotated_at", Timestamp, nullable=True),
        sa.Column("revoked_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["fundaments_users.id"],
            name=op.f("fk_fundaments_api_keys_user_id_fundaments_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fundaments_api_keys")),
        sa.UniqueConstraint("digest", name=op.f("uq_fundaments_api_keys_digest")),
    )
    op.create_index("ix_fundaments_api_keys_old_digest", "fundaments_api_keys", ["old_digest"], unique=False)
    op.create_index(
        "ix_fundaments_api_keys_user", "fundaments_api_keys", ["user_id", "created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_fundaments_api_keys_user", table_name="fundaments_api_keys")
    op.drop_index("ix_fundaments_api_keys_old_digest", table_name="fundaments_api_keys")
    op.drop_table("fundaments_api_keys")
