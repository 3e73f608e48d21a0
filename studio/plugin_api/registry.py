"""Technique discovery through the `studio.techniques` entry-point group (lazy, fault-tolerant)."""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points

from studio.core.errors import PluginError
from studio.plugin_api.technique import Stage, Technique

GROUP = "studio.techniques"


class Registry:
    """Entry points are listed at start-up but imported on first use; a plugin that fails to
    import is recorded in `errors` and skipped — never fatal."""

    def __init__(self, eps: list[EntryPoint] | None = None):
        if eps is None:
            eps = list(entry_points(group=GROUP))
        self._eps: dict[str, EntryPoint] = {}
        for ep in eps:
            self._eps.setdefault(ep.name, ep)
        self._loaded: dict[str, Technique] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self._eps)

    def get(self, name: str) -> Technique:
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            if name in self.errors:
                raise PluginError(f"technique {name!r} is unavailable: {self.errors[name]}")
            ep = self._eps.get(name)
            if ep is None:
                raise PluginError(f"unknown technique {name!r}", hint=f"known: {', '.join(self.names())}")
            try:
                obj = ep.load()
                tech = obj() if isinstance(obj, type) else obj
                for attr in ("name", "stage", "Params", "applies_to", "estimate", "apply"):
                    if not hasattr(tech, attr):
                        raise TypeError(f"missing {attr!r}")
                if not isinstance(tech.stage, Stage):
                    tech.stage = Stage(tech.stage)
            except Exception as e:  # noqa: BLE001 - any plugin failure is reported, not fatal
                self.errors[name] = f"{type(e).__name__}: {e} (entry point {ep.value})"
                raise PluginError(f"technique {name!r} failed to load: {self.errors[name]}") from e
            self._loaded[name] = tech
            return tech

    def available(self) -> dict[str, Technique]:
        """Every technique that loads; broken ones end up in `errors`."""
        out = {}
        for n in self.names():
            try:
                out[n] = self.get(n)
            except PluginError:
                pass
        return out

    def by_stage(self, stage: Stage) -> dict[str, Technique]:
        return {n: t for n, t in self.available().items() if t.stage == stage}


_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None:
        _default = Registry()
    return _default
