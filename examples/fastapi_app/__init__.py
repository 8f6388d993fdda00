"""A notes service on FastAPI behind fundaments: ``uvicorn examples.fastapi_app:app``.

- ``/auth/...``: fundaments' JSON login, logout, registration, sessions, CSRF, password endpoints;
- ``/notes``: the signed-in user's notes, bodies encrypted at rest and bound to their owner;
- ``/admin/stats``: behind the ``notes:admin`` permission.

Configuration as for ``python main.py``: ``.env`` and the environment (DATABASE_URL, ...). On a
fresh checkout the first start writes new keys to ``.env``, as main.py does. README.md, "FastAPI".
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, WebSocket
from pydantic import BaseModel, Field

from fundaments.bootstrap import Fundaments
from fundaments.config import Settings, ensure_env_keys, env_file_path, load_settings
from fundaments.errors import DecryptionError
from fundaments.security import Security, User
from fundaments.web import Refused, auth_router, current_user, get_security, install, require_permission

from .notes import Notes, StoredNote

Me = Annotated[User, Depends(current_user)]
Facade = Annotated[Security, Depends(get_security)]


class NoteIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=100_000)


class NoteOut(BaseModel):
    id: int
    title: str
    body: str


class NotePage(BaseModel):
    notes: list[NoteOut]
    next_after: int | None  # pass as ?after= for the next page; None: this was the last


def local_settings() -> Settings:
    """Settings from .env and the environment; fresh keys written to .env on the first start."""
    ensure_env_keys(env_file_path())
    return load_settings()


def create_app(
    settings: Settings | None = None, notes_path: Path | None = None, fundaments: Fundaments | None = None
) -> FastAPI:
    """The service; ``fundaments=``: one started already (tests), else started by the lifespan."""
    notes_file = notes_path or Path(os.environ.get("NOTES_DB", "var/notes.db"))
    state: dict[str, Notes] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["notes"] = Notes(notes_file)  # fundaments has started already (install)
        yield

    app = FastAPI(title="notes", lifespan=lifespan)
    if fundaments is not None:
        install(app, fundaments=fundaments)
    else:
        install(app, settings or local_settings)
    app.include_router(auth_router(registration=True), prefix="/auth")

    def opened(security: Security, note: StoredNote) -> NoteOut:
        try:
            body = security.decrypt_data(note.ciphertext, context=f"note:{note.owner_id}")
        except DecryptionError:  # tampered, or moved from another owner's row
            raise Refused(409, "note_unreadable", "This note cannot be decrypted.") from None
        return NoteOut(id=note.id, title=note.title, body=body)

    @app.post("/notes", status_code=201)
    async def add_note(note: NoteIn, user: Me, security: Facade) -> NoteOut:
        ciphertext = security.encrypt_data(note.body, context=f"note:{user.id}")
        note_id = await state["notes"].add(user.id, note.title, ciphertext)
        return NoteOut(id=note_id, title=note.title, body=note.body)

    @app.get("/notes")
    async def list_notes(
        user: Me, security: Facade, after: int = 0, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> NotePage:
        page = await state["notes"].page(user.id, after, limit)
        return NotePage(
            notes=[opened(security, n) for n in page], next_after=page[-1].id if len(page) == limit else None
        )

    @app.get("/notes/{note_id}")
    async def read_note(note_id: int, user: Me, security: Facade) -> NoteOut:
        note = await state["notes"].get(user.id, note_id)
        if note is None:  # another user's note is "not found" too
            raise Refused(404, "note_not_found", "You have no note with this id.")
        return opened(security, note)

    @app.delete("/notes/{note_id}", status_code=204)
    async def delete_note(note_id: int, user: Me) -> None:
        if not await state["notes"].delete(user.id, note_id):
            raise Refused(404, "note_not_found", "You have no note with this id.")

    @app.websocket("/live")
    async def live(websocket: WebSocket, user: Me) -> None:
        """A signed-in socket (cookie from this site's pages, or a bearer token): the middleware
        authenticated the handshake; without a session ``current_user`` closes it with 1008."""
        await websocket.accept()
        await websocket.send_json({"user": user.username})
        async for message in websocket.iter_text():
            await websocket.send_json({"echo": message, "user": user.username})

    @app.get("/admin/stats")
    async def stats(admin: Annotated[User, Depends(require_permission("notes:admin"))]) -> dict[str, int]:
        notes, owners = await state["notes"].counts()
        return {"notes": notes, "owners": owners}

    return app


app = create_app()
