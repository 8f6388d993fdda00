"""Running the blocking file jobs from async code: a worker thread, progress on the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable

from fundaments.encryption.stream import PathLike, Progress

FileJob = Callable[..., None]


async def run_file_job(job: FileJob, src: PathLike, dst: PathLike, progress: Progress | None) -> None:
    """Run a blocking file job (encrypt_file/decrypt_file) in a worker thread, without blocking the loop.

    ``progress(done, total)`` runs on the event loop after each segment; an exception it raises stops
    the job. A cancellation stops the worker at its next segment, and the caller sees it only once
    the partial output is gone.
    """
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()

    def on_loop(done: int, total: int, delivered: concurrent.futures.Future[None]) -> None:
        try:
            assert progress is not None
            progress(done, total)
            delivered.set_result(None)
        except BaseException as exc:  # a failing callback stops the job, in the caller's task
            delivered.set_exception(exc)

    def report(done: int, total: int) -> None:  # runs in the worker thread, once per segment
        if progress is not None:
            # Wait until the callback has run on the loop: progress arrives in segment order,
            # and a cancellation it triggers is seen before the next segment.
            delivered: concurrent.futures.Future[None] = concurrent.futures.Future()
            loop.call_soon_threadsafe(on_loop, done, total, delivered)
            delivered.result()
        if cancelled.is_set():
            raise asyncio.CancelledError  # stops the worker; the partial output is removed

    worker = asyncio.ensure_future(asyncio.to_thread(job, src, dst, progress=report))
    try:
        await asyncio.shield(worker)
    except asyncio.CancelledError:
        cancelled.set()
        # Wait for the worker to stop at its next segment and remove its partial output, so
        # that when the cancellation reaches the caller no file is still being written.
        while not worker.done():  # within one segment; a repeated cancel must not cut it short
            try:
                await asyncio.wait([worker])
            except asyncio.CancelledError:
                continue
        raise
