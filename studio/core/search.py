"""Auto-compress to a target: greedy allocation from sensitivity tables, measured refinement,
accuracy-aware fallback; every measured variant kept; the measured Pareto front out.

1. Greedy (AIMET greedy ratio selection): for a shared loss threshold τ every layer takes its most
   compressive option whose *estimated* loss (sensitivity drops of its structural + precision
   settings) is ≤ τ; a binary search over τ finds the smallest τ whose *estimated* cost meets the
   targets. That plan and two neighbours along τ are measured.
2. Refinement (NetAdapt): while the best measured plan misses a target, each step measures a few
   single-layer moves (the layers with the best estimated loss per saved cost) with real ORT runs
   and keeps the best measured trade.
3. Fallback: when the target is met but the measured loss is over `max_drop`, the layers costing
   most accuracy go back to milder settings (higher precision) until the loss fits.

Decisions use the calibration data only; the held-out data (if given) is measured for every
candidate and reported next to it, never used to choose. An unreachable target returns the closest
measured plan with a message, not an exception. Cancel keeps every finished evaluation: each one
was already yielded as `Progress(payload={"type": "candidate", "candidate": {...}})`.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from studio.core.errors import JobCancelled, StudioError
from studio.core.evaluate import Dataset, make_session
from studio.core.graph import analyze
from studio.core.jobs import JobContext, Progress
from studio.core.metrics import Metric
from studio.core.model import ModelHandle
from studio.core.onnx_utils import model_nbytes
from studio.core.recipe import Calibration, LayerPlan, Recipe
from studio.core.sensitivity import (
    SensitivityTable,
    Setting,
    cosine_mean,
    downstream_layers,
    metric_drop,
)

# Assumed speed of a quantized weighted layer relative to float32 (only for the *estimate* that
# ranks plans before they are measured; every latency shown is measured). int8_dynamic: MiniLM
# with int8 on all 36 MatMuls measured ~0.4× the float32 latency (1 thread, batch 8).
ASSUMED_SPEED = {"int8_dynamic": 0.35, "int8_static": 0.7, "int4_weight": 0.8}
WEIGHTED_TIME_SHARE = 0.85  # assumed share of run time spent in weighted layers (estimate only)
SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


# ---------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """`size<=10x`, `size<=2MB`, `size<=ort-int8`, `latency=1.3x` (1.3× faster), `latency<=5ms`,
    `macs<=50%` / `macs=4x`. `ratio` is a reduction factor (original / new), `value` an absolute
    limit (bytes / ms per batch / MACs per sample), `ref` a named reference."""

    kind: str  # size | latency | macs
    ratio: float | None = None
    value: float | None = None
    ref: str | None = None
    batch_size: int = 1
    text: str = ""

    def limit(self, baseline: float, refs: dict[str, float]) -> float:
        """The absolute limit in the target's unit, given the original's measured value."""
        if self.ref is not None:
            return refs[self.ref]
        if self.ratio is not None:
            return baseline / self.ratio
        return float(self.value)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ratio": self.ratio, "value": self.value, "ref": self.ref,
                "batch_size": self.batch_size, "text": self.text}  # fmt: skip


def parse_target(text: str, *, batch_size: int = 1) -> Target:
    """Parse one `--target`; StudioError with the accepted forms on anything else."""
    t = text.strip().lower().replace(" ", "")
    m = re.fullmatch(r"(size|latency|macs)(<=|=|<)(.+)", t)
    if not m:
        raise StudioError(
            f"target {text!r} not understood",
            hint="use size=10x, size<=2MB, size<=ort-int8, latency=1.3x, latency<=5ms, macs=4x or macs<=50%",
        )
    kind, _, rhs = m.groups()
    if kind == "size" and rhs in ("ort-int8", "ort_int8", "ort"):
        return Target(kind, ref="ort-int8", text=text, batch_size=batch_size)
    try:
        if rhs.endswith("x"):
            r = float(rhs[:-1])
            if r <= 0:
                raise ValueError
            return Target(kind, ratio=r, text=text, batch_size=batch_size)
        if rhs.endswith("%"):
            f = float(rhs[:-1]) / 100
            if not 0 < f:
                raise ValueError
            return Target(kind, ratio=1 / f, text=text, batch_size=batch_size)
        if kind == "latency":
            v = float(rhs[:-2]) if rhs.endswith("ms") else float(rhs)
            return Target(kind, value=v, text=text, batch_size=batch_size)
        if kind == "size":
            mm = re.fullmatch(r"([0-9.e+]+)([kmg]i?b|b)?", rhs)
            if not mm:
                raise ValueError
            return Target(kind, value=float(mm.group(1)) * SIZE_UNITS[mm.group(2) or "b"], text=text)
        return Target(kind, value=float(rhs.replace("g", "e9").replace("m", "e6")), text=text)
    except ValueError:
        raise StudioError(
            f"target {text!r}: {rhs!r} is not a ratio (10x, 50%) or an amount (2MB, 5ms)"
        ) from None


# ---------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """One measured variant. `assignment`: layer → [setting keys]; `metrics` say what each is."""

    id: int
    origin: str
    assignment: dict[str, list[str]]
    recipe: Recipe
    metrics: dict[str, Metric] = field(default_factory=dict)
    estimate: dict[str, float] = field(default_factory=dict)
    meets_target: bool = False
    within_drop: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    violation: float = 0.0  # relative excess over the targets (0 = every target met)
    options: dict = field(default_factory=dict, repr=False)  # layer -> Option (search internals)

    def value(self, name: str, default=None):
        m = self.metrics.get(name)
        return default if m is None else m.value

    @property
    def loss(self) -> float:
        return self.value("calib_drop", float("inf"))

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "origin": self.origin,
            "assignment": self.assignment,
            "recipe": self.recipe.model_dump(mode="json", exclude_unset=True),
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "estimate": self.estimate,
            "meets_target": self.meets_target,
            "within_drop": self.within_drop,
            "error": self.error,
            "warnings": self.warnings[:20],
            "seconds": self.seconds,
            "violation": self.violation,
        }


@dataclass
class SearchResult:
    """Best plan, every measured candidate, the measured Pareto front (candidate ids)."""

    best: Candidate | None
    candidates: list[Candidate]
    front: list[int]
    front_axis: str  # size_bytes | latency_ratio | macs
    reached: bool
    message: str
    targets: list[Target]
    limits: dict[str, float]
    max_drop: float
    baseline: dict[str, Any]
    table: SensitivityTable | None = None
    cancelled: bool = False
    seconds: float = 0.0

    def front_candidates(self) -> list[Candidate]:
        by = {c.id: c for c in self.candidates}
        return [by[i] for i in self.front]

    def to_dict(self) -> dict:
        from studio.core.sensitivity import _json_safe

        return _json_safe(
            {
                "best": None if self.best is None else self.best.id,
                "reached": self.reached,
                "message": self.message,
                "cancelled": self.cancelled,
                "targets": [t.to_dict() for t in self.targets],
                "limits": self.limits,
                "max_drop": self.max_drop,
                "baseline": self.baseline,
                "front_axis": self.front_axis,
                "front": self.front,
                "candidates": [c.to_dict() for c in self.candidates],
                "sensitivity_cost": None if self.table is None else self.table.cost,
                "seconds": self.seconds,
            }
        )


def pareto_front(points: list[tuple[int, float, float, float]]) -> list[int]:
    """Ids of the non-dominated points (id, cost, loss, tie-break loss); lower is better."""
    out = []
    for i, c, loss, t in points:
        dominated = False
        for j, c2, l2, t2 in points:
            if j == i:
                continue
            if c2 <= c and (l2, t2) <= (loss, t) and (c2 < c or (l2, t2) < (loss, t)):
                dominated = True
                break
        if not dominated:
            out.append(i)
    return sorted(out, key=lambda i: next(p[1] for p in points if p[0] == i))


# ---------------------------------------------------------------------- cost model (estimates)


@dataclass
class Option:
    """One choice for one layer: an optional structural + an optional precision setting."""

    struct: Setting | None
    prec: Setting | None
    loss: float  # estimated from the sensitivity table
    keep: float = 1.0  # fraction of output channels kept (channel pruning)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in (self.struct, self.prec) if s is not None]

    def plan(self) -> LayerPlan:
        d = {}
        for s in (self.struct, self.prec):
            if s is not None:
                d[s.stage] = s.step()
        return LayerPlan(**d)


def cell_loss(table: SensitivityTable, layer: str, key: str) -> float | None:
    """Estimated loss of one cell: the primary drop, made smooth with the cosine drop."""
    d = table.drop(layer, key)
    if d is None:
        return None
    c = table.cosine(layer, key) or 0.0
    if table.metric == "top1":
        return max(d, 0.0) + 0.1 * c
    if table.metric == "layer_output_nsr":
        return d
    return max(d, c)


class CostModel:
    """Formula estimates of a whole plan: bytes, MACs, latency ratio (labelled estimated)."""

    def __init__(self, handle: ModelHandle, table: SensitivityTable, registry=None):
        from studio.plugin_api.registry import default_registry

        self.reg = registry or default_registry()
        self.analysis = analyze(handle.proto, with_stats=False)
        self.layers = self.analysis.by_name()
        self.size0 = model_nbytes(handle.proto)  # external tensors counted inline
        names = set(self.layers)
        self.consumers = {n: downstream_layers(handle.proto, n, names) for n in table.layers if n in names}
        total = max(sum(la.macs for la in self.analysis.layers), 1)
        self.share = {n: WEIGHTED_TIME_SHARE * la.macs / total for n, la in self.layers.items()}
        self._cache: dict[tuple, tuple[int, int]] = {}

    def layer_cost(self, name: str, opt: Option | None) -> tuple[int, int]:
        """(weight bytes, MACs) of one layer under an option, before consumer scaling."""
        la = self.layers[name]
        if opt is None:
            return la.weight_bytes, la.macs
        key = (name, tuple(opt.keys))
        if key not in self._cache:
            from studio.plugin_api.technique import LayerEstimate

            est = LayerEstimate.of(la)
            for s in (opt.struct, opt.prec):
                if s is None:
                    continue
                tech = self.reg.get(s.technique)
                est = tech.estimate(la, tech.parse_params(dict(s.params)), est)
            self._cache[key] = (int(est.weight_bytes), int(est.macs))
        return self._cache[key]

    def plan_costs(self, assign: dict[str, Option]) -> dict[str, float]:
        keep_in = {n: 1.0 for n in self.layers}
        for n, o in assign.items():
            if o is not None and o.keep < 1.0:
                for c in self.consumers.get(n, []):
                    keep_in[c] *= o.keep
        nbytes = macs = 0.0
        lat = 1.0
        b0 = m0 = 0
        for n, la in self.layers.items():
            b, m = self.layer_cost(n, assign.get(n))
            b, m = b * keep_in[n], m * keep_in[n]
            nbytes += b
            macs += m
            b0 += la.weight_bytes
            m0 += la.macs
            o = assign.get(n)
            q = ASSUMED_SPEED.get(o.prec.technique, 1.0) if o is not None and o.prec is not None else 1.0
            frac = (m / la.macs) if la.macs else 1.0
            lat -= self.share[n] * (1.0 - frac * q)
        return {"size_bytes": self.size0 - (b0 - nbytes), "macs": macs, "latency_ratio": max(lat, 0.05)}


def layer_options(table: SensitivityTable, cm: CostModel) -> dict[str, list[Option]]:
    """Every measured (structural × precision) combination per layer, cheapest first."""
    settings = {s.key: s for s in table.setting_objects()}
    out: dict[str, list[Option]] = {}
    for name in table.layers:
        if name not in cm.layers:
            continue
        structs: list[tuple[Setting | None, float]] = [(None, 0.0)]
        precs: list[tuple[Setting | None, float]] = [(None, 0.0)]
        for key, s in settings.items():
            loss = cell_loss(table, name, key)
            if loss is None:
                continue
            (structs if s.structural else precs).append((s, loss))
        opts = []
        for s, ls in structs:
            for p, lp in precs:
                if s is not None and p is not None and not _combinable(s, p):
                    continue
                keep = (
                    1.0 - float(dict(s.params).get("ratio", 0.0)) if s and s.technique == "channels" else 1.0
                )
                opts.append(Option(s, p, ls + lp, keep))
        out[name] = opts
    return out


def _combinable(s: Setting, p: Setting) -> bool:
    # int8_static after SVD quantizes both factors; every pairing our plugins chain is allowed.
    return True


# ---------------------------------------------------------------------- measuring (worker)

_HANDLE_CACHE: dict[str, ModelHandle] = {}


def _handle(ref) -> ModelHandle:
    if isinstance(ref, ModelHandle):
        return ref
    key = f"{ref}:{os.path.getmtime(ref)}"
    if key not in _HANDLE_CACHE:
        _HANDLE_CACHE.clear()
        _HANDLE_CACHE[key] = ModelHandle(onnx.load(str(ref)), sha256=key)
    return _HANDLE_CACHE[key]


def evaluate_candidate(spec: dict) -> dict:
    """Worker: compress the model with one recipe and measure it (size, calibration drop,
    held-out metrics, interleaved latency ratio). `spec` is plain, picklable data."""
    from studio.core.jobs import drive
    from studio.core.pipeline import compress

    t0 = time.perf_counter()
    handle = _handle(spec["model"])
    recipe = Recipe.model_validate(spec["recipe"])
    calib = spec["calib"]
    variant = drive(compress(handle, recipe, calibration=calib["inputs"]))
    proto = variant.proto
    threads = spec.get("threads", 0)
    sess = make_session(proto, threads=threads)
    out = {"size_bytes": int(model_nbytes(proto)), "warnings": variant.warnings}
    res = sess.run(None, calib["inputs"])[0]
    out["calib_drop"] = metric_drop(spec["metric"], calib["ref"], res, calib.get("labels"), calib.get("mask"))
    out["calib_cosine_drop"] = 1.0 - cosine_mean(calib["ref"], res, calib.get("mask"))
    held = spec.get("heldout")
    if held is not None:
        r = sess.run(None, held["inputs"])[0]
        out["heldout_cosine"] = cosine_mean(held["ref"], r, held.get("mask"))
        if held.get("labels") is not None:
            lab = held["labels"]
            out["heldout_top1"] = float((r.reshape(len(r), -1).argmax(1) == lab).mean())
    lat = spec.get("latency")
    if lat is not None:
        from studio.core.bench import interleaved_ab

        ds = Dataset(lat["inputs"], source=lat["source"])
        m = interleaved_ab(handle.proto, proto, batch_size=lat["batch_size"], threads=1,
                           warmup=3, repeats=lat["repeats"], inputs=ds)  # fmt: skip
        out["latency"] = m.to_dict()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def ort_int8_defaults(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime `quantize_dynamic` with its default settings (the usual one-liner)."""
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="studio_ortq_") as d:
        src, dst = os.path.join(d, "in.onnx"), os.path.join(d, "out.onnx")
        onnx.save(proto, src)
        quantize_dynamic(src, dst)
        return onnx.load(dst)


