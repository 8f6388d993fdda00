"""fundaments.web: the ASGI integration (Starlette, FastAPI, any ASGI framework).

    app = FastAPI()
    install(app)                                      # middleware + lifespan (initialize/close)
    app.include_router(auth_router(), prefix="/auth")  # JSON login, logout, me, sessions, csrf, ...

Or, with a ``Security`` already started: ``Middleware(SecurityMiddleware, security=..., ...)``.
See docs/web.md. Calls the ``Security`` facade only.
"""

from typing import TYPE_CHECKING, Any

from fundaments.web.auth import (
    authenticated_user,
    csrf_token,
    current_user,
    login,
    login_required,
    logout,
    permission_required,
    require_permission,
    require_scope,
    scope_required,
    session_user,
    use_rotated_session,
    verify_mfa,
)
from fundaments.web.errors import Refused
from fundaments.web.install import Installation, get_security, install
from fundaments.web.middleware import (
    CSRF_FORM_FIELD,
    DEFAULT_CSP,
    DEFAULT_PERMISSIONS_POLICY,
    SecurityMiddleware,
    WebContext,
    csrf_token_for,
    get_context,
)
from fundaments.web.ratelimit_headers import rate_limit_headers
from fundaments.web.ratelimits import RateLimitGuard, rate_limited

if TYPE_CHECKING:
    from fundaments.web.router import auth_router


def __getattr__(name: str) -> Any:
    # auth_router needs FastAPI, an optional dependency: imported on first use only.
    if name == "auth_router":
        from fundaments.web.router import auth_router

        return auth_router
    raise AttributeError(f"module 'fundaments.web' has no attribute {name!r}")


__all__ = [
    "CSRF_FORM_FIELD",
    "DEFAULT_CSP",
    "DEFAULT_PERMISSIONS_POLICY",
    "Installation",
    "RateLimitGuard",
    "Refused",
    "SecurityMiddleware",
    "WebContext",
    "auth_router",
    "authenticated_user",
    "csrf_token",
    "csrf_token_for",
    "current_user",
    "get_context",
    "get_security",
    "install",
    "login",
    "login_required",
    "logout",
    "permission_required",
    "rate_limit_headers",
    "rate_limited",
    "require_permission",
    "require_scope",
    "scope_required",
    "session_user",
    "use_rotated_session",
    "verify_mfa",
]
