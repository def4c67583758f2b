"""One thread runs every model call; sessions take turns.

torch already uses every core for one call, so calls run one at a time. Each session has at most
one job waiting (its captions are decoded in order), and the worker serves sessions round-robin,
final captions before tentative ones: a busy stream cannot starve the others, and tentative
captions only use time that no final needs. The event loop awaits futures and never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

FINAL, PARTIAL = 0, 1  # job priorities: lower runs first


@dataclass
class _Job:
    call: Callable[[], Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    priority: int


class ModelWorker:
    """``await worker.run(session_id, call, priority)`` runs ``call()`` on the worker thread."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}  # session id -> its waiting job (insertion order = arrival)
        self._turn: list[str] = []  # session ids, rotated as they are served
        self._ready = threading.Condition()
        self._stopped = False
        self.busy_seconds = 0.0
        self._thread = threading.Thread(target=self._serve, name="asr-model-worker", daemon=True)
        self._thread.start()

    def run(self, session_id: str, call: Callable[[], Any], priority: int = FINAL) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            if self._stopped:
                raise RuntimeError("the model worker has stopped")
            if session_id in self._jobs:
                raise RuntimeError(f"session {session_id} already has a job waiting")
            self._jobs[session_id] = _Job(call, future, loop, priority)
            if session_id not in self._turn:
                self._turn.append(session_id)
            self._ready.notify()
        return future

    def waiting(self) -> int:
        with self._ready:
            return len(self._jobs)

    def forget(self, session_id: str) -> None:
        """Drop a session's waiting job (its client left); a running job finishes."""
        with self._ready:
            job = self._jobs.pop(session_id, None)
            if session_id in self._turn:
                self._turn.remove(session_id)
        if job is not None:
            job.loop.call_soon_threadsafe(_cancel, job.future)

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join(timeout=60)

    def _next(self) -> tuple[str, _Job] | None:
        """The first session in turn order holding a job of the best priority waiting; moves it to the
        back."""
        if not self._jobs:
            return None
        best = min(job.priority for job in self._jobs.values())
        for session_id in self._turn:
            job = self._jobs.get(session_id)
            if job is not None and job.priority == best:
                del self._jobs[session_id]
                self._turn.remove(session_id)
                self._turn.append(session_id)
                return session_id, job
        return None

    def _serve(self) -> None:
        import time

        while True:
            with self._ready:
                while not self._stopped and not self._jobs:
                    self._ready.wait()
                if self._stopped:
                    pending = list(self._jobs.values())
                    self._jobs.clear()
                    for job in pending:
                        job.loop.call_soon_threadsafe(_cancel, job.future)
                    return
                session_id, job = self._next()
            began = time.perf_counter()
            try:
                result, error = job.call(), None
            except BaseException as caught:  # handed to the awaiting session; the worker goes on
                result, error = None, caught
                log.debug("session %s: model call failed: %r", session_id, caught)
            self.busy_seconds += time.perf_counter() - began
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _cancel(future: asyncio.Future) -> None:
    if not future.done():
        future.cancel()