# ---------------------------------------------------------------------- the search (job)


def auto_compress(
    handle: ModelHandle,
    calib: Dataset,
    targets: list[Target],
    *,
    max_drop: float = 0.01,
    heldout: Dataset | None = None,
    table: SensitivityTable | None = None,
    settings: list[Setting] | None = None,
    pool=None,
    max_evals: int = 16,
    latency_repeats: int = 20,
    proxy: bool = False,
    ctx: JobContext | None = None,
) -> Generator[Progress, None, SearchResult]:
    """Generator job → SearchResult. Payloads, in order:
    `{"type": "sensitivity_row", ...}` per layer while the table is measured (if not given),
    `{"type": "baseline", ...}` once, `{"type": "candidate", "candidate": Candidate.to_dict()}` per
    measured variant, `{"type": "front", "front": [ids]}` whenever the front changes.
    Cancel (ctx) returns the SearchResult of everything measured so far with `cancelled=True`."""
    from studio.core.parallel import TaskFailure, TaskPool
    from studio.core.sensitivity import sweep

    t_start = time.perf_counter()
    if not targets:
        raise StudioError("no target given", hint="e.g. --target size=10x")
    if isinstance(handle, ModelHandle) and handle.has_external_data():
        # Workers get the model as one file: load the weights (a copy, the caller's handle stays
        # mapped).
        handle = handle.copy()
        handle.materialize()
    pool = pool or TaskPool()
    ctx = ctx or JobContext()
    if table is None:
        table = yield from _sub(
            sweep(handle, calib, settings=settings, proxy=proxy, pool=pool, ctx=ctx), 0.0, 0.4
        )
    cm = CostModel(handle, table)
    options = layer_options(table, cm)
    size0 = model_nbytes(handle.proto)
    macs0 = float(sum(la.macs for la in cm.analysis.layers))
    refs: dict[str, float] = {}
    if any(t.ref == "ort-int8" for t in targets):
        yield Progress(0.41, "measuring ORT quantize_dynamic defaults for size<=ort-int8")
        refs["ort-int8"] = float(model_nbytes(ort_int8_defaults(handle.proto)))
    baselines = {"size": float(size0), "macs": macs0, "latency": 1.0}
    limits: dict[str, float] = {}
    for t in targets:
        if t.kind == "latency" and t.value is None:
            limits[t.text] = 1.0 / t.ratio  # a ratio of the original's latency
        elif t.kind == "latency":
            limits[t.text] = t.value  # ms per batch: checked against the measured p50
        else:
            limits[t.text] = t.limit(baselines[t.kind], refs)
    lat_target = next((t for t in targets if t.kind == "latency"), None)

    # What every worker needs (plain data; the model goes by path to other processes).
    sess = make_session(handle.proto, threads=0)
    ref_c = sess.run(None, calib.inputs)[0]
    metric = table.metric if table.metric != "layer_output_nsr" else _metric_for(ref_c, calib.labels)
    calib_spec = {"inputs": calib.inputs, "ref": ref_c, "labels": calib.labels,
                  "mask": calib.inputs.get("attention_mask")}  # fmt: skip
    held_spec = None
    base_held: dict[str, float] = {}
    if heldout is not None:
        ref_h = sess.run(None, heldout.inputs)[0]
        held_spec = {"inputs": heldout.inputs, "ref": ref_h, "labels": heldout.labels,
                     "mask": heldout.inputs.get("attention_mask")}  # fmt: skip
        if heldout.labels is not None:
            base_held["top1"] = float((ref_h.reshape(len(ref_h), -1).argmax(1) == heldout.labels).mean())
    lat_spec = None
    if lat_target is not None:
        b = lat_target.batch_size
        idx = np.arange(min(len(calib), max(b, 1)))
        lat_spec = {"inputs": {k: v[idx] for k, v in calib.inputs.items()}, "source": calib.source,
                    "batch_size": b, "repeats": latency_repeats}  # fmt: skip
    model_ref: Any = handle
    tmpdir = None
    if pool.kind != "inline":
        tmpdir = tempfile.TemporaryDirectory(prefix="studio_auto_")
        model_ref = os.path.join(tmpdir.name, "model.onnx")
        onnx.save(handle.proto, model_ref)
    baseline = {
        "size_bytes": size0,
        "macs": macs0,
        "metric": metric,
        "calib_source": calib.source,
        "calib_samples": len(calib),
        "heldout_source": None if heldout is None else heldout.source,
        "heldout_samples": None if heldout is None else len(heldout),
        "heldout_top1": base_held.get("top1"),
        "refs": refs,
    }
    yield Progress(0.42, "baseline measured", payload={"type": "baseline", **baseline, "limits": limits})

    candidates: list[Candidate] = []
    seen: dict[tuple, int] = {}
    state = {"front": []}

    def recipe_of(assign: dict[str, Option]) -> Recipe:
        layers = {n: o.plan() for n, o in assign.items() if o is not None and (o.struct or o.prec)}
        return Recipe(
            name="auto",
            description=f"studio auto: {', '.join(t.text for t in targets)}, max drop {max_drop * 100:g} pt",
            calibration=Calibration(n_samples=len(calib)),
            layers=layers,
        )

    def sig(assign) -> tuple:
        return tuple(sorted((n, tuple(o.keys)) for n, o in assign.items() if o is not None and o.keys))

    def measure(batch: list[tuple[str, dict[str, Option]]]) -> Generator[Progress, None, list[Candidate]]:
        fresh = []
        for origin, assign in batch:
            s = sig(assign)
            if s in seen or len(candidates) + len(fresh) >= max_evals:
                continue
            c = Candidate(len(candidates) + len(fresh), origin, {n: k for n, k in s}, recipe_of(assign))
            c.estimate = cm.plan_costs(assign)
            c.estimate["loss"] = sum(o.loss for o in assign.values() if o is not None)
            seen[s] = c.id
            fresh.append((c, assign))
        if not fresh:
            return []
        specs = [
            (
                {
                    "model": model_ref,
                    "recipe": c.recipe.model_dump(mode="json"),
                    "calib": calib_spec,
                    "heldout": held_spec,
                    "metric": metric,
                    "latency": lat_spec,
                    "threads": 1 if pool.kind != "inline" else 0,
                },
            )  # fmt: skip
            for c, _ in fresh
        ]
        done = []
        for i, res in pool.imap_unordered(evaluate_candidate, specs, ctx):
            c, assign = fresh[i]
            c.options = assign
            if isinstance(res, TaskFailure):
                c.error = res.message
            else:
                _fill(c, res, metric, calib, heldout, base_held, limits, targets, max_drop)
            candidates.append(c)
            done.append(c)
            front = _front(candidates, targets)
            yield Progress(
                -1, f"candidate {c.id}: {_short(c)}", payload={"type": "candidate", "candidate": c.to_dict()}
            )
            if front != state["front"]:
                state["front"] = front
                yield Progress(-1, "front updated", payload={"type": "front", "front": front})
        candidates.sort(key=lambda c: c.id)
        return done

    cancelled = False
    try:
        # 1. greedy allocation over a shared threshold
        yield Progress(0.45, "greedy allocation")
        taus = sorted({round(o.loss, 12) for opts in options.values() for o in opts})

        def primary(n: str, o: Option | None) -> float:
            """A layer option's cost summed over the targets, each relative to its limit."""
            return _option_cost(cm, n, o, targets, limits)

        def greedy(tau: float) -> dict[str, Option]:
            plan = {}
            for n, opts in options.items():
                ok = [o for o in opts if o.loss <= tau + 1e-15]
                plan[n] = min(ok, key=lambda o, n=n: (primary(n, o), o.loss)) if ok else None
            return plan

        def est_ok(plan) -> bool:
            return _meets(cm.plan_costs(plan), targets, limits, estimated=True)

        lo, hi = 0, len(taus) - 1
        if not est_ok(greedy(taus[hi])):
            star = hi
        else:
            while lo < hi:
                mid = (lo + hi) // 2
                if est_ok(greedy(taus[mid])):
                    hi = mid
                else:
                    lo = mid + 1
            star = lo
        seeds = [(f"greedy τ={taus[star]:.4g}", greedy(taus[star]))]
        for j in (star - 2, star + 2):
            if 0 <= j < len(taus):
                seeds.append((f"greedy τ={taus[j]:.4g}", greedy(taus[j])))
        # Lagrangian plans first: least estimated loss for the cost, where the threshold greedy
        # cannot trade a lossy cheap layer for a near-lossless same-size one elsewhere.
        lagrangian = _lagrangian_plans(options, cm, targets, limits)
        seeds = lagrangian + (seeds[:1] if lagrangian else seeds)
        yield from measure(seeds)

        # 2./3. measured refinement and accuracy-aware fallback
        k = max(2, pool.workers)
        polished = False
        recalibrations = 2
        alternate = {"refine": False}
        while len(candidates) < max_evals:
            ctx.check()
            ok = [c for c in candidates if c.error is None]
            if not ok:
                break
            good = [c for c in ok if c.meets_target and c.within_drop]
            feasible = [c for c in ok if c.meets_target]
            within = [c for c in ok if c.within_drop]
            if not good and within and recalibrations > 0:
                # The estimate was off (latency is not additive: fusions, opset upgrades): solve
                # again with the limits scaled by measured/estimated of the closest in-drop plan.
                recalibrations -= 1
                ref = min(within, key=lambda c: (c.violation, c.loss))
                scaled = _calibrated_limits(ref, targets, limits)
                plans = [(f"recalibrated on #{ref.id}: {o}", a)
                         for o, a in _lagrangian_plans(options, cm, targets, scaled) if sig(a) not in seen]  # fmt: skip
                if plans:
                    yield Progress(
                        min(0.45 + 0.5 * len(candidates) / max_evals, 0.95), f"recalibrated on #{ref.id}"
                    )
                    if (yield from measure(plans[:k])):
                        continue
            if good:
                if polished:
                    break
                cur = min(good, key=lambda c: (c.loss, c.value("calib_cosine_drop", 0)))
                moves = _fallback_moves(cur.options, options, primary, k, seen, sig)
                moves = [
                    (o, a) for o, a in moves if _meets(cm.plan_costs(a), targets, limits, estimated=True)
                ]
                polished = True
                label = "polish"
            elif feasible and within and not alternate["refine"]:
                # Both sides exist: also push the best within-drop plan towards the target.
                alternate["refine"] = True
                cur = min(within, key=lambda c: (c.violation, c.loss))
                moves = _refine_bundles(cur, options, primary, cm, targets, limits, k, seen, sig)
                label = "refine"
            elif feasible:
                alternate["refine"] = False
                cur = min(feasible, key=lambda c: c.loss)
                # Estimated drops add up to less than the measured one: scale the gap to close.
                scale = cur.loss / max(cur.estimate.get("loss", 0.0), 1e-9)
                need = (cur.loss - max_drop) / max(scale, 1e-9)
                moves = _fallback_bundles(cur.options, options, primary, need, k, seen, sig)
                moves += _fallback_moves(cur.options, options, primary, max(k - len(moves), 0), seen, sig)
                label = "fallback"
            else:
                cur = min(ok, key=lambda c: (c.violation, c.loss))
                moves = _more_moves(cur.options, options, primary, k, seen, sig)
                label = "refine"
            if not moves:
                break
            yield Progress(
                min(0.45 + 0.5 * len(candidates) / max_evals, 0.95),
                f"{label}: {len(moves)} move(s) from #{cur.id}",
            )
            got = yield from measure([(f"{label} from #{cur.id}: {o}", a) for o, a in moves])
            if not got:
                break
        if lat_target is not None:
            best = _pick_best(candidates)
            if best is not None and best.error is None:
                yield Progress(0.97, f"re-measuring latency of #{best.id}")
                spec = {"model": model_ref, "recipe": best.recipe.model_dump(mode="json"), "calib": calib_spec,
                        "heldout": None, "metric": metric,
                        "latency": {**lat_spec, "repeats": latency_repeats * 3}, "threads": 0}  # fmt: skip
                res = next(iter(TaskPool().imap_unordered(evaluate_candidate, [(spec,)], ctx)))[1]
                if not isinstance(res, TaskFailure) and "latency" in res:
                    best.metrics["latency_ratio_final"] = Metric.from_dict(
                        {**res["latency"], "name": "latency_ratio_final"}
                    )
    except JobCancelled:
        cancelled = True
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    best = _pick_best(candidates)
    reached = best is not None and best.meets_target and best.within_drop
    msg = _message(best, reached, targets, limits, max_drop, cancelled, table)
    axis = _axis(targets)
    result = SearchResult(
        best=best,
        candidates=candidates,
        front=_front(candidates, targets),
        front_axis=axis,
        reached=reached,
        message=msg,
        targets=list(targets),
        limits=limits,
        max_drop=max_drop,
        baseline=baseline,
        table=table,
        cancelled=cancelled,
        seconds=round(time.perf_counter() - t_start, 2),
    )
    if not cancelled:
        yield Progress(1.0, msg)
    return result


