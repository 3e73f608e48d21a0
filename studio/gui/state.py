"""Session state of the studio window, free of Qt: the open model, its analysis, the recipe being
edited, per-layer estimates (cached), measured variants, and the measure jobs.

The Qt layer renders this state and turns user edits into recipe changes through the undo stack;
everything here can be driven from a plain Python test.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from studio.core.errors import DatasetError, StudioError
from studio.core.evaluate import Dataset, calibration_subset, evaluate, load_dataset
from studio.core.graph import LayerInfo, ModelAnalysis, analyze
from studio.core.jobs import JobContext, Progress, forward, run_in_subprocess
from studio.core.measure_job import (
    FileVariant,
    bench_file,
    cleanup_scratch,
    disk_size,
    file_size,
    new_variant_path,
    synthetic_dataset,
)
from studio.core.metrics import Metric
from studio.core.model import ONNX_SUFFIXES, TORCH_SUFFIXES, ModelHandle, load_model, save_model
from studio.core.recipe import LayerPlan, Recipe, Step
from studio.plugin_api.registry import Registry, default_registry
from studio.plugin_api.technique import LayerEstimate, Support, no

MODEL_SUFFIXES = ONNX_SUFFIXES | TORCH_SUFFIXES
RECIPE_SUFFIXES = {".yaml", ".yml", ".toml", ".json"}

# ---------------------------------------------------------------------- plan columns


@dataclass(frozen=True)
class PlanColumn:
    """One editable plan column of the layer table: which stage it edits and how."""

    key: str  # prune | rank | precision | sharing
    title: str
    stage: str
    kind: str  # ratio | choice | bits


PRUNE = PlanColumn("prune", "Prune", "prune", "ratio")
RANK = PlanColumn("rank", "Rank", "decompose", "ratio")
PRECISION = PlanColumn("precision", "Precision", "quantize", "choice")
SHARING = PlanColumn("sharing", "Sharing", "encode", "bits")
PLAN_COLUMNS = (PRUNE, RANK, PRECISION, SHARING)

# Label shown in the table -> technique (None = keep fp32).
PRECISION_CHOICES: dict[str, str | None] = {
    "fp32": None,
    "int8 static": "int8_static",
    "int8 dynamic": "int8_dynamic",
    "int4": "int4_weight",
    "fp16": "fp16",
}
PRECISION_LABEL = {v: k for k, v in PRECISION_CHOICES.items() if v}
# Used when a plugin does not declare `primary_param` (or is not installed yet).
FALLBACK_PRIMARY = {"channels": "ratio", "magnitude": "ratio", "svd": "rank_ratio", "tucker": "rank_ratio",
                    "kmeans": "bits"}  # fmt: skip


def default_technique(column: PlanColumn, layer: LayerInfo) -> str | None:
    """Technique a fresh edit of `column` uses on `layer` (Rank: SVD for linear, Tucker for conv)."""
    if column is PRUNE:
        return "channels"
    if column is RANK:
        return "tucker" if layer.kind == "conv" else "svd"
    if column is SHARING:
        return "kmeans"
    return None


def primary_param(registry: Registry, technique: str) -> str:
    try:
        p = getattr(registry.get(technique), "primary_param", None)
    except StudioError:
        p = None
    return p or FALLBACK_PRIMARY.get(technique, "ratio")


def cell_value(plan: LayerPlan | None, column: PlanColumn, registry: Registry):
    """Value a plan column shows: a ratio (float), a precision label, a bit count, or None."""
    step = getattr(plan, column.stage) if plan is not None else None
    if step is None:
        return "fp32" if column is PRECISION else None
    if column is PRECISION:
        return PRECISION_LABEL.get(step.technique, step.technique)
    return step.params.get(primary_param(registry, step.technique))


def cell_text(plan: LayerPlan | None, column: PlanColumn, registry: Registry) -> str:
    step = getattr(plan, column.stage) if plan is not None else None
    v = cell_value(plan, column, registry)
    if column is PRECISION:
        return str(v)
    if step is None:
        return ""
    if v is None:
        return step.technique
    if column.kind == "ratio":
        return f"{step.technique} {float(v):.0%}"
    return f"{step.technique} {v} bit"


def make_step(column: PlanColumn, layer: LayerInfo, value, current: Step | None, registry: Registry):
    """Step for a new cell value, keeping the current technique and its other params."""
    if value in (None, "", 0, 0.0, "none", "fp32"):
        return None
    if column is PRECISION:
        tech = PRECISION_CHOICES.get(str(value), str(value))
        if current is not None and current.technique == tech:
            return current
        return Step(technique=tech)
    tech = current.technique if current is not None else default_technique(column, layer)
    params = dict(current.params) if current is not None else {}
    params[primary_param(registry, tech)] = int(value) if column.kind == "bits" else float(value)
    return Step(technique=tech, params=params)


def plan_with_cell(recipe: Recipe, layer: LayerInfo, column: PlanColumn, value, registry: Registry) -> Recipe:
    """The recipe after setting one plan cell of one layer (the explicit layer entry changes)."""
    explicit = recipe.layers.get(layer.name, LayerPlan())
    effective = recipe.resolve([layer.name], strict=False).get(layer.name)
    current = getattr(effective, column.stage) if effective is not None else None
    step = make_step(column, layer, value, current, registry)
    d = {s: getattr(explicit, s) for s in explicit.model_fields_set if s != column.stage}
    if step is not None:
        d[column.stage] = step
    else:
        # Clearing only needs an explicit null when a default or glob would still set the stage.
        base = recipe.with_layer(layer.name, LayerPlan(**d) if d else None)
        inherited = base.resolve([layer.name], strict=False).get(layer.name)
        if inherited is not None and getattr(inherited, column.stage) is not None:
            d[column.stage] = None
    return recipe.with_layer(layer.name, LayerPlan(**d) if d else None)


# ---------------------------------------------------------------------- support + estimates


class SupportCache:
    """`technique.applies_to(layer)` per (technique, layer), computed once per model."""

    def __init__(self, registry: Registry, model=None):
        self.registry = registry
        self.model = model  # onnx.ModelProto: techniques with `model_support` check the graph too
        self._cache: dict[tuple[str, str], Support] = {}
        self._graph: dict[str, dict[str, Support]] = {}

    def preload(self, techniques=("channels",)) -> None:
        """Run the graph-level checks now (in the open worker), not on the first table paint."""
        for t in techniques:
            self._graph_support(t)

    def _graph_support(self, technique: str) -> dict[str, Support]:
        """`technique.model_support(model)` once per model: graph reasons a layer-local
        `applies_to` cannot see (e.g. channel pruning of the layer that produces the output)."""
        if technique not in self._graph:
            out: dict[str, Support] = {}
            try:
                fn = getattr(self.registry.get(technique), "model_support", None)
                if fn is not None and self.model is not None:
                    out = dict(fn(self.model))
            except Exception:  # noqa: BLE001, S110 - optional check; apply() still validates
                pass
            self._graph[technique] = out
        return self._graph[technique]

    def get(self, technique: str, layer: LayerInfo) -> Support:
        key = (technique, layer.name)
        if key not in self._cache:
            try:
                sup = self.registry.get(technique).applies_to(layer)
                if sup:
                    sup = self._graph_support(technique).get(layer.name, sup)
            except StudioError as e:
                sup = no(f"technique {technique!r} unavailable: {e.message}")
            except Exception as e:  # noqa: BLE001 - a plugin bug must not break the table
                sup = no(f"{technique} failed to check this layer: {type(e).__name__}: {e}")
            self._cache[key] = sup
        return self._cache[key]

    def column(self, column: PlanColumn, layer: LayerInfo, plan: LayerPlan | None) -> Support:
        """Whether the column's technique can handle the layer (Precision: any choice can)."""
        if column is PRECISION:
            reasons = []
            for tech in PRECISION_CHOICES.values():
                if tech:
                    s = self.get(tech, layer)
                    if s:
                        return s
                    reasons.append(f"{tech}: {s.reason}")
            return no("; ".join(reasons))
        step = getattr(plan, column.stage) if plan is not None else None
        tech = step.technique if step is not None else default_technique(column, layer)
        return self.get(tech, layer)


