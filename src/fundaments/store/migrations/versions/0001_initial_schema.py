"""initial schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fundaments_audit_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("occurred_at", sa.Float(precision=53), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
        sa.Column("subject_user_id", sa.BigInteger(), nullable=True),
        sa.Column("username", sa.String(length=254), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("details", sa.Text(), server_default="{}", nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fundaments_audit_events")),
        sa.UniqueConstraint("hash", name=op.f("uq_fundaments_audit_events_hash")),
    )
    with op.batch_alter_table("fundaments_audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_fundaments_audit_events_kind", ["kind", "id"], unique=False)
        batch_op.create_index("ix_fundaments_audit_events_subject", ["subject_user_id", "id"], unique=False)

    op.create_table(
        "fundaments_ip_throttle",
        sa.Column("ip_address", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.Float(precision=53), nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("ip_address", name=op.f("pk_fundaments_ip_throttle")),
    )
    op.create_table(
        "fundaments_roles",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fundaments_roles")),
        sa.UniqueConstraint("name", name=op.f("uq_fundaments_roles_name")),
    )
    op.create_table(
        "fundaments_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_fundaments_state")),
    )
    op.create_table(
        "fundaments_users",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("username", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("is_disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("must_change_password", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lock_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_until", sa.Float(precision=53), nullable=True),
        sa.Column("privilege_epoch", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.Column("password_changed_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fundaments_users")),
        sa.UniqueConstraint("username", name=op.f("uq_fundaments_users_username")),
    )
    op.create_table(
        "fundaments_devices",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lock_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_until", sa.Float(precision=53), nullable=True),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("last_used_at", sa.Float(precision=53), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["fundaments_users.id"],
            name=op.f("fk_fundaments_devices_user_id_fundaments_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_fundaments_devices")),
    )
    with op.batch_alter_table("fundaments_devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fundaments_devices_user_id"), ["user_id"], unique=False)

    op.create_table(
        "fundaments_role_inherits",
        sa.Column("role_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("parent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["fundaments_roles.id"],
            name=op.f("fk_fundaments_role_inherits_parent_id_fundaments_roles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["fundaments_roles.id"],
            name=op.f("fk_fundaments_role_inherits_role_id_fundaments_roles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("role_id", "parent_id", name=op.f("pk_fundaments_role_inherits")),
    )
    op.create_table(
        "fundaments_role_permissions",
        sa.Column("role_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("permission", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["fundaments_roles.id"],
            name=op.f("fk_fundaments_role_permissions_role_id_fundaments_roles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("role_id", "permission", name=op.f("pk_fundaments_role_permissions")),
    )
    op.create_table(
        "fundaments_sessions",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("last_seen", sa.Float(precision=53), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=512), nullable=False),
        sa.Column("privilege_epoch", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["fundaments_users.id"],
            name=op.f("fk_fundaments_sessions_user_id_fundaments_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_fundaments_sessions")),
        sa.UniqueConstraint("id", name=op.f("uq_fundaments_sessions_id")),
    )
    with op.batch_alter_table("fundaments_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_fundaments_sessions_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_fundaments_sessions_last_seen", ["last_seen"], unique=False)
        batch_op.create_index(batch_op.f("ix_fundaments_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "fundaments_user_roles",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("role_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("granted_at", sa.Float(precision=53), nullable=False),
        sa.Column("granted_by", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["fundaments_roles.id"],
            name=op.f("fk_fundaments_user_roles_role_id_fundaments_roles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["fundaments_users.id"],
            name=op.f("fk_fundaments_user_roles_user_id_fundaments_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "role_id", name=op.f("pk_fundaments_user_roles")),
    )
    with op.batch_alter_table("fundaments_user_roles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fundaments_user_roles_role_id"), ["role_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fundaments_user_roles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fundaments_user_roles_role_id"))

    op.drop_table("fundaments_user_roles")
    with op.batch_alter_table("fundaments_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fundaments_sessions_user_id"))
        batch_op.drop_index("ix_fundaments_sessions_last_seen")
        batch_op.drop_index("ix_fundaments_sessions_expires_at")

    op.drop_table("fundaments_sessions")
    op.drop_table("fundaments_role_permissions")
    op.drop_table("fundaments_role_inherits")
    with op.batch_alter_table("fundaments_devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fundaments_devices_user_id"))

    op.drop_table("fundaments_devices")
    op.drop_table("fundaments_users")
    op.drop_table("fundaments_state")
    op.drop_table("fundaments_roles")
    op.drop_table("fundaments_ip_throttle")
    with op.batch_alter_table("fundaments_audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_fundaments_audit_events_subject")
        batch_op.drop_index("ix_fundaments_audit_events_kind")

    op.drop_table("fundaments_audit_events")
