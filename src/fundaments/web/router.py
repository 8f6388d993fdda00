"""``auth_router()``: the JSON endpoints of a service's authentication, as a FastAPI ``APIRouter``.

    app.include_router(auth_router(), prefix="/auth")

=====================================  ==========================================================
``POST /login``                        ``{"username", "password"}`` (JSON or form) -> ``{"token",
                                       "token_type", "user", "expires_at", "csrf_token"}`` + cookie
``POST /login/mfa``                    ``{"mfa_token", "code"}``: the second step when ``/login``
                                       answered 401 ``mfa_required``; the same answer as ``/login``
``POST /logout``                       ends this request's session
``POST /register``                     off unless ``auth_router(registration=True)``
``GET /me``                            the signed-in account
``GET /sessions``                      the account's live sessions (``current`` marks this one)
``DELETE /sessions/{id}``              ends one of them
``GET /csrf``                          ``{"csrf_token"}`` for a cookie client's ``X-CSRF-Token``
``POST /password``                     ``{"current_password", "new_password"}``: a new token
``POST /password-reset``               ``{"email"}``: mails a reset link (same answer for any address)
``POST /password-reset/confirm``       ``{"token", "new_password"}``
``POST /verify-email``                 ``{"token"}``; ``POST /verify-email/request`` mails a link
=====================================  ==========================================================

Bodies are parsed here, not by FastAPI's validation, so a malformed body is refused with a short
``{"detail", "code"}`` that never echoes what was sent (a password among it). Needs FastAPI
(``pip install 'fundaments[fastapi]'``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from fundaments.emails import normalize_email
from fundaments.errors import (
    AuthenticationError,
    InvalidEmailError,
    InvalidUsernameError,
    PasswordPolicyError,
    SecondFactorRequired,
    UserExistsError,
)
from fundaments.security import LoginFailure, LoginResult, Session, User
from fundaments.web.auth import current_user, login, logout, session_user, use_rotated_session, verify_mfa
from fundaments.web.errors import Refused
from fundaments.web.install import OPEN_ROUTES
from fundaments.web.middleware import SERVICE_BUSY, browser_like, csrf_token_for, get_context
from fundaments.web.ratelimits import limit_per_ip, limit_per_target

Body = TypeVar("Body", bound=BaseModel)
CurrentUser = Annotated[User, Depends(current_user)]
SessionUser = Annotated[User, Depends(session_user)]  # not for API keys

MAX_FIELD = 4096  # no credential, address or token is longer; the body limit bounds the rest
INVALID_LINK = "The link is not valid any more: ask for a new one."
LOGIN_FAILED = "Invalid username or password."  # every reason alike: no account enumeration


# --- bodies and answers (the OpenAPI schemas) ---------------------------------------------------
class LoginBody(BaseModel):
    username: str = Field(min_length=1, max_length=MAX_FIELD)
    password: str = Field(min_length=1, max_length=MAX_FIELD)


class MfaBody(BaseModel):
    mfa_token: str = Field(min_length=1, max_length=MAX_FIELD)
    code: str = Field(min_length=1, max_length=MAX_FIELD)


class MfaRequiredOut(BaseModel):
    """/login's answer (401) for an account with a second factor: send the code to /login/mfa."""

    detail: str
    code: str = "mfa_required"
    mfa_token: str
    expires_in: int  # seconds


class MfaFailedOut(BaseModel):
    detail: str
    code: str  # mfa_code_wrong (retry true: the same mfa_token may try again) | mfa_token_invalid
    retry: bool


class RegisterBody(LoginBody):
    email: str | None = Field(default=None, max_length=MAX_FIELD)


class PasswordBody(BaseModel):
    current_password: str = Field(min_length=1, max_length=MAX_FIELD)
    new_password: str = Field(min_length=1, max_length=MAX_FIELD)


class ResetRequestBody(BaseModel):
    email: str = Field(min_length=1, max_length=MAX_FIELD)


class ResetConfirmBody(BaseModel):
    token: str = Field(min_length=1, max_length=MAX_FIELD)
    new_password: str = Field(min_length=1, max_length=MAX_FIELD)
    second_factor: str | None = Field(default=None, max_length=MAX_FIELD)  # accounts with TOTP


class TokenBody(BaseModel):
    token: str = Field(min_length=1, max_length=MAX_FIELD)