class EstimateCache:
    """Per-layer formula estimates after the recipe; only layers whose effective plan changed
    are recomputed (a table edit touches one or a few layers)."""

    def __init__(self, analysis: ModelAnalysis, registry: Registry):
        self.analysis = analysis
        self.registry = registry
        self._names = [la.name for la in analysis.layers]
        self.plans: dict[str, LayerPlan | None] = dict.fromkeys(self._names)
        self.per_layer: dict[str, LayerEstimate] = {la.name: LayerEstimate.of(la) for la in analysis.layers}
        self.notes: dict[str, list[str]] = {}

    def update(self, recipe: Recipe) -> set[str]:
        """Recompute estimates of layers whose resolved plan changed; returns their names."""
        resolved = recipe.resolve(self._names, strict=False)
        changed = set()
        for la in self.analysis.layers:
            plan = resolved.get(la.name)
            if plan == self.plans[la.name]:
                continue
            self.plans[la.name] = plan
            self.per_layer[la.name], self.notes[la.name] = self._estimate(la, plan)
            changed.add(la.name)
        return changed

    def _estimate(self, layer: LayerInfo, plan: LayerPlan | None) -> tuple[LayerEstimate, list[str]]:
        est = LayerEstimate.of(layer)
        notes: list[str] = []
        if plan is None:
            return est, notes
        for stage, step in plan.steps():
            try:
                tech = self.registry.get(step.technique)
                params = (
                    tech.parse_params(step.params)
                    if hasattr(tech, "parse_params")
                    else tech.Params(**step.params)
                )
                sup = tech.applies_to(layer)
                if not sup:
                    notes.append(f"{stage}: {step.technique} skipped ({sup.reason})")
                    continue
                est = tech.estimate(layer, params, est)
                notes.extend(est.notes)
            except StudioError as e:
                notes.append(f"{stage}: {e.message}")
            except Exception as e:  # noqa: BLE001 - invalid params show in the cell tooltip
                notes.append(f"{stage}: {step.technique}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return est, notes

    def totals(self) -> tuple[int, int, int]:
        """(params, MACs, bytes incl. non-layer initializers), all estimated by formula."""
        p = sum(e.params for e in self.per_layer.values())
        m = sum(e.macs for e in self.per_layer.values())
        b = sum(e.weight_bytes for e in self.per_layer.values()) + self.analysis.other_initializer_bytes
        return p, m, b


# ---------------------------------------------------------------------- variants


@dataclass
class VariantEntry:
    """A point of the trade-off plot: a recipe plus what was measured about its model."""

    id: str
    label: str
    recipe: Recipe
    metrics: list[Metric] = field(default_factory=list)
    onnx_path: Path | None = None
    is_original: bool = False
    variant: object | None = None  # pipeline.Variant when created in this session
    warnings: list[str] = field(default_factory=list)
    parent: str | None = None  # id of the variant whose recipe this one was branched from
    note: str = ""
    is_candidate: bool = False  # an auto-compress candidate: measured, but no file is kept

    def metric(self, *names: str) -> Metric | None:
        for n in names:
            for m in self.metrics:
                if m.name == n:
                    return m
        return None

    def quality(self) -> Metric | None:
        """Accuracy when labels were available, else agreement with the original (fidelity)."""
        return self.metric("top1", "top1_agreement", "cosine_mean")

    def size(self) -> Metric | None:
        return self.metric("size_bytes", "file_bytes")

    def latency(self) -> Metric | None:
        return self.metric("latency_p50_ms", "latency_ms")

    def summary(self) -> str:
        lines = [self.label, f"recipe: {self.recipe.summary()}"]
        lines += [f"{m.name}: {m.label()}" for m in self.metrics]
        return "\n".join(lines)


def candidate_entry(cand: dict) -> VariantEntry | None:
    """A plot entry for an auto-compress candidate (`Candidate.to_dict()`): its held-out accuracy
    (or cosine) is the quality, the serialized size the x value; failed candidates give None."""
    if cand.get("error"):
        return None
    ms = {k: Metric.from_dict(d) for k, d in cand.get("metrics", {}).items()}
    out = []
    for src, name in (("heldout_top1", "top1"), ("heldout_cosine", "cosine_mean")):
        if src in ms:
            m = ms[src]
            out.append(Metric(name, m.value, m.kind, m.source, n_samples=m.n_samples, unit=m.unit))
    if "size_bytes" in ms:
        out.append(ms["size_bytes"])
    out += [m for k, m in ms.items() if k not in ("heldout_top1", "heldout_cosine", "size_bytes")]
    recipe = Recipe.model_validate(cand["recipe"])
    label = f"auto #{cand['id']} ({cand.get('origin', '')})"
    return VariantEntry(f"candidate-{cand['id']}", label, recipe, out, is_candidate=True)


@dataclass
class MeasureSettings:
    """How much data the measure jobs use (small defaults keep the GUI responsive)."""

    eval_samples: int | None = None  # None = the whole evaluation set
    calib_samples: int = 128
    bench_runs: int = 30
    bench_warmup: int = 5
    bench_batch: int = 1
    threads: int = 1
    synthetic_samples: int = 32
    sensitivity_settings: str | None = None  # e.g. "channels:0.5 int8"; None = the standard sweep


def find_demo_data(model_path: Path) -> tuple[Path | None, Path | None]:
    """(evaluation, calibration) .npz files beside a model: `<stem>_eval.npz` / `<stem>_calib.npz`,
    also matching the stem's first word (`digits_cnn.onnx` -> `digits_eval.npz`)."""
    folder = model_path.parent
    stems = {model_path.stem, model_path.stem.split("_")[0]}
    cands = sorted(p for p in folder.glob("*.npz") if any(p.stem.startswith(s) for s in stems))
    ev = next((p for p in cands if "eval" in p.stem or "test" in p.stem), None)
    cal = next((p for p in cands if "calib" in p.stem), None)
    if ev is None and cal is None and len(cands) == 1:
        ev = cal = cands[0]
    return ev, cal


@dataclass
class PreparedModel:
    """A loaded and analysed model, ready for `Session.install`."""

    handle: ModelHandle
    analysis: ModelAnalysis
    support: SupportCache
    estimates: EstimateCache
    eval_data: Path | None
    calib_data: Path | None
    size: list[Metric]
    onnx_file: Path | None


def prepare_model(
    session: Session,
    path: Path,
    factory: str | None = None,
    *,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> PreparedModel:
    """Load + analyse `path` for `session` (worker-thread safe); `factory` builds the module of a
    PyTorch state_dict (`package.module:function`), `trust_pickle` allows a pickled nn.Module,
    `input_shape` is the example input of the ONNX export."""
    handle = load_model(Path(path), factory=factory, trust_pickle=trust_pickle, input_shape=input_shape)
    return session.prepare(handle)


class Session:
    """Everything the window shows, without Qt."""

    def __init__(self, registry: Registry | None = None, work_dir: Path | None = None):
        self.registry = registry or default_registry()
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="pareto-studio-"))
        self.handle: ModelHandle | None = None
        self.analysis: ModelAnalysis | None = None
        self.recipe = Recipe()
        self.variants: list[VariantEntry] = []
        self.estimates: EstimateCache | None = None
        self.support = SupportCache(self.registry)
        self.eval_data: Path | None = None
        self.calib_data: Path | None = None
        self.settings = MeasureSettings()
        self._counter = 0

    # ------------------------------------------------------------------ model

    def open(self, path: str | os.PathLike) -> ModelHandle:
        """Load a model (ONNX or PyTorch); raises ModelLoadError & co. on bad input."""
        return self.install(self.prepare(load_model(Path(path))))

    def open_handle(self, handle: ModelHandle) -> ModelHandle:
        """Make an already loaded model current: analysis, empty recipe, the original as variant."""
        return self.install(self.prepare(handle))

    def prepare(self, handle: ModelHandle) -> PreparedModel:
        """Everything slow about opening (analysis with weight stats, file size, graph checks);
        touches no session state, so the window runs it on a worker thread."""
        path = handle.source_path
        onnx_file = (
            handle.onnx_path if handle.onnx_path and handle.onnx_path.suffix in ONNX_SUFFIXES else None
        )
        analysis = analyze(handle.proto, file_bytes=onnx_file.stat().st_size if onnx_file else None)
        analysis.warnings.extend(handle.warnings)
        support = SupportCache(self.registry, handle.proto)
        support.preload()
        estimates = EstimateCache(analysis, self.registry)
        ev, cal = find_demo_data(path) if path else (None, None)
        size = [file_size(onnx_file)] if onnx_file else []
        return PreparedModel(handle, analysis, support, estimates, ev, cal, size, onnx_file)

    def install(self, prepared: PreparedModel) -> ModelHandle:
        """Make a prepared model current (fast; runs on the UI thread)."""
        p = prepared
        self.handle, self.analysis = p.handle, p.analysis
        self.recipe = Recipe()
        self.support, self.estimates = p.support, p.estimates
        self.eval_data, self.calib_data = p.eval_data, p.calib_data
        path = p.handle.source_path
        name = path.name if path else p.handle.name
        self.variants = [VariantEntry("original", f"original ({name})", Recipe(), p.size, p.onnx_file, True)]
        self._counter = 0
        return p.handle

    def layer(self, name: str) -> LayerInfo | None:
        return self.analysis.by_name().get(name) if self.analysis else None

    def effective_plan(self, name: str) -> LayerPlan | None:
        return self.estimates.plans.get(name) if self.estimates else None

    def set_recipe(self, recipe: Recipe) -> set[str]:
        """Make `recipe` current; returns layers whose effective plan (and estimate) changed."""
        self.recipe = recipe
        return self.estimates.update(recipe) if self.estimates else set()

    # ------------------------------------------------------------------ variants

    def original(self) -> VariantEntry | None:
        return next((v for v in self.variants if v.is_original), None)

    def variant(self, vid: str) -> VariantEntry | None:
        return next((v for v in self.variants if v.id == vid), None)

    def add_variant(self, entry: VariantEntry) -> None:
        self.variants = [v for v in self.variants if v.id != entry.id] + [entry]

    def remove_variant(self, vid: str) -> None:
        """Drop a variant; its children are re-parented to its parent (the tree stays connected)."""
        gone = self.variant(vid)
        if gone is None or gone.is_original:
            return
        for v in self.variants:
            if v.parent == vid:
                v.parent = gone.parent
        self.variants = [v for v in self.variants if v.id != vid]

    def children(self) -> dict[str | None, list[VariantEntry]]:
        """parent id -> child variants (None: made from the original), in creation order."""
        ids = {v.id for v in self.variants}
        out: dict[str | None, list[VariantEntry]] = {None: []}
        for v in self.variants:
            if v.is_original:
                continue
            out.setdefault(v.parent if v.parent in ids else None, []).append(v)
        return out

    def next_label(self) -> str:
        self._counter += 1
        return f"v{self._counter}"

    # ------------------------------------------------------------------ data

    def eval_dataset(self) -> Dataset:
        """Evaluation data (labels -> accuracy), else calibration data, else random inputs."""
        spec = self.eval_data or self.calib_data
        if spec is None:
            return synthetic_dataset(self.handle, self.settings.synthetic_samples)
        ds = load_dataset(spec)
        n = self.settings.eval_samples
        return calibration_subset(ds, n) if n else ds

    def calibration_dataset(self) -> Dataset:
        """Calibration samples as a Dataset (labels kept when the file has them) for sweeps and
        searches; random inputs when the user gave no data."""
        spec = self.calib_data or self.eval_data
        if spec is None:
            return synthetic_dataset(self.handle, self.settings.synthetic_samples)
        return calibration_subset(load_dataset(spec), self.settings.calib_samples)

    def data_paths(self) -> tuple[str | None, str | None]:
        """(evaluation, calibration) files as `eval_dataset` / `calibration` pick them (None:
        random inputs / no calibration), for jobs that load the data in a subprocess."""
        ev = self.eval_data or self.calib_data
        cal = self.calib_data or self.eval_data
        for p in {ev, cal} - {None}:
            if not Path(p).exists():
                raise DatasetError(f"{p}: no such file", hint="choose the data again (Data menu)")
        return (str(ev) if ev else None), (str(cal) if cal else None)

    def calibration(self) -> dict[str, np.ndarray] | None:
        spec = self.calib_data or self.eval_data
        if spec is None:
            return None
        try:
            ds = load_dataset(spec)
        except DatasetError:
            raise
        return calibration_subset(ds, self.settings.calib_samples).inputs