def _sub(gen, lo: float, hi: float):
    """Run a sub-job, mapping its progress fractions into [lo, hi]; returns its value."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        f = p.fraction if p.fraction < 0 else lo + (hi - lo) * p.fraction
        yield Progress(f, p.message, p.payload)


def _metric_for(ref: np.ndarray, labels) -> str:
    from studio.core.sensitivity import choose_metric

    return choose_metric(ref, labels)[0]


def _primary_cost(cm: CostModel, name: str, o: Option, t: Target) -> float:
    """What a layer option costs in the primary target's unit (with channel-consumer savings)."""
    b, m = cm.layer_cost(name, o)
    saved_b = saved_m = 0.0
    if o.keep < 1.0:
        for c in cm.consumers.get(name, []):
            la = cm.layers[c]
            saved_b += la.weight_bytes * (1 - o.keep)
            saved_m += la.macs * (1 - o.keep)
    if t.kind == "size":
        return b - saved_b
    if t.kind == "macs":
        return m - saved_m
    la = cm.layers[name]
    q = ASSUMED_SPEED.get(o.prec.technique, 1.0) if o.prec is not None else 1.0
    return cm.share[name] * (m / la.macs if la.macs else 1.0) * q - saved_m / max(la.macs, 1) * cm.share[name]


