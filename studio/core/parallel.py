"""Fan-out of independent evaluations: inline, a local spawn process pool, or Ray.

Sweeps and searches hand `TaskPool.imap_unordered(fn, args_list)` a module-level function and
picklable arguments; results come back in completion order as `(index, result)`. A task that
raises does not stop the others: its result is `TaskFailure(message)`. Cancel (`ctx.cancel()`)
is honoured between results: pending tasks are dropped and JobCancelled is raised; everything
already yielded stays with the caller.

Choice of backend (`make_pool`):
* `workers <= 1` and no Ray: inline (same process; cheapest, used by tests).
* otherwise a `ProcessPoolExecutor` with the spawn start method (safe next to Qt and ORT threads).
* `ray="auto"` (a running cluster), `ray="local"` (start one here) or `ray="HOST:PORT"` when the
  `ray` package is importable; an address that does not answer gives a warning and the local pool.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from studio.core.errors import JobCancelled, StudioError

DEFAULT_WORKERS = 2
POLL_S = 0.1


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised: the one-line reason (the search records it and goes on)."""

    message: str
    detail: str = ""


def _call(fn: Callable, args: tuple) -> Any:
    """Worker-side wrapper: exceptions become TaskFailure so one bad candidate is just a row."""
    try:
        return fn(*args)
    except StudioError as e:
        return TaskFailure(str(e))
    except Exception as e:  # noqa: BLE001 - reported to the caller as a failed task
        return TaskFailure(f"{type(e).__name__}: {e}", traceback.format_exc()[-2000:])


@dataclass
class TaskPool:
    """Where tasks run. `kind` is "inline", "process" or "ray"; `warnings` say why a requested
    backend was not used."""

    kind: str = "inline"
    workers: int = 1
    warnings: list[str] = field(default_factory=list)
    address: str | None = None
    _executor: Any = None
    _ray: Any = None

    # ------------------------------------------------------------------ running

    def imap_unordered(self, fn: Callable, arg_list: Sequence[tuple], ctx=None) -> Iterator[tuple[int, Any]]:
        """Yield `(index, result)` as tasks finish; raise JobCancelled when `ctx` is cancelled."""
        if not arg_list:
            return
        if self.kind == "inline":
            for i, args in enumerate(arg_list):
                _check(ctx)
                yield i, _call(fn, args)
            return
        if self.kind == "ray":
            yield from self._ray_map(fn, arg_list, ctx)
            return
        ex = self._process_executor()
        futures = {ex.submit(_call, fn, args): i for i, args in enumerate(arg_list)}
        pending = set(futures)
        try:
            while pending:
                if ctx is not None and ctx.cancelled:
                    raise JobCancelled()
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for f in done:
                    try:
                        res = f.result()
                    except Exception as e:  # noqa: BLE001 - a dead worker (BrokenProcessPool)
                        res = TaskFailure(f"worker process failed: {type(e).__name__}: {e}")
                    yield futures[f], res
        finally:
            for f in pending:
                f.cancel()

    def _process_executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        return self._executor

    def _ray_map(self, fn, arg_list, ctx):
        ray = self._ray
        remote = ray.remote(_call)
        refs = {remote.remote(fn, args): i for i, args in enumerate(arg_list)}
        pending = list(refs)
        try:
            while pending:
                if ctx is not None and ctx.cancelled:
                    raise JobCancelled()
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                for r in done:
                    try:
                        res = ray.get(r)
                    except Exception as e:  # noqa: BLE001 - a task lost with its Ray worker
                        res = TaskFailure(f"ray task failed: {type(e).__name__}: {e}")
                    yield refs[r], res
        finally:
            for r in pending:
                try:
                    ray.cancel(r, force=True)
                except Exception:  # noqa: BLE001,S110 - best effort on shutdown
                    pass

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        if self.kind == "inline":
            return "in this process"
        if self.kind == "process":
            return f"local process pool ({self.workers} workers, spawn)"
        return f"Ray ({self.address or 'local'})"


def _check(ctx) -> None:
    if ctx is not None and ctx.cancelled:
        raise JobCancelled()


def _address_answers(address: str, timeout_s: float = 2.0) -> bool:
    """A TCP connect to HOST:PORT (ray://HOST:PORT too) answers within the timeout."""
    a = address.split("://", 1)[-1]
    host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def make_pool(workers: int = DEFAULT_WORKERS, ray: str | None = None) -> TaskPool:
    """A TaskPool for `workers` local processes, or Ray at `ray` ("auto", "local" or an address).
    Never raises for an unreachable Ray: it warns and falls back to the local pool."""
    workers = max(int(workers), 1)
    local = TaskPool("process" if workers > 1 else "inline", workers)
    if not ray:
        return local
    try:
        import ray as ray_mod
    except ImportError:
        local.warnings.append(f"--ray {ray}: the `ray` package is not installed; using {local.describe()}")
        return local
    if ray not in ("auto", "local") and not _address_answers(ray):
        local.warnings.append(f"Ray at {ray} does not answer; using {local.describe()}")
        return local
    t0 = time.monotonic()
    try:
        if not ray_mod.is_initialized():
            if ray == "local":
                ray_mod.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray_mod.init(address=ray, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - ConnectionError and friends: fall back
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        local.warnings.append(f"Ray ({ray}) could not be reached ({first}); using {local.describe()}")
        return local
    pool = TaskPool("ray", workers, address=None if ray == "local" else ray)
    pool._ray = ray_mod
    if time.monotonic() - t0 > 30:
        pool.warnings.append("Ray took over 30 s to start")
    return pool