# ---------------------------------------------------------------------- jobs (generators)


def bench_model(path: Path, settings: MeasureSettings, ctx: JobContext) -> list[Metric]:
    """Latency (p50/p90) of an ONNX file on ORT's CPU provider; honours cancel at every run."""
    return bench_file(path, asdict(settings), ctx)


def measure_original_job(
    ctx: JobContext, *, handle: ModelHandle, data: Dataset, settings: MeasureSettings
) -> Generator[Progress, None, list[Metric]]:
    """Evaluate + benchmark the original model (the reference point of the plot)."""
    yield Progress(0.0, "evaluating the original")
    ref = handle.proto if data.labels is None else None
    metrics = evaluate(handle.proto, data, reference=ref, threads=settings.threads, ctx=ctx.sub(0, 0.6))
    path = handle.onnx_path or handle.source_path
    if path is None or Path(path).suffix not in ONNX_SUFFIXES:
        tmp = Path(tempfile.mkdtemp(prefix="pareto-bench-")) / "original.onnx"
        path = save_model(handle.proto, tmp)
    yield Progress(0.6, "benchmarking the original")
    metrics += bench_model(Path(path), settings, ctx.sub(0.6, 1.0))
    yield Progress(1.0, "done")
    return metrics


def apply_and_measure_job(
    ctx: JobContext,
    *,
    handle: ModelHandle,
    recipe: Recipe,
    data: Dataset,
    calibration: dict[str, np.ndarray] | None,
    settings: MeasureSettings,
    out_dir: Path,
    label: str,
    registry: Registry | None = None,
    parent: str | None = None,
) -> Generator[Progress, None, VariantEntry]:
    """compress -> evaluate (accuracy with labels, else fidelity) -> size on disk + latency.

    The variant file is written to a hidden temp name and renamed only when every measurement
    succeeded, so a cancelled or failed job leaves no partial file behind."""
    from studio.core.pipeline import compress

    yield Progress(0.0, "compressing")
    sub = ctx.sub(0, 0.45)
    variant = forward(compress(handle, recipe, calibration=calibration, registry=registry, ctx=sub), sub)
    yield Progress(0.45, "evaluating")
    ref = handle.proto if data.labels is None else None
    metrics = evaluate(variant.proto, data, reference=ref, threads=settings.threads, ctx=ctx.sub(0.45, 0.7))
    out_dir.mkdir(parents=True, exist_ok=True)
    vid = variant.id or label
    final = out_dir / f"{vid}.onnx"
    tmp = out_dir / f".{vid}.onnx.partial"
    try:
        save_model(variant.proto, tmp)
        metrics += disk_size(tmp)
        yield Progress(0.72, "benchmarking")
        metrics += bench_model(tmp, settings, ctx.sub(0.72, 1.0))
        ctx.check()
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    variant.metrics = list(metrics)
    variant.parent = parent
    yield Progress(1.0, "done")
    return VariantEntry(vid, label, recipe, metrics, final, False, variant, list(variant.warnings), parent)


