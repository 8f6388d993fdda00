"""The Security facade: the one API an application, the web layer and the CLI call.

Every security action goes through here, so each chain (a login is always throttled, verified,
regenerated, bound and audited) is written once, in one place. The services behind it are
internal. ``Security`` is one class composed of one part per area, each in its own module (as
redis-py composes its client from command groups); the parts share the injected services and
hold no state of their own.
"""

from __future__ import annotations

from fundaments.access_control import ROLE_NAME_RULE
from fundaments.api_keys import TOKEN_PREFIX as API_KEY_PREFIX
from fundaments.audit import ChainVerification
from fundaments.mail import MailStatus
from fundaments.models import (
    MAX_IP_LENGTH,
    ApiKey,
    ApiKeyCreated,
    AuditEvent,
    LoginFailure,
    LoginResult,
    MfaStatus,
    RateLimitDecision,
    RequestContext,
    Role,
    Session,
    TotpEnrolment,
    User,
)
from fundaments.ratelimit import Rate, parse_rate
from fundaments.security._core import CORE_SERVICES
from fundaments.security.access import AccessPart
from fundaments.security.accounts import AccountsPart
from fundaments.security.administration import AdministrationPart
from fundaments.security.api_keys import API_KEYS_ADMIN_PERMISSION, ApiKeysPart
from fundaments.security.audit import MAX_AUDIT_PAGE, AuditPart
from fundaments.security.encryption import EncryptionPart
from fundaments.security.key_rotation import KeyRotationPart
from fundaments.security.limits import LimitsPart
from fundaments.security.mail import MailPart
from fundaments.security.mfa import MfaPart
from fundaments.security.recovery import RecoveryPart
from fundaments.security.sessions import MAX_SESSION_ID, SessionsPart
from fundaments.store.reencrypt import ReencryptReport

# The value types surfaces need, re-exported: the web layer, the CLI and app/ import nothing below
# this package but config and errors (import-linter contract in pyproject.toml).
__all__ = [
    "API_KEYS_ADMIN_PERMISSION",
    "API_KEY_PREFIX",
    "CORE_SERVICES",
    "MAX_AUDIT_PAGE",
    "MAX_IP_LENGTH",
    "MAX_SESSION_ID",
    "ROLE_NAME_RULE",
    "ApiKey",
    "ApiKeyCreated",
    "AuditEvent",
    "ChainVerification",
    "LoginFailure",
    "LoginResult",
    "MailStatus",
    "MfaStatus",
    "Rate",
    "RateLimitDecision",
    "ReencryptReport",
    "RequestContext",
    "Role",
    "Security",
    "Session",
    "TotpEnrolment",
    "User",
    "parse_rate",
]


class Security(
    AccountsPart,
    AdministrationPart,
    MfaPart,  # before RecoveryPart: its _reset_second_factor is the one a reset calls
    RecoveryPart,
    SessionsPart,
    AccessPart,
    ApiKeysPart,
    EncryptionPart,
    AuditPart,
    KeyRotationPart,
    MailPart,
    LimitsPart,
):
    """One object for every security action. Build it with ``initialize_fundaments()``.

    ``Security(services)`` with a core service missing raises
    ``RuntimeError("Security manager failed to initialize: <service> missing")``.
    """