class UserOut(BaseModel):
    id: int
    username: str
    email: str | None
    email_verified: bool
    roles: list[str]
    must_change_password: bool
    last_login_at: float | None


class LoginOut(BaseModel):
    token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    user: UserOut
    expires_at: float
    csrf_token: str


class SessionOut(BaseModel):
    id: str
    created_at: float
    last_seen: float
    expires_at: float
    ip_address: str
    user_agent: str
    current: bool


class TokenOut(BaseModel):
    token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    csrf_token: str


class CsrfOut(BaseModel):
    csrf_token: str


class RefusalOut(BaseModel):
    detail: str
    code: str


class Done(BaseModel):
    detail: str


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        email=user.email,
        email_verified=user.email_verified,
        roles=list(user.roles),
        must_change_password=user.must_change_password,
        last_login_at=user.last_login_at,
    )


def _refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "The link is not (or no longer) valid",
        401: "Not signed in, or wrong credentials",
        403: "Refused: CSRF, a required password change, or a missing permission",
        404: "No such session",
        409: "The username or address is taken",
        413: "Body over max_body_bytes",
        422: "A malformed body, or a password the policy refuses",
        429: "Too many attempts: see Retry-After",
        503: "Busy, starting or stopping: see Retry-After",
    }
    return {status: {"model": RefusalOut, "description": meaning[status]} for status in statuses}


def _body_doc(model: type[BaseModel], *, form: bool = False) -> dict[str, Any]:
    schema = model.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if form:
        content["application/x-www-form-urlencoded"] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}


