"""The audit page: events newest first, filtered, paged by key, with usernames and details.

Filters come from the query string and are checked, not guessed: a limit that is not a number, a
date that is not YYYY-MM-DD, a negative id is a 400 page saying which filter to fix (a filter
silently ignored shows events the administrator did not ask for). The "older" link pages by the
last event's id (``before=<id>``, ``WHERE id < ?``): no OFFSET, so a page costs the same at any depth.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.console import Console, ascii_number
from fundaments.security import MAX_AUDIT_PAGE

AUDIT_PERMISSION = "console:audit"
AUDIT_VERIFY_PERMISSION = "console:audit:verify"  # the full re-verification: admins (*) by default
DEFAULT_LIMIT = 100
MAX_LIMIT = min(1000, MAX_AUDIT_PAGE)
MAX_KIND = 64

BAD_FILTER = {
    "limit": f"The limit must be a whole number from 1 to {MAX_LIMIT}.",
    "user_id": "The user id must be a whole number from 1 up (a user's id, as the users page shows it).",
    "since": "The date must be a day written YYYY-MM-DD, for example 2026-01-31.",
    "before": "The page position must be an event number from 1 up; use the links below the table.",
    "kind": f"The kind must be at most {MAX_KIND} characters, without NUL or other control characters.",
}


class BadFilter(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


@dataclass(frozen=True, slots=True)
class AuditFilters:
    kind: str | None = None  # matched as a substring: "login" finds login.failed and login.succeeded
    user_id: int | None = None
    since: str | None = None  # YYYY-MM-DD, as given
    before: int | None = None
    limit: int = DEFAULT_LIMIT

    @property
    def since_timestamp(self) -> float | None:
        if self.since is None:
            return None
        return dt.datetime.strptime(self.since, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()

    def query(self, **changes: Any) -> str:
        """The query string of these filters with ``changes`` (None drops a key)."""
        limit = self.limit if self.limit != DEFAULT_LIMIT else None
        values = {"kind": self.kind, "user_id": self.user_id, "since": self.since, "before": self.before}
        values["limit"] = limit
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v is not None})


def audit_filters(query: Mapping[str, str]) -> AuditFilters:
    """The filters of the query string; BadFilter naming the first one that is not valid."""

    def number(name: str, maximum: int) -> int | None:
        text = query.get(name, "").strip()
        if not text:
            return None
        value = ascii_number(text, maximum)
        if value is None or value < 1:
            raise BadFilter(name)
        return value

    kind = query.get("kind", "").strip()
    if len(kind) > MAX_KIND or not kind.isprintable():
        raise BadFilter("kind")
    since = query.get("since", "").strip() or None
    if since is not None:
        try:
            dt.datetime.strptime(since, "%Y-%m-%d")
        except ValueError:
            raise BadFilter("since") from None
        if len(since) != 10:  # strptime also takes "2026-1-5"
            raise BadFilter("since")
    return AuditFilters(
        kind=kind or None,
        user_id=number("user_id", 2**63 - 1),
        since=since,
        before=number("before", 2**63 - 1),
        limit=number("limit", MAX_LIMIT) or DEFAULT_LIMIT,
    )


def shown_details(details: Mapping[str, Any]) -> str:
    """An event's details as one line, ``key: value`` pairs (the template escapes it)."""
    return ", ".join(
        f"{key}: {value if isinstance(value, str) else json.dumps(value)}" for key, value in details.items()
    )


class AuditPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def page(self, request: Request) -> Response:
        console = self.console
        user = await console.signed_in(request, AUDIT_PERMISSION)
        security = console.security
        raw = {k: v for k, v in request.query_params.items() if len(v) <= MAX_KIND and v.isprintable()}
        values: dict[str, Any] = {"raw": raw, "events": [], "names": {}}
        try:
            filters = audit_filters(request.query_params)
        except BadFilter as bad:
            status, values["error"], filters = 400, BAD_FILTER[bad.name], AuditFilters()
        else:
            status = 200
            events = await security.audit_events(
                user_id=filters.user_id,
                kind_contains=filters.kind,
                since=filters.since_timestamp,
                before_id=filters.before,
                limit=filters.limit,
            )
            ids = {i for e in events for i in (e.actor_user_id, e.subject_user_id) if i is not None}
            values["events"] = events
            values["names"] = await security.usernames(ids)  # one query for the page, not one per row
            if len(events) == filters.limit:
                values["older"] = "/admin/audit?" + filters.query(before=events[-1].id)
            if filters.before is not None:
                values["newest"] = "/admin/audit?" + filters.query(before=None)
        # Incremental: only the events since the last verification are hashed, off the event loop.
        chain = await security.verify_audit_chain()
        return await console.render(
            request,
            "admin_audit.html",
            status,
            chain=chain,
            full=security.last_full_audit_verification,
            can_verify_all=await security.check_permission(user.id, AUDIT_VERIFY_PERMISSION),
            filters=filters,
            details=shown_details,
            **values,
        )

    async def verify_all(self, request: Request) -> Response:
        """POST: re-verify every event and checkpoint MAC (seconds at a million events)."""
        await self.console.signed_in(request, AUDIT_VERIFY_PERMISSION)
        await self.console.security.verify_audit_chain(full=True)
        return RedirectResponse("/admin/audit", 303)