# ---------------------------------------------------------------------- jobs in a subprocess
#
# Apply & measure, Evaluate and Benchmark run in a spawned child (studio.core.measure_job): on a
# 90 MB model, protobuf copies/serialization, onnx.checker and ORT session creation hold the GIL
# for hundreds of ms, which froze the UI even from a worker thread (600 ms stalls on MiniLM).
# The child reopens the model from its file and returns only paths and metric dicts; the GUI
# never deserializes the variant unless a later job (diff, export, report) asks for it, on a worker.
#
# Used for every model that has a file, not only big ones. Measured on the digits demo (2 shared
# cores): Apply & measure takes 1.6 s in a child vs 0.3 s in a thread (spawn + importing numpy/
# onnx/onnxruntime/plugins), with the same worst UI stall (77 vs 82 ms); MiniLM int8 drops from
# 600 ms to 67 ms. One second on a demo is a fair price for one code path, crash isolation (a
# segfaulting ORT or plugin becomes a failed job) and a cancel that stops a technique mid-`apply`.
# Models that live only in memory (no file) keep the in-thread jobs above.


def subprocess_apply_job(
    ctx: JobContext,
    *,
    spec: tuple[str, dict | None],
    recipe: Recipe,
    data_path: str | None,
    calib_path: str | None,
    settings: MeasureSettings,
    out_dir: Path,
    label: str,
    parent: str | None = None,
) -> Generator[Progress, None, VariantEntry]:
    """`apply_and_measure_job` with the work in a child process; returns a VariantEntry whose
    `variant` is a FileVariant (the model stays in its file)."""
    from studio.core import measure_job

    out = new_variant_path(out_dir, label)
    try:
        res = yield from run_in_subprocess(
            measure_job.apply_and_measure, spec[0], spec[1], recipe.dump("yaml"), data_path, calib_path,
            str(out), asdict(settings), ctx=ctx,
        )  # fmt: skip
    finally:
        cleanup_scratch(out)  # a cancelled (terminated) or crashed child leaves no partial file
    metrics = [Metric.from_dict(d) for d in res["metrics"]]
    prov = dict(res["provenance"])
    vid = prov.get("id") or out.stem
    prov["id"] = vid
    variant = FileVariant(res["path"], recipe, prov, parent, res["warnings"], metrics)
    variant.external_data = res.get("external_data", False)
    return VariantEntry(
        vid, label, recipe, metrics, Path(res["path"]), False, variant, list(res["warnings"]), parent
    )


def subprocess_measure_job(
    ctx: JobContext,
    *,
    spec: tuple[str, dict | None],
    data_path: str | None,
    settings: MeasureSettings,
    reference: tuple[str, dict | None] | None = None,
    evaluate_model: bool = True,
    bench: bool = True,
) -> Generator[Progress, None, list[Metric]]:
    """Evaluate and/or benchmark a model file in a child process; returns the metrics."""
    from studio.core import measure_job

    ref_path, ref_factory = reference if reference is not None else (None, None)
    dicts = yield from run_in_subprocess(
        measure_job.measure_model, spec[0], spec[1], data_path, asdict(settings), ctx=ctx,
        reference_path=ref_path, reference_factory=ref_factory, evaluate_model=evaluate_model, bench=bench,
    )  # fmt: skip
    return [Metric.from_dict(d) for d in dicts]
