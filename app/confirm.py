"""Confirmation pages for destructive actions: a GET says what will happen, a POST does it.

A destructive POST acts only when its form carries ``confirmed=yes``, which only the confirmation
page's form sends: the row buttons of a list lead to the confirmation page, and a POST without the
field (an old bookmark, a replayed or hand-made form) is sent there instead of acting. The
confirmation form carries the CSRF token like every other form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

if TYPE_CHECKING:  # app.console imports this module
    from app.console import Console

CONFIRM_FIELD = "confirmed"


def confirmed(form: FormData) -> bool:
    """True when the form was sent from a confirmation page."""
    return form.get(CONFIRM_FIELD) == "yes"


def to_confirmation(path: str, fields: Mapping[str, str] | None = None) -> Response:
    """A 303 to the confirmation page at ``path`` (GET), keeping the fields that name the target."""
    query = urlencode({k: v for k, v in (fields or {}).items() if v})
    return RedirectResponse(f"{path}?{query}" if query else path, 303)


async def confirmation_page(
    console: Console,
    request: Request,
    *,
    title: str,
    consequences: Sequence[str],
    action: str,
    fields: Mapping[str, str],
    button: str,
    cancel: str,
) -> Response:
    """The page asking to confirm: what will happen, a form POSTing to ``action`` with ``fields``
    and ``confirmed=yes``, and a way back to ``cancel``. Every text is the caller's own sentence or
    a stored name (a role, a username), never text taken from the request."""
    return await console.render(
        request,
        "confirm.html",
        title=title,
        consequences=consequences,
        action=action,
        fields=fields,
        button=button,
        cancel=cancel,
        confirm_field=CONFIRM_FIELD,
    )
