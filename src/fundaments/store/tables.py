"""The schema, defined once as SQLAlchemy Core tables and migrated with Alembic.

Every table carries the ``fundaments_`` prefix so it lives beside an application's own tables.
Times are Unix seconds (UTC) as floating point: the same type on SQLite and PostgreSQL, and
what the injected clock returns. Booleans come back as ``0/1`` from SQLite and ``bool`` from
PostgreSQL: read them with ``bool(row["x"])``.

After changing this file, regenerate the migration (see docs/schema.md).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

PREFIX = "fundaments_"
VERSION_TABLE = f"{PREFIX}alembic_version"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identity.
Id = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = Float(precision=53)

# --- key/value counters (e.g. the RBAC version other instances poll) -------------------------------
state = Table(
    f"{PREFIX}state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False, server_default="0"),
)

# --- accounts (issue: accounts and passwords) ------------------------------------------------------
users = Table(
    f"{PREFIX}users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(254), nullable=False, unique=True),  # normalized: NFKC, casefold, trimmed
    # The look-alike key of the username (Unicode TR 39 skeleton, marks removed): two accounts whose
    # names look alike ("admin", "аdmin" with a Cyrillic а) cannot both exist. NULL on rows created
    # before revision 0002 until start-up backfills them.
    Column("username_skeleton", String(254), nullable=True, unique=True),
    Column("password_hash", Text, nullable=False),  # self-describing (PHC / modular crypt)
    Column("is_disabled", Boolean(create_constraint=False), nullable=False, server_default=false()),
    Column("must_change_password", Boolean(create_constraint=False), nullable=False, server_default=false()),
    Column("failed_attempts", Integer, nullable=False, server_default="0"),  # consecutive failures
    Column("lock_count", Integer, nullable=False, server_default="0"),  # locks so far: backoff doubles
    Column("locked_until", Timestamp, nullable=True),
    Column("privilege_epoch", Integer, nullable=False, server_default="0"),  # bumped on privilege change
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("password_changed_at", Timestamp, nullable=False),
    # Revision 0004: the address as given (email-validator's normalized form) and its lookup key
    # (casefolded): unique, so one address belongs to one account whatever its case.
    Column("email", String(254), nullable=True),
    Column("email_key", String(254), nullable=True, unique=True),
    Column("email_verified", Boolean(create_constraint=False), nullable=False, server_default=false()),
    Column("last_login_at", Timestamp, nullable=True),
    # AUTOINCREMENT on SQLite (0004): a deleted account's id is never given to a new one, so
    # audit events, logs and other systems that name the old id never point at someone else.
    sqlite_autoincrement=True,
)

devices = Table(  # OWASP device cookies: a known device is not blocked by others' failures
    f"{PREFIX}devices",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),  # SHA-256 of the device token
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False, index=True),
    Column("failed_attempts", Integer, nullable=False, server_default="0"),
    Column("lock_count", Integer, nullable=False, server_default="0"),
    Column("locked_until", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("last_used_at", Timestamp, nullable=False),
)

ip_throttle = Table(
    f"{PREFIX}ip_throttle",
    metadata,
    Column("ip_address", String(64), primary_key=True),
    Column("window_start", Timestamp, nullable=False),
    Column("failures", Integer, nullable=False, server_default="0"),
)

account_tokens = Table(  # single-use password-reset and email-verification tokens (0004)
    f"{PREFIX}account_tokens",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),  # SHA-256 of the token; never the token
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),  # password_reset | email_verification
    # A digest of what the token is bound to (the password hash for a reset, the address for a
    # verification): a token dies when that changes, without a write to find it.
    Column("binding", LargeBinary(32), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)
Index(f"ix_{PREFIX}account_tokens_expires_at", account_tokens.c.expires_at)

request_throttle = Table(  # fixed windows per key: password-reset requests per address and per IP
    f"{PREFIX}request_throttle",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("window_start", Timestamp, nullable=False),
    Column("count", Integer, nullable=False, server_default="0"),
)

# --- sessions (issue: sessions) -------------------------------------------------------------------
sessions = Table(
    f"{PREFIX}sessions",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),  # SHA-256 of the token; never the token
    Column("id", String(32), nullable=False, unique=True),  # public id for listing and revoking
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", Timestamp, nullable=False),
    Column("last_seen", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),  # absolute timeout
    Column("ip_address", String(64), nullable=False),
    Column("user_agent", String(512), nullable=False),
    Column("privilege_epoch", Integer, nullable=False, server_default="0"),
    # Revision 0005, the rotation grace window: after a privilege-change rotation the previous
    # token's SHA-256, until when it still answers, and the new token sealed (AES-256-GCM) under a
    # key derived from the previous token, so only its holder can recover the new one. NULL
    # otherwise; an explicit rotation (a password change) clears them.
    Column("previous_token_hash", LargeBinary(32), nullable=True),
    Column("previous_until", Timestamp, nullable=True),
    Column("successor", LargeBinary(96), nullable=True),
)
Index(f"ix_{PREFIX}sessions_expires_at", sessions.c.expires_at)
Index(f"ix_{PREFIX}sessions_last_seen", sessions.c.last_seen)  # the purge finds idle sessions
Index(f"ix_{PREFIX}sessions_previous_token_hash", sessions.c.previous_token_hash)  # the grace lookup

# --- access control (issue: access control) -------------------------------------------------------
roles = Table(
    f"{PREFIX}roles",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
)

role_permissions = Table(
    f"{PREFIX}role_permissions",
    metadata,
    Column("role_id", Id, ForeignKey(roles.c.id, ondelete="CASCADE"), primary_key=True),
    Column("permission", String(128), primary_key=True),
)

role_inherits = Table(
    f"{PREFIX}role_inherits",
    metadata,
    Column("role_id", Id, ForeignKey(roles.c.id, ondelete="CASCADE"), primary_key=True),
    Column("parent_id", Id, ForeignKey(roles.c.id, ondelete="CASCADE"), primary_key=True),
)

user_roles = Table(
    f"{PREFIX}user_roles",
    metadata,
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), primary_key=True),
    Column("role_id", Id, ForeignKey(roles.c.id, ondelete="CASCADE"), primary_key=True, index=True),
    Column("granted_at", Timestamp, nullable=False),
    Column("granted_by", BigInteger, nullable=True),
)

# --- audit trail (issue: the Security facade and the audit trail) ---------------------------------
audit_events = Table(
    f"{PREFIX}audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("occurred_at", Timestamp, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("actor_user_id", BigInteger, nullable=True),  # no foreign key: events outlive accounts
    Column("subject_user_id", BigInteger, nullable=True),
    Column("username", String(254), nullable=True),
    Column("ip_address", String(64), nullable=True),
    Column("user_agent", String(512), nullable=True),
    Column("session_id", String(32), nullable=True),
    Column("details", Text, nullable=False, server_default="{}"),  # JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)
Index(f"ix_{PREFIX}audit_events_subject", audit_events.c.subject_user_id, audit_events.c.id)
Index(f"ix_{PREFIX}audit_events_kind", audit_events.c.kind, audit_events.c.id)

audit_checkpoints = Table(  # the verified chain head every so often, MAC'ed with a server-held key
    f"{PREFIX}audit_checkpoints",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", BigInteger, nullable=False, unique=True),  # the last event the checkpoint covers
    Column("event_hash", String(64), nullable=False),  # that event's chain hash
    Column("events", BigInteger, nullable=False),  # how many events the chain holds up to event_id
    Column("created_at", Timestamp, nullable=False),
    Column("key_id", String(32), nullable=True),  # which master key the MAC is under (rotation)
    Column("mac", String(64), nullable=True),  # HMAC-SHA256 under a key derived from the master key
)

mail_outbox = Table(  # mails waiting to be sent: written in the transaction that asks for them
    f"{PREFIX}mail_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("created_at", Timestamp, nullable=False),
    Column("kind", String(64), nullable=False),  # what the mail is for: password_reset, test, ...
    Column("recipient", String(254), nullable=False),
    Column("message", Text, nullable=False),  # the RFC 5322 message; an AEAD envelope with encryption on
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("claimed_until", Timestamp, nullable=True),  # a sender's lease: a crashed one's expires
    Column("last_error", String(500), nullable=True),
    Column("failed_at", Timestamp, nullable=True),  # given up on after the last retry (kept, not sent)
    sqlite_autoincrement=True,  # 0004: an id names the mail's .eml file; never reused
)
Index(f"ix_{PREFIX}mail_outbox_due", mail_outbox.c.failed_at, mail_outbox.c.next_attempt_at)

# --- API keys (issue: machine clients) --------------------------------------------------------------
api_keys = Table(
    f"{PREFIX}api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # public and stable across rotations: key_…
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),  # the token's first characters, for display
    # HMAC-SHA256 of the token under a key derived from the master key (key_id names which):
    # never the token, and a dump alone cannot even test a candidate token.
    Column("digest", LargeBinary(32), nullable=False, unique=True),
    Column("key_id", String(16), nullable=False),
    # The token replaced by the last rotation, while its overlap lasts (NULL: none works).
    Column("old_digest", LargeBinary(32), nullable=True),
    Column("old_key_id", String(16), nullable=True),
    Column("old_expires_at", Timestamp, nullable=True),
    # Whether the current token was presented since the last rotation: a rotation retried by a
    # client that never saw the new token keeps the old one as the previous (docs/api-keys.md).
    Column("current_used", Boolean(create_constraint=False), nullable=False, server_default=false()),
    Column("scopes", Text, nullable=False, server_default=""),  # permission names, space-separated
    Column("allowed_ips", Text, nullable=False, server_default=""),  # networks, space-separated
    Column("rate_limit", String(32), nullable=True),  # "600/minute"; enforced by the rate limiter
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=True),
    Column("last_used_at", Timestamp, nullable=True),
    Column("rotated_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
)
Index(f"ix_{PREFIX}api_keys_old_digest", api_keys.c.old_digest)  # the overlap lookup
Index(f"ix_{PREFIX}api_keys_user", api_keys.c.user_id, api_keys.c.created_at, api_keys.c.id)  # keyset


# --- rate limits and quotas (issue: machine clients) ----------------------------------------------
rate_limits = Table(  # GCRA: one theoretical arrival time per key (fundaments.ratelimit)
    f"{PREFIX}rate_limits",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("tat", BigInteger, nullable=False),  # microseconds since the epoch: exact integer arithmetic
)


# --- multi-factor authentication (issue: multi-factor authentication; revision 0008) --------------
# One table per kind of factor (passkeys get theirs), one for the login step between password and
# second factor. Every row goes with its account (ON DELETE CASCADE).
mfa_totp = Table(
    f"{PREFIX}mfa_totp",
    metadata,
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), primary_key=True),
    # AEAD envelopes (encrypt_data) of the base32 secret under the context in secret_context
    # ("user:<id>:totp"): `fundaments keys reencrypt --context-column secret_context` rotates them.
    Column("secret", Text, nullable=True),  # the confirmed secret; NULL: TOTP off
    Column("pending_secret", Text, nullable=True),  # enrolled, not yet confirmed with a code
    Column("pending_until", Timestamp, nullable=True),
    Column("secret_context", String(64), nullable=False),
    # The last time step (Unix time // 30) a code was accepted for: only a later one is accepted.
    Column("last_step", BigInteger, nullable=False, server_default="0"),
    Column("created_at", Timestamp, nullable=False),
    Column("confirmed_at", Timestamp, nullable=True),
)

mfa_recovery_codes = Table(  # single-use look-up secrets, as HMAC-SHA256 under a server-held key
    f"{PREFIX}mfa_recovery_codes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False, index=True),
    Column("code_hash", LargeBinary(32), nullable=False),
    Column("key_id", String(32), nullable=False),  # which master key's purpose key made code_hash
    Column("created_at", Timestamp, nullable=False),
)

mfa_challenges = Table(  # a login whose password was right, waiting for its second factor
    f"{PREFIX}mfa_challenges",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),  # SHA-256 of the mfa_token; never the token
    Column("user_id", Id, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False, index=True),
    Column("ip_address", String(64), nullable=False),  # the client it is bound to, as a session is
    Column("user_agent", String(512), nullable=False),
    Column("device_hash", LargeBinary(32), nullable=True),  # the live device cookie the password came with
    Column("devices", Integer, nullable=False, server_default="0"),  # the account's devices then
    Column("attempts_left", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)
Index(f"ix_{PREFIX}mfa_challenges_expires_at", mfa_challenges.c.expires_at)
