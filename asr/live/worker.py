"""The threads that run every model call for all live sessions: the scheduler of the live service.

``threads`` worker threads (``LiveModel.workers``: two on a CPU with two cores or more, each call on
half of its threads) serve one queue. On a 2-core CPU two calls of one thread each get more done than
one call on both cores: two threads made a live final's Whisper work 1.27x and its LLM work 1.08x
faster than one, while two one-thread calls side by side slowed each other ~8% (BENCHMARKS.md,
session 16). Jobs marked ``serial`` (the default: those touching the LLM engine, whose sequences and
page pool one thread at a time may change) run one at a time; the others (Whisper's encoder and
drafts) run beside them and each other. Each session has at most
one job waiting (its captions are decoded in order). Final captions go before tentative ones, so
tentative captions only use time that no final needs; within a priority the job whose work has
waited longest goes first (earliest ``due``: for a final, when its chunk's last audio arrived), so
a stream whose finals queued behind each other catches up before newer chunks of other streams
are served, and no stream starves (a job's due time only ages). Batched jobs (``run_batched``)
of several sessions that name the same batch call and priority run as one call: the job due
first picks the call, the others waiting for it join in the order they fell due (up to
``max_batch``). When no job waits, the worker runs its ``idle`` work (e.g. prefilling context that
finals left for later, ``LiveModel.settle_context``; serial) one piece at a time, so a job that arrives
waits for one piece at most. A thread takes the best job it may run: while a serial job runs, the
other threads take the best of the rest (a tentative caption's draft beside a final's LLM work). The
event loop awaits futures and never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

FINAL, PARTIAL = 0, 1  # job priorities: lower runs first
IDLE = 2  # what the worker's idle work is counted under in ``busy_by_priority``
MAX_BATCH = 8  # most sessions served by one batched call
RECORDS_KEPT = 20000  # the latest calls and jobs kept in ``calls`` and ``jobs_done`` (for benchmarks)

# items of several sessions -> (position in the items, its result) per item, in any order (an exception
# instance as the result fails that item only)
BatchCall = Callable[[list[Any]], Iterable[tuple[int, Any]]]


@dataclass(frozen=True)
class CallRecord:
    """One model call of the worker: its jobs' priority (``IDLE`` for idle work), when it began and
    ended (``time.monotonic``), how many sessions it served (0 for idle work), whether it was serial
    and which worker thread ran it."""

    priority: int
    began: float
    ended: float
    sessions: int
    serial: bool = True
    thread: int = 0


@dataclass(frozen=True)
class JobRecord:
    """One job's way through the worker (``time.monotonic``): submitted, its call began, its result
    handed back (a batched call hands each item's back as it is done); whether it was serial, and the
    name of what it called (e.g. ``LiveModel.final``)."""

    priority: int
    submitted: float
    began: float
    answered: float
    serial: bool = True
    call: str = ""


@dataclass(frozen=True)
class Then:
    """A job's next step: ``call(result)`` queued as a job of the same session, priority and due the moment
    the job's result comes (before its thread picks another job, so no other job slips between the two
    steps), ``serial`` or not; its result is the job's. A job that fails, or whose session is forgotten
    meanwhile, takes no next step."""

    call: Callable[[Any], Any]
    serial: bool = True


@dataclass
class _Job:
    session: str
    call: Callable[[], Any] | None  # a job of its own, or
    batch: BatchCall | None  # a batched job: ``batch([item, ...])`` with the items of other sessions
    item: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    priority: int
    due: float  # when its work became due (``time.monotonic``): the earliest due is served first
    serial: bool = True  # runs alone among serial jobs (it touches the LLM engine)
    then: Then | None = None
    forgotten: bool = False  # its session was forgotten while it ran: no next step
    submitted: float = field(default_factory=time.monotonic)


class ModelWorker:
    """``await worker.run(session_id, call, priority, due)`` runs ``call()`` on a worker thread;
    ``await worker.run_batched(session_id, batch, item, priority, due)`` runs ``item`` in one
    ``batch(items)`` call with the items other sessions have waiting for the same ``batch``. ``due``:
    when the job's work became due (``time.monotonic``; None: now); ``serial``: the job runs alone among
    serial jobs (False: beside any); ``then``: its next step (``Then``). ``idle()``: one piece of serial
    work for an idle worker; returns whether there was any. ``threads``: worker threads."""

    def __init__(self, max_batch: int = MAX_BATCH, idle: Callable[[], bool] | None = None,
                 threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"the worker needs at least one thread, not {threads}")
        self.max_batch, self.idle, self.threads = max_batch, idle, threads
        self.calls: deque[CallRecord] = deque(maxlen=RECORDS_KEPT)  # in order (for benchmarks)
        self.jobs_done: deque[JobRecord] = deque(maxlen=RECORDS_KEPT)  # in the order answered
        self._jobs: dict[str, _Job] = {}  # session id -> its waiting job
        self._running: dict[str, _Job] = {}  # session id -> its job running
        self._ready = threading.Condition()
        self._stopped = False
        self._serial_running = False  # a serial job (or idle work) runs on some thread
        self._idle_done = False  # the idle work said there is none left (until a job is done)
        self.busy_seconds = 0.0  # summed over the threads
        self.busy_by_priority = {FINAL: 0.0, PARTIAL: 0.0, IDLE: 0.0}  # busy seconds per job priority
        self._threads = [threading.Thread(target=self._serve, args=(index,), name=f"asr-model-worker-{index}",
                                          daemon=True) for index in range(threads)]
        for thread in self._threads:
            thread.start()

    def run(self, session_id: str, call: Callable[[], Any], priority: int = FINAL,
            due: float | None = None, serial: bool = True, then: Then | None = None) -> asyncio.Future:
        return self._submit(session_id, call, None, None, priority, due, serial, then)

    def run_batched(self, session_id: str, batch: BatchCall, item: Any, priority: int = FINAL,
                    due: float | None = None, serial: bool = True,
                    then: Then | None = None) -> asyncio.Future:
        return self._submit(session_id, None, batch, item, priority, due, serial, then)

    def _submit(self, session_id: str, call: Callable[[], Any] | None, batch: BatchCall | None, item: Any,
                priority: int, due: float | None, serial: bool, then: Then | None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job = _Job(session_id, call, batch, item, loop.create_future(), loop, priority,
                   time.monotonic() if due is None else due, serial, then)
        with self._ready:
            if self._stopped:
                raise RuntimeError("the model worker has stopped")
            if session_id in self._jobs:
                raise RuntimeError(f"session {session_id} already has a job waiting")
            self._jobs[session_id] = job
            self._ready.notify_all()
        return job.future

    def forget(self, session_id: str) -> None:
        """Drop a session's waiting job (its client left); a running job finishes, without its next step."""
        with self._ready:
            if session_id in self._running:
                self._running[session_id].forgotten = True
            job = self._jobs.pop(session_id, None)
        if job is not None:
            job.loop.call_soon_threadsafe(_cancel, job.future)

    def withdraw(self, session_id: str, priority: int) -> bool:
        """Take back a session's job of ``priority`` that still waits (not one running): its future gets
        None. E.g. a tentative caption of a chunk that has closed meanwhile, which would otherwise hold the
        stream's final back until every waiting final had run. Whether there was one."""
        with self._ready:
            job = self._jobs.get(session_id)
            if job is None or job.priority != priority:
                return False
            del self._jobs[session_id]
        job.loop.call_soon_threadsafe(_settle, job.future, None, None)
        return True

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)

    def _next(self) -> list[_Job]:
        """The job this thread may run (not a serial one while another runs) of the best priority due
        first, and for a batched job the others of that priority waiting for the same call, in the order
        they fell due (at most ``max_batch`` in all); none when no waiting job may run now."""
        runnable = {s: job for s, job in self._jobs.items() if not (job.serial and self._serial_running)}
        if not runnable:
            return []
        best = min(job.priority for job in runnable.values())
        waiting = sorted((s for s, job in runnable.items() if job.priority == best),
                         key=lambda s: runnable[s].due)
        lead = runnable[waiting[0]]
        chosen = [waiting[0]]
        if lead.batch is not None:
            chosen += [s for s in waiting[1:]
                       if runnable[s].batch == lead.batch and runnable[s].serial == lead.serial]
        self._serial_running = self._serial_running or lead.serial
        jobs = [self._jobs.pop(session_id) for session_id in chosen[: self.max_batch]]
        self._running.update((job.session, job) for job in jobs)
        return jobs

    def _take(self) -> list[_Job] | None:
        """Under the lock: wait for work this thread may run; the jobs, [] for a piece of idle work (the
        serial lane taken), None when the worker stops."""
        while True:
            if self._stopped:
                pending = list(self._jobs.values())
                self._jobs.clear()
                for job in pending:
                    job.loop.call_soon_threadsafe(_cancel, job.future)
                return None
            jobs = self._next() if self._jobs else []
            if jobs:
                return jobs
            if not self._jobs and self.idle is not None and not self._idle_done and not self._serial_running:
                self._serial_running = True
                return []
            self._ready.wait()

    def _serve(self, thread: int) -> None:
        while True:
            with self._ready:
                jobs = self._take()
            if jobs is None:
                return
            began, idle_left = time.monotonic(), True
            try:
                if not jobs:
                    idle_left = _run_idle(self.idle)
                elif jobs[0].batch is None:
                    self._run_one(jobs[0], began)
                else:
                    self._run_batch(jobs, began)
            finally:
                with self._ready:
                    self._done(jobs, idle_left, began, thread)

    def _done(self, jobs: list[_Job], idle_left: bool, began: float, thread: int) -> None:
        """Under the lock, after a call (``jobs`` [] for idle work): free the serial lane, count the call,
        wake the waiting threads. Idle work goes on after any job (a final may have left context to
        prefill) and stops when it says none is left."""
        serial = not jobs or jobs[0].serial
        if serial:
            self._serial_running = False
        self._idle_done = not idle_left
        ended = time.monotonic()
        priority = jobs[0].priority if jobs else IDLE
        self.calls.append(CallRecord(priority, began, ended, len(jobs), serial, thread))
        self.busy_seconds += ended - began
        self.busy_by_priority[priority] = self.busy_by_priority.get(priority, 0.0) + ended - began
        self._ready.notify_all()

    def _answer(self, job: _Job, began: float, result: Any, error: BaseException | None) -> None:
        """Hand ``job``'s result (or error) to its session, or its result to its next step (``Then``);
        record its way through the worker."""
        called = job.call or job.batch
        name = getattr(getattr(called, "func", called), "__qualname__", "")  # a functools.partial's function
        self.jobs_done.append(JobRecord(job.priority, job.submitted, began, time.monotonic(), job.serial,
                                        name))
        with self._ready:
            if self._running.get(job.session) is job:
                del self._running[job.session]
            if job.then is not None and error is None:
                if job.forgotten or self._stopped or job.session in self._jobs:
                    job.loop.call_soon_threadsafe(_cancel, job.future)
                else:  # the same future, settled by the next step
                    step = partial(job.then.call, result)
                    self._jobs[job.session] = _Job(job.session, step, None, None, job.future, job.loop,
                                                   job.priority, job.due, job.then.serial)
                    self._ready.notify_all()
                return
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)

    def _run_one(self, job: _Job, began: float) -> None:
        try:
            result, error = job.call(), None
        except BaseException as caught:  # handed to the awaiting session; the worker goes on
            result, error = None, caught
            log.debug("model call failed: %r", caught)
        self._answer(job, began, result, error)

    def _run_batch(self, jobs: list[_Job], began: float) -> None:
        """Settle each job as the batch call yields its result (a session need not wait for the others);
        a failure of the whole call fails the jobs it has not answered yet."""
        waiting = dict(enumerate(jobs))
        try:
            for position, result in jobs[0].batch([job.item for job in jobs]):
                failed = isinstance(result, BaseException)
                self._answer(waiting.pop(position), began, None if failed else result,
                             result if failed else None)
            if waiting:
                raise RuntimeError(f"the batch call answered {len(jobs) - len(waiting)} of {len(jobs)} items")
        except BaseException as caught:
            log.debug("batched model call failed: %r", caught)
            for job in waiting.values():
                self._answer(job, began, None, caught)


def _run_idle(idle: Callable[[], bool]) -> bool:
    """One piece of idle work; a failure is logged and ends idle work until the next job."""
    try:
        return idle()
    except Exception:
        log.exception("idle work failed")
        return False


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
