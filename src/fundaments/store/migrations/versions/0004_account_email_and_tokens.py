"""account email, last login, reset and verification tokens, request throttle; ids never reused
(accounts and outbox mails)

Revision ID: 0004
Revises: 0003

On SQLite the users and mail-outbox tables are rebuilt (Alembic's batch mode: copy, drop, rename) to gain
AUTOINCREMENT, so that a deleted account's id is never handed to a new account. The migration
connection runs with foreign keys off (SQLite's default; see store/migrate.py), so dropping the old
table cascades to nothing, and the rows that refer to users keep their ids.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.Float(precision=53)


def _user_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("email_key", sa.String(length=254), nullable=True),
        sa.Column(
            "email_verified", sa.Boolean(create_constraint=False), server_default=sa.false(), nullable=False
        ),
        sa.Column("last_login_at", Timestamp, nullable=True),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        foreign_keys = bind.exec_driver_sql("PRAGMA foreign_keys").scalar()
        if foreign_keys:  # a copy-and-drop with foreign keys on would cascade the drop: refuse
            raise RuntimeError("migration 0004 must run with SQLite foreign keys off")
        with op.batch_alter_table(
            "fundaments_users", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch_op:
            for column in _user_columns():
                batch_op.add_column(column)
            batch_op.create_unique_constraint(batch_op.f("uq_fundaments_users_email_key"), ["email_key"])
        # The outbox too: FileTransport names a mail's file by its id, so a reused id (an emptied
        # outbox starts again at 1) would overwrite the previous mail's .eml.
        with op.batch_alter_table(
            "fundaments_mail_outbox", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
        # Never below the highest id used so far, even one whose row is already gone.
        for table in ("fundaments_users", "fundaments_mail_outbox"):
            op.execute(
                f"INSERT INTO sqlite_sequence (name, seq) SELECT '{table}', COALESCE(MAX(id), 0) "  # noqa: S608 - constant names
                f"FROM {table} WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '{table}')"
            )
    else:
        for column in _user_columns():
            op.add_column("fundaments_users", column)
        op.create_unique_constraint(op.f("uq_fundaments_users_email_key"), "fundaments_users", ["email_key"])
    op.create_table(
        "fundaments_account_tokens",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("binding", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["fundaments_users.id"],
            name=op.f("fk_fundaments_account_tokens_user_id_fundaments_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_fundaments_account_tokens")),
    )
    op.create_index(
        op.f("ix_fundaments_account_tokens_user_id"), "fundaments_account_tokens", ["user_id"], unique=False
    )
    op.create_index(
        "ix_fundaments_account_tokens_expires_at", "fundaments_account_tokens", ["expires_at"], unique=False
    )
    op.create_table(
        "fundaments_request_throttle",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("window_start", Timestamp, nullable=False),
        sa.Column("count", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_fundaments_request_throttle")),
    )


def downgrade() -> None:
    op.drop_table("fundaments_request_throttle")
    op.drop_index("ix_fundaments_account_tokens_expires_at", table_name="fundaments_account_tokens")
    op.drop_index(op.f("ix_fundaments_account_tokens_user_id"), table_name="fundaments_account_tokens")
    op.drop_table("fundaments_account_tokens")
    with op.batch_alter_table("fundaments_users") as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_fundaments_users_email_key"), type_="unique")
        for name in ("last_login_at", "email_verified", "email_key", "email"):
            batch_op.drop_column(name)
