"""Run engine generator jobs on a QThreadPool; results and progress come back as signals.

A job function takes a JobContext and returns a generator (or a plain value). Every `yield` and
every `ctx.report` is a progress point and a cancel point; `Job.cancel()` sets the context's
cancel flag, so the job stops at its next progress point and emits `cancelled`.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import traceback
from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal

from studio.core.errors import JobCancelled, StudioError
from studio.core.jobs import JobContext, Progress, drive


class JobSignals(QObject):
    """Signals of one job. Lives in the GUI thread, so slots run there (queued connections)."""

    progress = Signal(float, str)
    payload = Signal(object)  # Progress.payload (a candidate, a loss value): never rate-limited
    finished = Signal(object)
    failed = Signal(str, str)  # message, details
    cancelled = Signal()
    ended = Signal()  # after any of finished / failed / cancelled


class Job(QRunnable):
    """One background job: `fn(ctx)` returning a generator job or a value."""

    def __init__(self, name: str, fn: Callable[[JobContext], object]):
        super().__init__()
        self.setAutoDelete(False)  # the manager keeps it until it ended
        self.name = name
        self.fn = fn
        self.signals = JobSignals()
        self.ctx = JobContext(self._on_progress)
        self.state = "queued"  # queued | running | finished | failed | cancelled
        self.fraction = 0.0
        self.message = ""
        self.started_at: float | None = None
        self.error: tuple[str, str] | None = None
        self.result = None
        self.done = threading.Event()
        self.launched = False  # handed to a thread pool (JobManager starts jobs one loop turn later)
        self.workspace_id: str | None = None  # its row in the open workspace's job log, if logged
        self._last_emit = 0.0

    def cancel(self) -> None:
        self.ctx.cancel()
        if self.state == "queued":
            self.message = "cancelling"

    def eta_s(self) -> float | None:
        """Seconds left, extrapolated from elapsed time and progress fraction."""
        if self.started_at is None or self.fraction <= 0.02 or self.state != "running":
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed * (1 - self.fraction) / self.fraction

    def _on_progress(self, p: Progress) -> None:
        if p.fraction >= 0:
            self.fraction = p.fraction
        self.message = p.message
        if p.payload is not None:
            self.signals.payload.emit(p.payload)
        now = time.monotonic()
        # Rate-limit to ~30 Hz so a fast inner loop cannot flood the GUI thread.
        if now - self._last_emit > 0.033 or p.fraction >= 1.0:
            self._last_emit = now
            self.signals.progress.emit(self.fraction, p.message)

    def run(self) -> None:
        self.state = "running"
        self.started_at = time.monotonic()
        try:
            self.ctx.check()
            out = self.fn(self.ctx)
            if inspect.isgenerator(out):
                out = drive(out, self.ctx)
            self.ctx.check()
            self.result = out
            self.state = "finished"
            self.fraction = 1.0
            self.signals.finished.emit(out)
        except JobCancelled:
            self.state = "cancelled"
            self.signals.cancelled.emit()
        except StudioError as e:
            self.state = "failed"
            self.error = (e.message, e.hint or traceback.format_exc())
            self.signals.failed.emit(*self.error)
        except Exception as e:  # noqa: BLE001 - a job failure must never kill the window
            self.state = "failed"
            self.error = (f"{type(e).__name__}: {e}", traceback.format_exc())
            self.signals.failed.emit(*self.error)
        finally:
            self.done.set()
            self.signals.ended.emit()


class JobManager(QObject):
    """Starts jobs on its own thread pool and keeps them alive until they end."""

    job_added = Signal(object)

    def __init__(self, parent=None, max_threads: int = 2):
        super().__init__(parent)
        self.pool = QThreadPool()
        self.pool.setMaxThreadCount(max_threads)
        self.jobs: list[Job] = []
        self.extra_pools: list[QThreadPool] = []

    def start(self, name: str, fn: Callable[[JobContext], object], *, pool: QThreadPool | None = None) -> Job:
        """Start `fn` as a job (on `pool` when given: e.g. model loading must not queue behind
        long measure jobs)."""
        job = Job(name, fn)
        self.jobs.append(job)
        self.job_added.emit(job)
        if pool is not None and pool is not self.pool and pool not in self.extra_pools:
            self.extra_pools.append(pool)
        # Launched on the next event-loop turn: callers connect to `job.signals` right after
        # start(), and a job that ends within microseconds (a corrupt file) would otherwise emit
        # `failed` before anyone listens. Signals are delivered by that same loop, so nothing is late.
        QTimer.singleShot(0, self, functools.partial(self._launch, job, pool or self.pool))
        return job

    def _launch(self, job: Job, pool: QThreadPool) -> None:
        if not job.done.is_set():  # (cancel() or shutdown() may have dropped it meanwhile)
            job.launched = True
            pool.start(job)

    def cancel(self, job: Job) -> None:
        """Cancel a job: a queued one is taken off the pool, a running one stops at its next
        progress point."""
        job.cancel()
        if job.state == "queued" and (self.pool.tryTake(job) or not job.launched):
            job.state = "cancelled"
            job.done.set()
            job.signals.cancelled.emit()
            job.signals.ended.emit()

    def running(self) -> list[Job]:
        return [j for j in self.jobs if not j.done.is_set()]

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel every job and wait for the pool; returns False if something did not stop."""
        for j in self.running():
            j.cancel()
        pools = [self.pool, *self.extra_pools]
        for p in pools:
            p.clear()  # queued jobs never start
        for j in self.jobs:
            if j.state == "queued":
                j.state = "cancelled"
                j.done.set()
        return all(p.waitForDone(timeout_ms) for p in pools)
