"""The sessions part of the facade: validation, logout, listing and revocation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fundaments.models import RequestContext, Session
from fundaments.security._core import SecurityCore, text_argument, user_id_argument

MAX_SESSION_ID = 64


class SessionsPart(SecurityCore):
    """Sessions after login: ``validate_session``, ``user_logout``, ``logout_all``, listing, revoking."""

    async def validate_session(
        self, token: str, request_data: RequestContext | Mapping[str, Any], *, bearer: bool = False
    ) -> Session | None:
        """The live session for ``token`` from this client, or None (unknown, expired, revoked, or
        a binding mismatch, which also revokes it). ``bearer=True`` for a token from an
        ``Authorization: Bearer`` header: SESSION_BINDING_BEARER applies instead of SESSION_BINDING.
        After a privilege change the session comes back with a new token in ``rotated_token``: send
        it as the new cookie or header. The old token keeps answering, with that same new token, for
        SESSION_ROTATION_GRACE seconds (requests already in flight), then it is dead.

        Never raises for any token; raises ValueError when ``request_data`` lacks ``ip_address``
        or ``user_agent``.
        """
        return await self._sessions.validate(token, request_data, bearer=bearer)

    async def user_logout(self, token: str) -> bool:
        """End the session of ``token``; False if it was not a live session."""
        return await self._sessions.revoke(token)

    async def logout_all(self, user_id: int) -> int:
        """End every session of the user; how many ended."""
        user_id = user_id_argument(user_id)
        return await self._sessions.revoke_all(user_id, reason="logout_all")

    async def list_sessions(self, user_id: int) -> list[Session]:
        """The user's live sessions, newest first; each has a public ``id`` and no token."""
        user_id = user_id_argument(user_id)
        return await self._sessions.list_for_user(user_id)

    async def revoke_session(self, user_id: int, session_id: str) -> bool:
        """End one of the user's sessions by its public id; False if the user has no such session."""
        user_id = user_id_argument(user_id)
        session_id = text_argument(session_id, "session_id", MAX_SESSION_ID)
        return await self._sessions.revoke_by_id(user_id, session_id)
