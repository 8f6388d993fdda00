"""A real uvicorn server on a free loopback port, in the test's own event loop (lifespan on)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def live_server(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yields its base URL, http://127.0.0.1:<port>."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(
        uvicorn.Config(
            app, lifespan="on", proxy_headers=False, log_config=None, log_level="warning", **config
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # the lifespan ran: fundaments is up
            if task.done():
                task.result()  # start-up failed: raise what the server raised
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()
