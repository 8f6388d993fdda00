"""Small immutable value types that cross layer boundaries."""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fundaments.errors import InvalidArgument

MAX_IP_LENGTH = 45  # longest textual IPv6 address
MAX_USER_AGENT_LENGTH = 512

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` as both databases can store it: NUL and unpaired surrogates become U+FFFD.

    Clients control their User-Agent and the username they type; PostgreSQL refuses NUL in text and
    neither driver encodes a lone surrogate, so an unclean value would make a revoking write (and its
    audit event) fail. One for one, so length limits still hold.
    """
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    is_disabled: bool = False
    must_change_password: bool = False
    created_at: float = 0.0
    roles: tuple[str, ...] = ()  # the roles held directly (inherited ones are in their definitions)
    email: str | None = None
    email_verified: bool = False
    locked_until: float | None = None  # set while the account is locked (Unix seconds), else None
    last_login_at: float | None = None

    @property
    def is_active(self) -> bool:
        return not self.is_disabled

    @property
    def is_locked(self) -> bool:
        """Whether the account was locked when it was read (its device cookies may still pass)."""
        return self.locked_until is not None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who is on the other end of a request: client IP and User-Agent (and an optional device cookie)."""

    ip_address: str
    user_agent: str
    device_token: str | None = None

    def __post_init__(self) -> None:
        # Valid by construction, so coerce() hands an instance on unchecked: the web layer builds
        # one per request and every facade call of that request reuses it (bench/web.py).
        ip, agent, device = self.ip_address, self.user_agent, self.device_token
        if not isinstance(ip, str) or not ip.strip():
            raise InvalidArgument("request_data['ip_address'] must be a non-empty string (the client IP)")
        if len(ip) > MAX_IP_LENGTH:
            raise InvalidArgument(f"request_data['ip_address'] is longer than {MAX_IP_LENGTH} characters")
        if not isinstance(agent, str):
            raise InvalidArgument(
                "request_data['user_agent'] must be a string (the User-Agent header, may be empty)"
            )
        if device is not None and not isinstance(device, str):
            raise InvalidArgument("request_data['device_token'] must be a string or absent")
        clean_ip, clean_agent = storable_text(ip), storable_text(agent[:MAX_USER_AGENT_LENGTH])
        if clean_ip is not ip:
            object.__setattr__(self, "ip_address", clean_ip)
        if clean_agent is not agent:
            object.__setattr__(self, "user_agent", clean_agent)

    @classmethod
    def coerce(cls, request_data: RequestContext | Mapping[str, Any]) -> RequestContext:
        """A RequestContext from the seed's dict (``ip_address``, ``user_agent``) or a RequestContext.

        Raises ValueError naming the missing or malformed field; never guesses "unknown".
        """
        if isinstance(request_data, RequestContext):
            return request_data  # checked when it was made
        if not isinstance(request_data, Mapping):
            raise InvalidArgument(
                f"request_data must be a dict or RequestContext, not {type(request_data).__name__}"
            )
        missing = [k for k in ("ip_address", "user_agent") if k not in request_data]
        if missing:
            raise InvalidArgument(
                "request_data is missing "
                + " and ".join(repr(m) for m in missing)
                + "; pass {'ip_address': client IP, 'user_agent': User-Agent header}"
            )
        return cls(request_data["ip_address"], request_data["user_agent"], request_data.get("device_token"))


@dataclass(frozen=True, slots=True)
class Session:
    """A live session. ``token`` is only set when it was just issued (login or rotation)."""

    id: str
    user_id: int
    created_at: float
    last_seen: float
    expires_at: float
    ip_address: str
    user_agent: str
    token: str | None = field(default=None, repr=False)
    rotated_token: str | None = field(default=None, repr=False)
    username: str | None = None


class LoginFailure(enum.Enum):
    INVALID_CREDENTIALS = "invalid_credentials"
    LOCKED = "locked"
    THROTTLED = "throttled"
    DISABLED = "disabled"
    BUSY = "busy"
    MFA_REQUIRED = "mfa_required"  # the password was right: finish with verify_mfa(mfa_token, code)


@dataclass(frozen=True, slots=True)
class LoginResult:
    """Outcome of ``Security.user_login`` and ``verify_mfa``; truthy only on success.

    ``mfa_token`` is set with ``reason=MFA_REQUIRED`` (the password was right, the second factor
    is due) and on a wrong second factor while the same challenge may still be tried.
    """

    user: User | None = None
    session: Session | None = None
    reason: LoginFailure | None = None
    device_token: str | None = field(default=None, repr=False)
    mfa_token: str | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.reason is None and self.session is not None

    @property
    def success(self) -> bool:
        return bool(self)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    occurred_at: float
    kind: str
    outcome: str
    actor_user_id: int | None
    subject_user_id: int | None
    username: str | None
    ip_address: str | None
    user_agent: str | None
    session_id: str | None
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Role:
    """A role as stored: its own permissions and the roles it inherits (by name), both sorted."""

    name: str
    permissions: tuple[str, ...] = ()
    inherits: tuple[str, ...] = ()
    description: str | None = None
    created_at: float = 0.0


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as its owner sees it (never the token): ``id`` is public and stays the same
    across rotations; ``prefix`` is the token's first characters, for telling keys apart.

    ``last_used_at`` is as of when the key was read (it is written in batches, see
    docs/api-keys.md); ``previous_expires_at`` is when the token replaced by the last rotation
    stops working (None: no previous token works).
    """

    id: str
    user_id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    revoked_at: float | None = None
    rate_limit: str | None = None
    previous_expires_at: float | None = None

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class ApiKeyCreated:
    """A key just created or rotated, with its token: shown once, never stored, never in a repr."""

    token: str = field(repr=False)
    key: ApiKey


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """The answer of ``Security.rate_limit``: whether this request may go ahead, and the numbers a
    client needs (the IETF ``RateLimit``/``RateLimit-Policy`` headers are made of them).

    ``remaining``: requests of cost 1 still allowed right now (after this one, when allowed);
    ``retry_after``: seconds until the same request would be allowed (0 when allowed; ``inf`` for a
    cost above the limit, which waiting never allows); ``reset_after``: seconds until the key is
    fully replenished; ``limit`` per ``window`` seconds: the policy applied.
    """

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    limit: int
    window: float

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """A TOTP secret waiting for ``confirm_totp_enrolment``: show ``uri`` as a QR code and
    ``secret`` as text, once. Neither is in the repr (logs, tracebacks)."""

    secret: str = field(repr=False)  # base32, 160 bits
    uri: str = field(repr=False)  # otpauth://totp/…


@dataclass(frozen=True, slots=True)
class MfaStatus:
    """The second factors an account holds."""

    totp: bool
    passkeys: int = 0
    recovery_codes_left: int = 0

    @property
    def enabled(self) -> bool:
        return self.totp or self.passkeys > 0
