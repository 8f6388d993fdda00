"""The mails fundaments sends to account holders: links that recover or confirm an account, and
security notices (ASVS 5.0 6.3.6/6.3.7: the owner learns of a change they did not make).

Each mail is plain text with an HTML alternative. Every value put into a mail is chosen by
fundaments (a link it built, a time, the client's IP as the request recorded it); the HTML part
escapes them anyway. Notices never carry a secret, and say what to do if the change was not
the reader's.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from urllib.parse import quote

from fundaments.config import Settings


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str  # the outbox kind: password_reset, email_verification, password_changed, ...
    subject: str
    text: str
    html: str


def link(settings: Settings, path: str, token: str) -> str:
    """``{PUBLIC_BASE_URL}{path}?token=…``: the page that takes the token."""
    return f"{settings.public_base_url.rstrip('/')}{path}?token={quote(token, safe='')}"


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _mail(kind: str, subject: str, greeting: str, paragraphs: list[str], url: str | None = None) -> Notice:
    text = "\n\n".join([greeting, *paragraphs[:1], *([url] if url else []), *paragraphs[1:]]) + "\n"
    body = [f"<p>{html.escape(greeting)}</p>", f"<p>{html.escape(paragraphs[0])}</p>"]
    if url:
        body.append(f'<p><a href="{html.escape(url, quote=True)}">{html.escape(url)}</a></p>')
    body += [f"<p>{html.escape(p)}</p>" for p in paragraphs[1:]]
    return Notice(kind, subject, text, "<!doctype html><html><body>" + "".join(body) + "</body></html>")


def password_reset(settings: Settings, username: str, token: str) -> Notice:
    minutes = settings.password_reset_ttl // 60
    return _mail(
        "password_reset",
        f"Reset your {settings.app_name} password",
        f"Hello {username},",
        [
            "Someone asked to reset the password of your account. To choose a new one, open this "
            "link (it works once):",
            f"The link expires in {minutes} minutes. If you did not ask for it, ignore this mail: "
            "your password stays as it is.",
        ],
        link(settings, "/reset-password", token),
    )


def email_verification(settings: Settings, username: str, token: str) -> Notice:
    hours = settings.email_verification_ttl // 3600
    return _mail(
        "email_verification",
        f"Confirm your email address for {settings.app_name}",
        f"Hello {username},",
        ["To confirm that this address is yours, open this link:", f"The link expires in {hours} hours."],
        link(settings, "/verify-email", token),
    )


def _security(
    settings: Settings, kind: str, subject: str, username: str, what: str, when: float, ip: str | None
) -> Notice:
    where = f" from the address {ip}" if ip else ""
    return _mail(
        kind,
        f"{settings.app_name}: {subject}",
        f"Hello {username},",
        [
            f"{what} on {_when(when)}{where}.",
            "If this was you, there is nothing to do. If it was not, reset your password now "
            '("Forgot password?" on the sign-in page) and tell your administrator.',
        ],
    )


def password_changed(
    settings: Settings, username: str, when: float, ip: str | None, *, by_administrator: bool
) -> Notice:
    what = (
        "An administrator set a new password for your account"
        if by_administrator
        else "The password of your account was changed"
    )
    return _security(settings, "password_changed", "your password was changed", username, what, when, ip)


def email_changed(settings: Settings, username: str, new_address: str, when: float) -> Notice:
    masked = _mask(new_address)
    return _security(
        settings,
        "email_changed",
        "your email address was changed",
        username,
        f"The email address of your account was changed to {masked}",
        when,
        None,
    )


def account_locked(settings: Settings, username: str, until: float, when: float, ip: str | None) -> Notice:
    return _security(
        settings,
        "account_locked",
        "your account was locked",
        username,
        f"Too many wrong passwords locked your account until {_when(until)}; the last attempt came",
        when,
        ip,
    )


def new_device_login(settings: Settings, username: str, when: float, ip: str | None) -> Notice:
    return _security(
        settings,
        "new_device_login",
        "a sign-in from a new device",
        username,
        "Your account was signed in to from a device it had not used before",
        when,
        ip,
    )


def second_factor_changed(
    settings: Settings, username: str, what: str, when: float, *, by_administrator: bool = False
) -> Notice:
    """``what``: ``enabled``, ``disabled`` (TOTP) or ``recovery_codes`` (a new set)."""
    texts = {
        "enabled": ("two-factor sign-in was turned on", "An authenticator app was set up for your account"),
        "disabled": (
            "two-factor sign-in was turned off",
            "An administrator turned off two-factor sign-in for your account"
            if by_administrator
            else "Two-factor sign-in was turned off for your account",
        ),
        "recovery_codes": (
            "new recovery codes",
            "New recovery codes were made for your account (the earlier ones no longer work)",
        ),
    }
    subject, text = texts[what]
    return _security(settings, f"mfa_{what}", subject, username, text, when, None)


def recovery_code_used(settings: Settings, username: str, left: int, when: float, ip: str | None) -> Notice:
    return _security(
        settings,
        "recovery_code_used",
        "a recovery code was used",
        username,
        f"A recovery code was used to sign in to your account ({left} left)",
        when,
        ip,
    )


def _mask(address: str) -> str:
    """``a***@example.com``: enough for the owner to recognise, little for anyone else."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"
