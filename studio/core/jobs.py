"""Generator jobs (napari style) and a plain-callback context (Orange3 style).

A job is `def job(ctx: JobContext) -> Generator[Progress, None, R]`: each `yield` is a progress
point and a cancel point; the return value is the result. Engine code that is not a generator
calls `ctx.report(fraction, message)`, which raises JobCancelled when a cancel was requested.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from studio.core.errors import JobCancelled, JobCrashedError, StudioError

R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    fraction: float  # 0..1, or -1 when unknown
    message: str = ""
    payload: Any = None  # optional partial result (a measured candidate, a loss value, ...)


class JobContext:
    """Carries cancel state and a progress callback; safe to share across threads."""

    def __init__(self, on_progress: Callable[[Progress], None] | None = None, cancel_event=None):
        self._cancel = cancel_event if cancel_event is not None else threading.Event()
        self._on_progress = on_progress
        self._lo, self._hi = 0.0, 1.0

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def report(self, fraction: float, message: str = "", payload: Any = None) -> None:
        """Report progress of the current sub-range and honour cancel."""
        self.check()
        if self._on_progress is not None:
            f = -1.0 if fraction < 0 else self._lo + (self._hi - self._lo) * min(max(fraction, 0.0), 1.0)
            self._on_progress(Progress(f, message, payload))

    def sub(self, start: float, end: float) -> JobContext:
        """A child context whose 0..1 maps into [start, end] of this one (Orange3 wrap_callback)."""
        child = JobContext(self._on_progress, self._cancel)
        span = self._hi - self._lo
        child._lo, child._hi = self._lo + span * start, self._lo + span * end
        return child


def drive(gen: Generator[Progress, None, R], ctx: JobContext | None = None) -> R:
    """Run a generator job to completion in this thread; forward progress; honour cancel."""
    ctx = ctx or JobContext()
    try:
        while True:
            p = next(gen)
            ctx.check()
            if ctx._on_progress is not None and isinstance(p, Progress):
                ctx._on_progress(p)
    except StopIteration as stop:
        return stop.value
    except JobCancelled:
        gen.close()
        raise


def forward(gen: Generator[Progress, None, R], ctx: JobContext) -> R:
    """Run a sub-generator job inside another, mapping its progress into `ctx`'s range."""
    try:
        while True:
            p = next(gen)
            if isinstance(p, Progress):
                ctx.report(p.fraction, p.message, p.payload)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def as_generator(fn: Callable[[JobContext], R], ctx: JobContext) -> Iterator[Progress]:
    """Turn a callback-style function into a generator job by running it in a thread."""
    import queue

    q: queue.Queue = queue.Queue()
    result: dict = {}
    child = JobContext(q.put, ctx._cancel)

    def target():
        try:
            result["value"] = fn(child)
        except BaseException as e:  # noqa: BLE001 - forwarded to the caller
            result["error"] = e
        finally:
            q.put(None)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    while True:
        item = q.get()
        if item is None:
            break
        yield item
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


# ---------------------------------------------------------------- subprocess isolation


def _child_main(conn, fn, args, kwargs):
    def on_progress(p: Progress):
        conn.send(("progress", p))

    ctx = JobContext(on_progress)
    try:
        out = fn(ctx, *args, **kwargs)
        conn.send(("ok", out))
    except StudioError as e:
        conn.send(("studio_error", (type(e).__name__, str(e))))
    except JobCancelled:
        conn.send(("cancelled", None))
    except BaseException as e:  # noqa: BLE001
        conn.send(("error", (type(e).__name__, str(e), traceback.format_exc())))
    finally:
        conn.close()


def run_in_subprocess(
    fn: Callable[..., R],
    *args,
    ctx: JobContext | None = None,
    timeout_s: float | None = None,
    memory_limit_bytes: int | None = None,
    **kwargs,
) -> Iterator[Progress]:
    """Generator job: run `fn(child_ctx, *args)` in a spawned process, stream its progress back.

    A segfault, os._exit, or an out-of-memory kill becomes JobCrashedError; cancel terminates the
    child. `fn` must be importable (module-level) and its arguments picklable.
    """
    ctx = ctx or JobContext()
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe(duplex=False)
    target = _child_main
    if memory_limit_bytes:
        target = _LimitedTarget(memory_limit_bytes)
    proc = spawn.Process(target=target, args=(child, fn, args, kwargs), daemon=True)
    proc.start()
    child.close()
    t0 = time.monotonic()
    result: Any = None
    try:
        while True:
            if ctx.cancelled:
                proc.terminate()
                proc.join(5)
                raise JobCancelled()
            if timeout_s and time.monotonic() - t0 > timeout_s:
                proc.kill()
                proc.join(5)
                raise JobCrashedError(
                    f"job {getattr(fn, '__name__', fn)} ran past its {timeout_s:.0f} s limit"
                )
            if parent.poll(0.05):
                try:
                    kind, value = parent.recv()
                except EOFError:
                    break
                if kind == "progress":
                    yield value
                elif kind == "ok":
                    result = value
                    proc.join(10)
                    return result
                elif kind == "studio_error":
                    proc.join(10)
                    raise _studio_error(value[0], value[1])
                elif kind == "cancelled":
                    raise JobCancelled()
                else:
                    proc.join(10)
                    raise JobCrashedError(
                        f"job failed in its subprocess: {value[0]}: {value[1]}", hint=value[2][-2000:]
                    )
            elif not proc.is_alive():
                break
    finally:
        if proc.is_alive():
            proc.kill()
        parent.close()
    proc.join(5)
    code = proc.exitcode
    reason = _describe_exit(code)
    raise JobCrashedError(f"job {getattr(fn, '__name__', fn)} crashed: {reason}; the studio is unaffected")


def _studio_error(type_name: str, message: str) -> StudioError:
    """The child's StudioError as the same subclass (so callers can tell a RecipeError apart)."""
    from studio.core import errors

    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, StudioError) and cls is not JobCrashedError:
        err = StudioError.__new__(cls)
        StudioError.__init__(err, message)  # message is already formatted (layer, hint)
        if cls is errors.RecipeError:
            err.layer = err.field = None
        return err
    return StudioError(message)


def _describe_exit(code: int | None) -> str:
    import signal

    if code is None:
        return "no exit code"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        if name == "SIGKILL":
            return "killed by SIGKILL (out of memory?)"
        return f"killed by {name}"
    return f"exited with code {code} before returning a result"


class _LimitedTarget:
    """Child entry that caps its address space first (so a memory hog fails, not the machine)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, conn, fn, args, kwargs):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (self.limit, self.limit))
        _child_main(conn, fn, args, kwargs)