LAGRANGE_GRID = np.geomspace(1e-5, 10.0, 31)
# (size, latency) margins of the Lagrangian plans: measured bytes ran ~0.3 % over the estimate
# (ONNX framing); measured latency a few % over it (DynamicQuantizeLinear per int8 layer).
MARGINS = ((0.996, 0.97), (0.985, 0.92))


def _lagrangian_plans(options, cm: CostModel, targets: list[Target], limits: dict) -> list[tuple[str, dict]]:
    """Multiple-choice knapsack by Lagrangian relaxation: for multipliers λ (one per target) every
    layer takes the option minimising `loss + Σ λ_t · cost_t / limit_t` (separable, so exact per
    λ); over a grid of λ the estimated-feasible plan with the least estimated loss wins, once per
    size margin. Unlike the shared-threshold greedy it moves the loss budget to where it buys the
    most: e.g. int8 on robust layers and a same-size near-lossless encoding (k-means 8-bit) on the
    sensitive ones, or 4-bit on robust layers to pay for 8-bit on sensitive ones."""
    import itertools

    names = [n for n, opts in options.items() if opts]
    if not names:
        return []
    width = max(len(options[n]) for n in names)
    loss = np.full((len(names), width), np.inf)
    cost = np.zeros((len(targets), len(names), width))
    for i, n in enumerate(names):
        for j, o in enumerate(options[n]):
            loss[i, j] = o.loss
            for ti, t in enumerate(targets):
                norm = 1.0 if (t.kind == "latency" and t.value is not None) else max(limits[t.text], 1e-12)
                cost[ti, i, j] = _primary_cost(cm, n, o, t) / norm
    rows = np.arange(len(names))
    # Separable budgets: a plan's estimate is the float32 plan's plus the sum of its layers' changes.
    zero = np.array([next((j for j, o in enumerate(options[n]) if not o.keys), 0) for n in names])
    est0 = cm.plan_costs({n: options[n][j] for n, j in zip(names, zero)})
    key = {"size": "size_bytes", "macs": "macs", "latency": "latency_ratio"}
    out, picked = [], set()
    for margin, lat_margin in MARGINS:
        budget = np.empty(len(targets))
        for ti, t in enumerate(targets):
            norm = 1.0 if (t.kind == "latency" and t.value is not None) else max(limits[t.text], 1e-12)
            lim = limits[t.text] * {"size": margin, "latency": lat_margin}.get(t.kind, 1.0)
            if t.kind == "latency" and t.value is not None:
                lim = np.inf  # ms targets are checked on measurements only
            budget[ti] = cost[ti, rows, zero].sum() + (lim - est0[key[t.kind]]) / norm
        best = None
        for lam in itertools.product(LAGRANGE_GRID, repeat=len(targets)):
            choice = np.argmin(loss + np.tensordot(np.asarray(lam), cost, axes=1), axis=1)
            if np.all(cost[:, rows, choice].sum(1) <= budget + 1e-12):
                v = float(loss[rows, choice].sum())
                if best is None or v < best[1]:
                    best = (choice, v)
        if best is None:
            continue
        choice = _exchange(best[0], loss, cost, budget)
        sig = tuple(choice)
        if sig in picked:
            continue
        picked.add(sig)
        assign = {n: options[n][j] for n, j in zip(names, choice)}
        v = float(loss[rows, choice].sum())
        out.append((f"lagrangian (est. loss {v * 100:.2f} pt, margins {margin:g}/{lat_margin:g})", assign))
    return out


