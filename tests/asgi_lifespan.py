"""Run an ASGI application's lifespan in process, as a server does (httpx's ASGITransport does not)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class StartupFailed(Exception):
    """The application answered ``lifespan.startup.failed``; the message is the server's."""


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[list[dict[str, Any]]]:
    """Start-up on enter, shut-down on exit; yields the messages the application sent."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    started, stopped = asyncio.Event(), asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"].startswith("lifespan.startup."):
            started.set()
        elif message["type"].startswith("lifespan.shutdown."):
            stopped.set()

    task = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    )
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait([task, asyncio.ensure_future(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    failed = [m for m in sent if m["type"] == "lifespan.startup.failed"]
    if failed or not started.is_set():
        if not task.done():
            task.cancel()
        raise StartupFailed(failed[0].get("message", "") if failed else "the lifespan ended before start-up")
    try:
        yield sent
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 30)
