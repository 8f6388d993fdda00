"""fundaments.web: the ASGI integration (Starlette, FastAPI, any ASGI framework).

    app.add_middleware(SecurityMiddleware, security=fundaments.security,
                       trusted_proxies=fundaments.settings.trusted_proxies,
                       allowed_hosts=fundaments.settings.allowed_hosts)

See docs/web.md. Calls the ``Security`` facade only.
"""

from fundaments.web.auth import (
    authenticated_user,
    csrf_token,
    current_user,
    login,
    login_required,
    logout,
    permission_required,
    require_permission,
    use_rotated_session,
)
from fundaments.web.middleware import (
    CSRF_FORM_FIELD,
    DEFAULT_CSP,
    DEFAULT_PERMISSIONS_POLICY,
    SecurityMiddleware,
    WebContext,
    csrf_token_for,
    get_context,
)

__all__ = [
    "CSRF_FORM_FIELD",
    "DEFAULT_CSP",
    "DEFAULT_PERMISSIONS_POLICY",
    "SecurityMiddleware",
    "WebContext",
    "authenticated_user",
    "csrf_token",
    "csrf_token_for",
    "current_user",
    "get_context",
    "login",
    "login_required",
    "logout",
    "permission_required",
    "require_permission",
    "use_rotated_session",
]
