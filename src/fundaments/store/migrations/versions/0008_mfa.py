"""multi-factor authentication: TOTP secrets, recovery codes, login challenges

Revision ID: 0008
Revises: 0005

Three new tables; nothing existing changes. Passkeys will get a table of their own.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.Float(precision=53)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"],
        ["fundaments_users.id"],
        name=op.f(f"fk_{table}_user_id_fundaments_users"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "fundaments_mfa_totp",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("pending_secret", sa.Text(), nullable=True),
        sa.Column("pending_until", Timestamp, nullable=True),
        sa.Column("secret_context", sa.String(length=64), nullable=False),
        sa.Column("last_step", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("confirmed_at", Timestamp, nullable=True),
        _user_fk("fundaments_mfa_totp"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_fundaments_mfa_totp")),
    )
    op.create_table(
        "fundaments_mfa_recovery_codes",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("code_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        _user_fk("fundaments_mfa_recovery_codes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fundaments_mfa_recovery_codes")),
    )
    op.create_index(
        op.f("ix_fundaments_mfa_recovery_codes_user_id"),
        "fundaments_mfa_recovery_codes",
        ["user_id"],
        unique=False,
    )
    op.create_table(
        "fundaments_mfa_challenges",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=512), nullable=False),
        sa.Column("device_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("devices", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attempts_left", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        _user_fk("fundaments_mfa_challenges"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_fundaments_mfa_challenges")),
    )
    op.create_index(
        op.f("ix_fundaments_mfa_challenges_user_id"), "fundaments_mfa_challenges", ["user_id"], unique=False
    )
    op.create_index(
        "ix_fundaments_mfa_challenges_expires_at", "fundaments_mfa_challenges", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_fundaments_mfa_challenges_expires_at", table_name="fundaments_mfa_challenges")
    op.drop_index(op.f("ix_fundaments_mfa_challenges_user_id"), table_name="fundaments_mfa_challenges")
    op.drop_table("fundaments_mfa_challenges")
    op.drop_index(
        op.f("ix_fundaments_mfa_recovery_codes_user_id"), table_name="fundaments_mfa_recovery_codes"
    )
    op.drop_table("fundaments_mfa_recovery_codes")
    op.drop_table("fundaments_mfa_totp")
