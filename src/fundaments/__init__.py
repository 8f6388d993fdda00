"""fundaments: one audited security layer for Python applications.

from fundaments import initialize_fundaments, Security

fundaments = await initialize_fundaments()
security: Security = fundaments["security"]
"""

from importlib.metadata import PackageNotFoundError, version

from fundaments.bootstrap import Fundaments, initialize_fundaments
from fundaments.security import LoginFailure, LoginResult, RequestContext, Security, Session, User

try:
    __version__ = version("fundaments")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "Fundaments",
    "LoginFailure",
    "LoginResult",
    "RequestContext",
    "Security",
    "Session",
    "User",
    "__version__",
    "initialize_fundaments",
]
