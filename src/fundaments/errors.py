"""Every error fundaments raises on purpose derives from :class:`FundamentsError`.

Messages say what happened and what to do; they never contain a secret.
"""

from __future__ import annotations


class FundamentsError(Exception):
    """Base class of every fundaments error."""


class InvalidArgument(FundamentsError, ValueError):
    """A public method got an argument of the wrong type, length or shape (a programming error)."""


class ConfigurationError(FundamentsError):
    """A configuration value is set but invalid; start-up stops."""

    def __init__(
        self, message: str, *, variable: str | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.variable = variable
        self.problems = list(problems) if problems else [message]


class PasswordPolicyError(FundamentsError, ValueError):
    """A new password breaks one or more rules of the password policy."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        super().__init__("Password rejected: " + "; ".join(self.failures))


class UserExistsError(FundamentsError):
    """An account with this (normalized) username already exists."""


class UnknownUserError(FundamentsError, LookupError):
    """No account has this id or username."""


class InvalidUsernameError(FundamentsError, ValueError):
    """A username is empty, too long or contains control characters."""


class InvalidEmailError(FundamentsError, ValueError):
    """An email address is not usable (email-validator's reason is in the message)."""


class EmailInUseError(UserExistsError):
    """Another account already uses this email address (or has it as its username)."""


class InvalidPasswordHashError(FundamentsError, ValueError):
    """An imported password hash is not in one of the supported formats."""


class AuthenticationError(FundamentsError):
    """A credential check failed (for example the current password in change_password)."""


class SecondFactorRequired(AuthenticationError):
    """The account has a second factor and the action needs a current code of it (missing or wrong)."""


class ReauthenticationRequired(AuthenticationError):
    """The session is too old for this action: re-enter a password or second factor first."""


class RateLimited(FundamentsError):
    """Too many requests of one kind: ``retry_after`` says when to come back (seconds).

    ``decision``: the ``RateLimitDecision`` behind it, when a rate limit refused (the numbers for
    the ``RateLimit`` headers); None for other throttles.
    """

    def __init__(self, message: str, *, retry_after: float, decision: object | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, float(retry_after))
        self.decision = decision


class CheckInFlightError(RateLimited):
    """A credential check for the same session is already running (one at a time per session)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class PermissionDenied(FundamentsError):
    """The user lacks the permission an action requires."""

    def __init__(self, message: str, *, user_id: int | None = None, permission: str | None = None) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.permission = permission


class LastAdministratorError(FundamentsError):
    """The change would leave no active account holding ``*``: nobody could administer any more."""


class UnknownApiKeyError(FundamentsError, LookupError):
    """No API key of this account has this id (or it was revoked, for what needs a live key)."""


class RoleError(FundamentsError, ValueError):
    """A role operation is invalid: unknown role, bad name, inheritance cycle."""


class DecryptionError(FundamentsError, ValueError):
    """Data could not be decrypted: unparseable, wrong key, wrong context or tampered."""


class ServiceUnavailable(FundamentsError):
    """A service is not configured or not running; the message names what to configure."""


class StorageError(FundamentsError):
    """The database rejected an operation or cannot be reached."""


class ConstraintViolation(StorageError):
    """A statement broke a unique, foreign-key or check constraint (services translate it)."""
