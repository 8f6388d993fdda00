"""The refusals of fundaments.web's dependencies as JSON ``{"detail": ..., "code": ...}``.

:func:`~fundaments.web.current_user` and :func:`~fundaments.web.require_permission` raise
:class:`Refused`, an ``HTTPException`` with a stable ``code``. FastAPI and Starlette answer an
``HTTPException`` with ``{"detail": ...}``; :func:`~fundaments.web.install` registers
:func:`refused_handler` so the answer also names the code, as the middleware's own refusals do.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse


class Refused(HTTPException):
    """An HTTP refusal with a stable machine-readable ``code`` (``authentication_required``, …)."""

    def __init__(
        self, status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail, headers=dict(headers) if headers else None)
        self.code = code


def refusal_body(exc: Refused) -> dict[str, str]:
    return {"detail": str(exc.detail), "code": exc.code}


async def refused_handler(request: Request, exc: Refused) -> JSONResponse:
    return JSONResponse(refusal_body(exc), exc.status_code, headers=exc.headers)