def _exchange(choice: np.ndarray, loss: np.ndarray, cost: np.ndarray, budget: np.ndarray, rounds: int = 200):
    """Local search after the Lagrangian plan (which can miss points off the convex hull): the
    best single or paired option change that lowers the estimated loss and stays in budget."""
    choice = choice.copy()
    n_layers, width = loss.shape
    rows = np.arange(n_layers)
    for _ in range(rounds):
        dl = loss - loss[rows, choice][:, None]  # [L, W]
        dc = cost - cost[:, rows, choice][:, :, None]  # [T, L, W]
        slack = budget - cost[:, rows, choice].sum(1)
        flat_l = np.where(np.isfinite(dl), dl, np.inf).ravel()
        flat_c = dc.reshape(len(budget), -1)
        ok1 = np.all(flat_c <= slack[:, None] + 1e-12, axis=0) & (flat_l < -1e-12)
        best_gain, best_move = 0.0, None
        if ok1.any():
            m = int(np.argmin(np.where(ok1, flat_l, np.inf)))
            best_gain, best_move = flat_l[m], (m,)
        # Pairs: one change buys loss, another (on a different layer) pays for it.
        cand = np.nonzero(np.isfinite(flat_l) & (flat_l < 0.5))[0]
        if len(cand) > 1:
            pl = flat_l[cand][:, None] + flat_l[cand][None, :]
            pc = flat_c[:, cand][:, :, None] + flat_c[:, cand][:, None, :]
            same = (cand // width)[:, None] == (cand // width)[None, :]
            ok2 = np.all(pc <= slack[:, None, None] + 1e-12, axis=0) & ~same & (pl < best_gain - 1e-12)
            if ok2.any():
                a, b = np.unravel_index(int(np.argmin(np.where(ok2, pl, np.inf))), pl.shape)
                best_move = (int(cand[a]), int(cand[b]))
        if best_move is None:
            repaired = _swap_and_repair(choice, loss, cost, budget)
            if repaired is None:
                break
            choice = repaired
            continue
        for m in best_move:
            choice[m // width] = m % width
    return choice


def _swap_and_repair(choice, loss, cost, budget, max_repairs: int = 12):
    """One loss-lowering change that breaks the budget (word embedding 4-bit → 8-bit), then the
    cheapest repairs (least loss added per cost removed on the broken budgets) until it fits; the
    first sequence that ends with less total loss. None when no such sequence exists."""
    n_layers, width = loss.shape
    rows = np.arange(n_layers)
    base = float(loss[rows, choice].sum())
    gains = loss - loss[rows, choice][:, None]
    order = np.argsort(np.where(np.isfinite(gains), gains, np.inf), axis=None)
    for m in order[:64]:
        if not gains.flat[m] < -1e-12:
            break
        trial = choice.copy()
        locked = {int(m // width)}
        trial[m // width] = m % width
        for _ in range(max_repairs):
            over = cost[:, rows, trial].sum(1) - budget
            if np.all(over <= 1e-12):
                break
            bad = over > 1e-12
            dl = loss - loss[rows, trial][:, None]
            dc = cost - cost[:, rows, trial][:, :, None]
            # Cost removed on the broken budgets, capped at what is missing (no overshoot bonus).
            relief = np.minimum(-dc[bad], over[bad][:, None, None]).sum(0)
            worse = np.any(dc[~bad] > np.maximum(-over[~bad], 0)[:, None, None], axis=0)
            ok = np.isfinite(dl) & (relief > 1e-12) & ~worse
            ok[list(locked), :] = False
            if not ok.any():
                break
            score = np.where(ok, np.maximum(dl, 0.0) / np.where(ok, relief, 1.0), np.inf)
            r = int(np.argmin(score))
            trial[r // width] = r % width
            locked.add(r // width)
        if np.all(cost[:, rows, trial].sum(1) <= budget + 1e-12) and loss[rows, trial].sum() < base - 1e-12:
            return trial
    return None


def _calibrated_limits(c: Candidate, targets: list[Target], limits: dict) -> dict:
    """Limits divided by measured/estimated of candidate `c`, per target (tighter where the
    estimate was optimistic, looser where it was pessimistic)."""
    out = dict(limits)
    for t in targets:
        if t.kind == "size":
            got, est = c.value("size_bytes"), c.estimate.get("size_bytes")
        elif t.kind == "latency" and t.value is None:
            got, est = c.value("latency_ratio"), c.estimate.get("latency_ratio")
        else:
            continue
        if got and est:
            out[t.text] = limits[t.text] / (got / est)
    return out


def _option_cost(cm: CostModel, n: str, o: Option | None, targets: list[Target], limits: dict) -> float:
    """Sum over targets of the option's cost relative to the target's limit (so a size target
    and a latency target both pull on the choice)."""
    o = o if o is not None else Option(None, None, 0.0)
    total = 0.0
    for t in targets:
        c = _primary_cost(cm, n, o, t)
        if t.kind == "latency":
            total += c / (limits[t.text] if t.value is None else 1.0)
        else:
            total += c / max(limits[t.text], 1.0)
    return total


def _meets(costs: dict, targets: list[Target], limits: dict, *, estimated: bool) -> bool:
    for t in targets:
        lim = limits[t.text]
        if t.kind == "size" and costs["size_bytes"] > lim:
            return False
        if t.kind == "macs" and costs["macs"] > lim:
            return False
        if t.kind == "latency" and t.value is None and costs["latency_ratio"] > lim:
            return False
    return True


def _fill(c, res, metric, calib, heldout, base_held, limits, targets, max_drop) -> None:
    kind = "measured" if metric == "top1" else "fidelity"
    n = len(calib)
    c.metrics["size_bytes"] = Metric(
        "size_bytes", float(res["size_bytes"]), "measured", "serialized ONNX", unit="B"
    )
    c.metrics["calib_drop"] = Metric(
        "calib_drop", float(res["calib_drop"]), kind, f"{metric} drop on {calib.source}", n_samples=n
    )
    c.metrics["calib_cosine_drop"] = Metric(
        "calib_cosine_drop", float(res["calib_cosine_drop"]), "fidelity", calib.source, n_samples=n
    )
    c.metrics["macs"] = Metric("macs", float(c.estimate["macs"]), "estimated", "formula")
    if "heldout_top1" in res:
        c.metrics["heldout_top1"] = Metric(
            "heldout_top1", res["heldout_top1"], "measured", heldout.source, n_samples=len(heldout)
        )
        c.metrics["heldout_drop"] = Metric(
            "heldout_drop",
            base_held["top1"] - res["heldout_top1"],
            "measured",
            heldout.source,
            n_samples=len(heldout),
        )
    if "heldout_cosine" in res:
        c.metrics["heldout_cosine"] = Metric(
            "heldout_cosine", res["heldout_cosine"], "fidelity", heldout.source, n_samples=len(heldout)
        )
    if "latency" in res:
        d = dict(res["latency"])
        c.metrics["latency_ratio"] = Metric.from_dict(d)
    c.warnings = list(res.get("warnings", []))
    c.seconds = res.get("seconds", 0.0)
    c.violation = _violation(c, targets, limits)
    c.meets_target = c.violation == 0.0
    c.within_drop = c.loss <= max_drop + 1e-12


def _violation(c: Candidate, targets: list[Target], limits: dict) -> float:
    """Sum over targets of how far the measured value is over its limit (relative); 0 = met."""
    if c.error is not None:
        return float("inf")
    v = 0.0
    for t in targets:
        lim = limits[t.text]
        if t.kind == "size":
            got = c.value("size_bytes")
        elif t.kind == "macs":
            got = c.value("macs")
        elif t.value is None:
            got = c.value("latency_ratio")
        else:
            m = c.metrics.get("latency_ratio")
            got = None if m is None else m.extra.get("b_p50_ms")
        if got is None:
            return float("inf")
        v += max(0.0, got / lim - 1.0)
    return v


def _axis(targets: list[Target]) -> str:
    kinds = [t.kind for t in targets]
    if "size" in kinds:
        return "size_bytes"
    if "latency" in kinds:
        return "latency_ratio"
    return "macs"


def _front(cands: list[Candidate], targets: list[Target]) -> list[int]:
    axis = _axis(targets)
    pts = [
        (c.id, c.value(axis), c.loss, c.value("calib_cosine_drop", 0.0))
        for c in cands
        if c.error is None and c.value(axis) is not None
    ]
    return pareto_front(pts)


def _pick_best(cands: list[Candidate]) -> Candidate | None:
    ok = [c for c in cands if c.error is None]
    if not ok:
        return None
    good = [c for c in ok if c.meets_target and c.within_drop]
    if good:
        return min(good, key=lambda c: (c.loss, c.value("calib_cosine_drop", 0.0), c.value("size_bytes")))
    within = [c for c in ok if c.within_drop]
    if within:
        return min(within, key=lambda c: (c.violation, c.loss))
    return min(ok, key=lambda c: (c.loss, c.violation))


def _short(c: Candidate) -> str:
    if c.error:
        return f"failed ({c.error[:60]})"
    parts = [f"{c.value('size_bytes') / 1e3:,.1f} kB", f"drop {c.loss * 100:.2f} pt"]
    if "latency_ratio" in c.metrics:
        parts.append(f"latency {c.value('latency_ratio'):.2f}×")
    return ", ".join(parts)


def _more_moves(assign, options, cost, k, seen, sig):
    """NetAdapt step: per layer the next more compressive option with the best est. Δloss/Δcost."""
    moves = []
    for n, opts in options.items():
        cur = assign.get(n)
        c0 = cost(n, cur if cur is not None else Option(None, None, 0.0))
        l0 = cur.loss if cur is not None else 0.0
        best = None
        for o in opts:
            dc = c0 - cost(n, o)
            if dc <= 0:
                continue
            ratio = max(o.loss - l0, 0.0) / dc
            if best is None or ratio < best[0]:
                best = (ratio, o)
        if best is not None:
            a = dict(assign)
            a[n] = best[1]
            if sig(a) not in seen:
                moves.append((best[0], f"{n} → {'+'.join(best[1].keys) or 'fp32'}", a))
    moves.sort(key=lambda m: m[0])
    return [(d, a) for _, d, a in moves[:k]]


def _fallback_moves(assign, options, cost, k, seen, sig):
    """Accuracy-aware fallback: the layers with the largest estimated loss go one step milder
    (the option with the least extra cost per loss recovered)."""
    ranked = sorted((o.loss, n) for n, o in assign.items() if o is not None and o.loss > 0)
    moves = []
    for _, n in reversed(ranked):
        cur = assign[n]
        c0 = cost(n, cur)
        best = None
        for o in options.get(n, []):
            dl = cur.loss - o.loss
            if dl <= 0:
                continue
            ratio = max(cost(n, o) - c0, 0.0) / dl
            if best is None or ratio < best[0]:
                best = (ratio, o)
        if best is not None:
            a = dict(assign)
            a[n] = best[1]
            if sig(a) not in seen:
                moves.append((f"{n} → {'+'.join(best[1].keys) or 'fp32'}", a))
        if len(moves) >= k:
            break
    return moves


def _refine_bundles(cur, options, cost, cm, targets, limits, k, seen, sig):
    """From a plan within the drop but over a target: the more compressive options with the least
    estimated loss per saved cost, added until the estimate (scaled by cur's measured/estimated
    ratio) meets every target, and once more with a 25 % margin."""
    est0 = cm.plan_costs(cur.options)
    scale = {
        "size_bytes": cur.value("size_bytes", est0["size_bytes"]) / max(est0["size_bytes"], 1.0),
        "latency_ratio": cur.value("latency_ratio", est0["latency_ratio"]) / max(est0["latency_ratio"], 1e-9),
        "macs": 1.0,
    }
    steps = []
    for n, opts in options.items():
        o0 = cur.options.get(n) or Option(None, None, 0.0)
        c0 = cost(n, o0)
        best = None
        for o in opts:
            dc = c0 - cost(n, o)
            if dc > 0:
                r = max(o.loss - o0.loss, 0.0) / dc
                if best is None or r < best[0]:
                    best = (r, o)
        if best is not None:
            steps.append((best[0], n, best[1]))
    steps.sort(key=lambda x: x[0])
    out, a, taken, reached_at = [], dict(cur.options), 0, None
    for _, n, o in steps:
        a[n] = o
        taken += 1
        e = cm.plan_costs(a)
        scaled = {key: e[key] * scale[key] for key in scale}
        if reached_at is None and _meets(scaled, targets, limits, estimated=True):
            reached_at = taken
            if sig(a) not in seen:
                out.append((f"{taken} layers stronger (est. meets the targets)", dict(a)))
        if reached_at is not None and taken >= reached_at * 1.25 + 1:
            if sig(a) not in seen:
                out.append((f"{taken} layers stronger (25 % margin)", dict(a)))
            break
    return out[:k]


def _fallback_bundles(assign, options, cost, need, k, seen, sig):
    """Fallback for a large gap: the milder options with the least extra cost per recovered
    loss, applied together until their estimated recovery covers 0.75×, 1× and 1.5× `need`."""
    steps = []
    for n, cur in assign.items():
        if cur is None or cur.loss <= 0:
            continue
        c0 = cost(n, cur)
        best = None
        for o in options.get(n, []):
            dl = cur.loss - o.loss
            if dl > 0:
                r = max(cost(n, o) - c0, 0.0) / dl
                if best is None or r < best[0]:
                    best = (r, o, dl)
        if best is not None:
            steps.append((best[0], n, best[1], best[2]))
    steps.sort(key=lambda x: x[0])
    out = []
    for frac in (1.0, 1.5, 0.75)[: max(k - 1, 1)]:
        a, got, names = dict(assign), 0.0, []
        for _, n, o, dl in steps:
            if got >= need * frac:
                break
            a[n] = o
            got += dl
            names.append(n)
        if len(names) > 1 and sig(a) not in seen and all(sig(a) != sig(b) for _, b in out):
            out.append((f"{len(names)} layers milder (est. -{got * 100:.2f} pt)", a))
    return out


def _message(best, reached, targets, limits, max_drop, cancelled, table) -> str:
    tt = ", ".join(t.text for t in targets)
    pre = "cancelled; " if cancelled else ""
    if best is None:
        return pre + "no candidate could be measured"
    what = (
        "accuracy"
        if table is not None and table.metric == "top1"
        else (
            "top-1 agreement"
            if table is not None and table.metric == "top1_agreement"
            else "fidelity (cosine)"
        )
    )
    if reached:
        return (
            pre
            + f"target {tt} met by #{best.id} with a {what} drop of {best.loss * 100:.2f} pt on the calibration data"
        )
    if best.within_drop:
        return pre + (
            f"target {tt} not reached within a {max_drop * 100:g} pt {what} drop; closest measured plan is "
            f"#{best.id} ({_short(best)})"
        )
    return pre + (
        f"no measured plan stays within a {max_drop * 100:g} pt {what} drop; the least lossy is #{best.id} "
        f"({_short(best)})"
    )