async def _body(request: Request, model: type[Body]) -> Body:
    """The request's body as ``model``: JSON, or a form where the endpoint accepts one."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        data = {key: value for key, value in form.items() if isinstance(value, str)}
    else:
        try:
            data = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise Refused(422, "invalid_body", "The body is not JSON: send a JSON object.") from None
    if not isinstance(data, dict):
        raise Refused(422, "invalid_body", f"Send a JSON object with {_fields(model)}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        names = sorted({".".join(str(p) for p in error["loc"]) or "body" for error in exc.errors()})
        raise Refused(
            422, "invalid_body", f"Check the fields {', '.join(names)}: send {_fields(model)} as strings."
        ) from None


def _fields(model: type[BaseModel]) -> str:
    return ", ".join(f'"{name}"' for name in model.model_fields)


def _session_out(session: Session, current: Session | None) -> SessionOut:
    return SessionOut(
        id=session.id,
        created_at=session.created_at,
        last_seen=session.last_seen,
        expires_at=session.expires_at,
        ip_address=session.ip_address,
        user_agent=session.user_agent,
        current=current is not None and session.id == current.id,
    )


def auth_router(
    *,
    registration: bool = False,
    registration_roles: Iterable[str] = (),
    tags: Iterable[str] = ("auth",),
) -> APIRouter:
    """The JSON authentication endpoints (module docstring); mount with ``prefix="/auth"``.

    ``registration=True`` opens ``POST /register`` to anyone, giving new accounts
    ``registration_roles``; it is off by default, since most services create accounts otherwise.
    """
    roles = tuple(registration_roles)
    router = APIRouter(tags=list(tags))

    @router.post(
        "/login",
        response_model=LoginOut,
        summary="Log in with a username (or email) and password",
        openapi_extra=_body_doc(LoginBody, form=True),
        responses={
            **_refusals(401, 403, 413, 422, 429, 503),
            401: {
                "model": MfaRequiredOut | RefusalOut,
                "description": "Wrong credentials (code login_failed), or the password was right and the "
                "account has a second factor (code mfa_required, with the mfa_token for POST /login/mfa)",
            },
        },
    )
    async def login_endpoint(request: Request) -> LoginOut | JSONResponse:
        body = await _body(request, LoginBody)
        # A browser gets the session cookie; a script (no Origin, Referer or cookie) only the token.
        result = await login(request, body.username, body.password, cookie=browser_like(request.headers))
        if result.reason is LoginFailure.MFA_REQUIRED and result.mfa_token is not None:
            # 401: not signed in yet. A distinct code, so a client asks for the code instead of
            # saying "wrong password"; no cookie and no session exist at this point.
            security = get_context(request).security
            answer = MfaRequiredOut(
                detail="The password is right; send a code of the second factor to /login/mfa.",
                mfa_token=result.mfa_token,
                expires_in=security.mfa_token_ttl,
            )
            return JSONResponse(answer.model_dump(), status_code=401)
        return _login_out(result)

    @router.post(
        "/login/mfa",
        response_model=LoginOut,
        summary="Finish a login with a TOTP code or a recovery code",
        openapi_extra=_body_doc(MfaBody, form=True),
        responses={
            **_refusals(403, 413, 422, 503),
            401: {"model": MfaFailedOut, "description": "A wrong code, or an mfa_token no longer valid"},
        },
    )
    async def login_mfa_endpoint(request: Request) -> LoginOut | JSONResponse:
        body = await _body(request, MfaBody)
        result = await verify_mfa(request, body.mfa_token, body.code, cookie=browser_like(request.headers))
        if not result:
            retry = result.mfa_token is not None
            failed = MfaFailedOut(
                detail="The code is not right; try the current one."
                if retry
                else "This sign-in is over (used, expired, too many tries or locked): log in again.",
                code="mfa_code_wrong" if retry else "mfa_token_invalid",
                retry=retry,
            )
            return JSONResponse(failed.model_dump(), status_code=401)
        return _login_out(result)

    def _login_out(result: LoginResult) -> LoginOut:
        if not result:
            if result.reason is LoginFailure.THROTTLED:
                raise Refused(
                    429, "login_throttled", "Too many failed logins from this address; retry later.",
                    headers={"Retry-After": "60"},
                )  # fmt: skip
            if result.reason is LoginFailure.BUSY:
                busy = SERVICE_BUSY  # the middleware's own answer to a full hashing pool
                raise Refused(busy.status, busy.code, busy.detail, headers={"Retry-After": "1"})
            raise Refused(401, "login_failed", LOGIN_FAILED)
        assert result.session is not None and result.session.token is not None and result.user is not None
        token = result.session.token
        return LoginOut(
            token=token,
            user=user_out(result.user),
            expires_at=result.session.expires_at,
            csrf_token=csrf_token_for(token),
        )

    @router.post(
        "/logout",
        name=OPEN_ROUTES[0],
        response_model=Done,
        summary="End this request's session",
        responses=_refusals(403),
    )
    async def logout_endpoint(request: Request) -> Done:
        ended = await logout(request)
        return Done(detail="Logged out." if ended else "There was no session to end.")

    if registration:

        @router.post(
            "/register",
            response_model=UserOut,
            status_code=201,
            summary="Create an account",
            openapi_extra=_body_doc(RegisterBody, form=True),
            responses=_refusals(403, 409, 413, 422, 429),
        )
        async def register_endpoint(request: Request) -> UserOut:
            await limit_per_ip(request, "register", "rate_limit_register")  # before the body is read
            body = await _body(request, RegisterBody)
            security = get_context(request).security
            try:
                user = await security.register_user(
                    body.username, body.password, roles=roles, email=body.email
                )
            except UserExistsError:
                raise Refused(
                    409, "account_exists", "That username or address is taken; choose another."
                ) from None
            except (PasswordPolicyError, InvalidUsernameError, InvalidEmailError) as exc:
                raise Refused(422, _code(exc), str(exc)) from None
            return user_out(user)

    @router.get(
        "/me",
        name=OPEN_ROUTES[2],
        response_model=UserOut,
        summary="The signed-in account",
        responses=_refusals(401),
    )
    async def me(user: CurrentUser) -> UserOut:
        return user_out(user)

    @router.get(
        "/sessions",
        response_model=list[SessionOut],
        summary="The account's live sessions, newest first",
        responses=_refusals(401),
    )
    async def sessions(request: Request, user: SessionUser) -> list[SessionOut]:
        ctx = get_context(request)
        return [_session_out(s, ctx.session) for s in await ctx.security.list_sessions(user.id)]

    @router.delete(
        "/sessions/{session_id}",
        status_code=204,
        response_class=Response,
        summary="End one of the account's sessions",
        responses=_refusals(401, 403, 404),
    )
    async def end_session(session_id: str, request: Request, user: SessionUser) -> Response:
        ctx = get_context(request)
        current = ctx.session is not None and ctx.session.id == session_id
        if not await ctx.security.revoke_session(user.id, session_id[:200]):
            raise Refused(404, "session_not_found", "The account has no live session with that id.")
        if current:
            ctx.end_session()
        return Response(status_code=204)

    @router.get(
        "/csrf", name=OPEN_ROUTES[3], response_model=CsrfOut, summary="The X-CSRF-Token a cookie client sends"
    )
    async def csrf(request: Request) -> CsrfOut:
        return CsrfOut(csrf_token=get_context(request).csrf_token)

    @router.post(
        "/password",
        name=OPEN_ROUTES[1],
        response_model=TokenOut,
        summary="Change the password; other sessions end, this one gets a new token",
        openapi_extra=_body_doc(PasswordBody, form=True),
        responses=_refusals(401, 403, 413, 422, 429),
    )
    async def password(request: Request, user: SessionUser) -> TokenOut:
        body = await _body(request, PasswordBody)
        ctx = get_context(request)
        try:
            session = await ctx.security.change_password(
                user.id, body.current_password, body.new_password, ctx.token, request_data=ctx.request_context
            )
        except PasswordPolicyError as exc:
            raise Refused(422, "password_policy", str(exc)) from None
        except AuthenticationError:
            raise Refused(403, "current_password_wrong", "The current password is not right.") from None
        await use_rotated_session(request, session)
        token = ctx.token
        if token is None:  # the session ended (its guesses locked the account)
            raise Refused(401, "authentication_required", "Log in again.")
        return TokenOut(token=token, csrf_token=csrf_token_for(token))

    @router.post(
        "/password-reset",
        response_model=Done,
        status_code=202,
        summary="Mail a password reset link (the same answer whether or not the address has an account)",
        openapi_extra=_body_doc(ResetRequestBody, form=True),
        responses=_refusals(403, 413, 422, 429),
    )
    async def password_reset(request: Request) -> Done:
        await limit_per_ip(request, "account-mail", "rate_limit_account_mail")
        body = await _body(request, ResetRequestBody)
        ctx = get_context(request)
        try:
            # Per address asked for, account or not: a 429 says nothing about whether one exists.
            await limit_per_target(request, "account-mail-address", normalize_email(body.email).key)
            await ctx.security.request_password_reset(body.email, ctx.request_context)
        except InvalidEmailError as exc:
            raise Refused(422, "invalid_email", str(exc)) from None
        return Done(detail="If an account has this address, a reset link is on its way.")

    @router.post(
        "/password-reset/confirm",
        response_model=UserOut,
        summary="Set a new password with a reset link's token; every session of the account ends",
        openapi_extra=_body_doc(ResetConfirmBody, form=True),
        responses=_refusals(400, 403, 413, 422),
    )
    async def password_reset_confirm(request: Request) -> UserOut:
        body = await _body(request, ResetConfirmBody)
        ctx = get_context(request)
        try:
            user = await ctx.security.reset_password(
                body.token, body.new_password, ctx.request_context, second_factor=body.second_factor
            )
        except PasswordPolicyError as exc:
            raise Refused(422, "password_policy", str(exc)) from None
        except SecondFactorRequired:
            raise Refused(
                401, "second_factor_required", "This account has two-factor sign-in: send second_factor."
            ) from None
        except AuthenticationError:
            raise Refused(400, "invalid_link", INVALID_LINK) from None
        return user_out(user)

    @router.post(
        "/verify-email",
        response_model=UserOut,
        summary="Confirm the account's address with a verification link's token",
        openapi_extra=_body_doc(TokenBody, form=True),
        responses=_refusals(400, 403, 413, 422),
    )
    async def verify_email(request: Request) -> UserOut:
        body = await _body(request, TokenBody)
        try:
            return user_out(await get_context(request).security.verify_email(body.token))
        except AuthenticationError:
            raise Refused(400, "invalid_link", INVALID_LINK) from None

    @router.post(
        "/verify-email/request",
        response_model=Done,
        status_code=202,
        summary="Mail a verification link to the signed-in account's address",
        responses=_refusals(401, 403, 422, 429),
    )
    async def verify_email_request(request: Request, user: SessionUser) -> Done:
        if user.email is None:
            raise Refused(422, "no_email", "The account has no email address to verify.")
        await limit_per_ip(request, "account-mail", "rate_limit_account_mail")
        await limit_per_target(request, "account-mail-account", f"user:{user.id}")
        await get_context(request).security.request_email_verification(user.id)
        return Done(detail="A verification link is on its way.")

    return router


def _code(exc: Exception) -> str:
    return {
        PasswordPolicyError: "password_policy",
        InvalidUsernameError: "invalid_username",
        InvalidEmailError: "invalid_email",
    }.get(type(exc), "invalid_body")
