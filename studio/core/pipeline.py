"""Apply a recipe: stages in fixed order, graph checked after each, a Variant out.

The source file is never touched: the pipeline works on a copy of the ModelHandle's proto.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import onnx

from studio import __version__
from studio.core.errors import JobCancelled, RecipeError, StudioError, TechniqueError
from studio.core.graph import LayerInfo, ModelAnalysis, analyze
from studio.core.jobs import JobContext, Progress
from studio.core.metrics import Metric
from studio.core.model import ModelHandle, infer_shapes_inplace, load_external_into
from studio.core.onnx_utils import model_nbytes
from studio.core.recipe import Recipe
from studio.plugin_api.registry import Registry, default_registry
from studio.plugin_api.technique import ApplyContext, LayerEstimate, Stage


@dataclass
class Variant:
    """A compressed model plus how it was made."""

    proto: onnx.ModelProto
    recipe: Recipe
    provenance: dict
    parent: str | None = None
    warnings: list[str] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.provenance.get("id", "")

    def size_bytes(self) -> int:
        return model_nbytes(self.proto)  # external tensors counted inline


# ---------------------------------------------------------------------- validation / estimate


@dataclass
class ResolvedPlan:
    """Recipe resolved against a model: per layer, the technique objects and parsed params."""

    per_layer: dict[str, list[tuple[str, object, object]]]  # layer -> [(stage, technique, params)]
    skipped: dict[str, list[str]]  # layer -> reasons a default/glob step did not apply


def resolve_plan(analysis: ModelAnalysis, recipe: Recipe, registry: Registry | None = None) -> ResolvedPlan:
    """Validate every step against its technique; explicit layer errors are RecipeErrors."""
    registry = registry or default_registry()
    layers = analysis.by_name()
    names = [la.name for la in analysis.layers]
    plans = recipe.resolve(names)
    explicit = recipe.explicit_layers(names)
    per_layer: dict[str, list] = {}
    skipped: dict[str, list[str]] = {}
    for lname, plan in plans.items():
        layer = layers[lname]
        steps = []
        for stage, step in plan.steps():
            try:
                tech = registry.get(step.technique)
            except StudioError as e:
                raise RecipeError(e.message, layer=lname, field=f"{stage}.technique", hint=e.hint) from None
            if tech.stage.key != stage:
                raise RecipeError(
                    f"technique {step.technique!r} belongs to stage {tech.stage.key!r}, not {stage!r}",
                    layer=lname,
                    field=stage,
                )
            try:
                params = (
                    tech.parse_params(step.params)
                    if hasattr(tech, "parse_params")
                    else tech.Params(**step.params)
                )
            except Exception as e:  # pydantic ValidationError
                raise _param_error(e, lname, stage) from None
            sup = tech.applies_to(layer)
            if not sup:
                # Only a step written on this exact layer is a hard error; one inherited from
                # defaults/globs is skipped like on any other layer.
                if lname in explicit and stage in recipe.layers[lname].model_fields_set:
                    raise RecipeError(
                        f"{step.technique} cannot handle this layer: {sup.reason}", layer=lname, field=stage
                    )
                skipped.setdefault(lname, []).append(f"{step.technique}: {sup.reason}")
                continue
            steps.append((stage, tech, params))
        if steps:
            per_layer[lname] = steps
    return ResolvedPlan(per_layer, skipped)


def _param_error(e: Exception, layer: str, stage: str) -> RecipeError:
    errs = getattr(e, "errors", None)
    if callable(errs):
        first = errs()[0]
        f = ".".join(str(x) for x in first["loc"])
        return RecipeError(first["msg"], layer=layer, field=f"{stage}.params.{f}" if f else f"{stage}.params")
    return RecipeError(str(e), layer=layer, field=stage)


@dataclass
class RecipeEstimate:
    per_layer: dict[str, LayerEstimate]
    params: int
    macs: int
    weight_bytes: int
    kind: str = "estimated"
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def metrics(self) -> list[Metric]:
        return [
            Metric("size_bytes", float(self.weight_bytes), "estimated", "formula (weights)", unit="B"),
            Metric("macs", float(self.macs), "estimated", "formula"),
            Metric("params", float(self.params), "estimated", "formula"),
        ]


def estimate_layer(layer: LayerInfo, steps: list[tuple[str, object, object]]) -> LayerEstimate:
    est = LayerEstimate.of(layer)
    notes: list[str] = []
    for _stage, tech, params in steps:
        est = tech.estimate(layer, params, est)
        notes.extend(est.notes)
    est.notes = notes
    return est


def estimate_recipe(
    analysis: ModelAnalysis, recipe: Recipe, registry: Registry | None = None
) -> RecipeEstimate:
    """Instant formula-based estimate of the whole model after the recipe (never measured)."""
    plan = resolve_plan(analysis, recipe, registry)
    per_layer = {}
    params = macs = nbytes = 0
    for la in analysis.layers:
        e = estimate_layer(la, plan.per_layer[la.name]) if la.name in plan.per_layer else LayerEstimate.of(la)
        per_layer[la.name] = e
        params += e.params
        macs += e.macs
        nbytes += e.weight_bytes
    return RecipeEstimate(
        per_layer, params, macs, nbytes + analysis.other_initializer_bytes, skipped=plan.skipped
    )


# ---------------------------------------------------------------------- checks


def check_model(proto: onnx.ModelProto, *, what: str = "model", providers: list[str] | None = None) -> None:
    """onnx.checker (full) + an ORT session load; raises TechniqueError naming the step."""
    try:
        if proto.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise TechniqueError(f"{what} produced an invalid ONNX graph: {str(e).splitlines()[0][:300]}") from e
    try:
        from studio.core.evaluate import make_session

        make_session(proto, threads=1, providers=providers)
    except Exception as e:
        raise TechniqueError(
            f"{what} produced a graph ONNX Runtime cannot load: {str(e).splitlines()[0][:300]}"
        ) from e


# ---------------------------------------------------------------------- apply


def layers_for(name: str, analysis: ModelAnalysis) -> list[str]:
    """Current layers standing for a recipe layer: itself, or the `name/...` nodes derived from it."""
    cur = analysis.by_name()
    if name in cur:
        return [name]
    return [n for n in cur if n.startswith(name + "/")]


def compress(
    model: ModelHandle,
    recipe: Recipe,
    *,
    calibration: dict[str, np.ndarray] | None = None,
    registry: Registry | None = None,
    parent: str | None = None,
    check: bool = True,
    ctx: JobContext | None = None,
) -> Generator[Progress, None, Variant]:
    """Generator job: yields progress, returns the Variant. Honours cancel at every yield; pass
    the driving `ctx` too so a cancel also stops a technique inside its `apply` (ctx.progress)."""
    registry = registry or default_registry()
    cancel_event = ctx._cancel if ctx is not None else None
    driver = ctx  # (the loop below rebinds `ctx` to each stage's ApplyContext)
    t0 = time.time()
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    # Techniques rewrite weights in the proto: the variant holds all its data in memory.
    base_dir = getattr(model, "base_dir", None)
    load_external_into(proto, str(base_dir) if base_dir else None)
    analysis = analyze(proto, with_stats=False)
    plan = resolve_plan(analysis, recipe, registry)
    warnings = [f"{la}: skipped {r}" for la, rs in plan.skipped.items() for r in rs]
    if calibration is None and recipe.calibration.data:
        from studio.core.evaluate import calibration_subset, load_dataset

        ds = calibration_subset(
            load_dataset(recipe.calibration.data), recipe.calibration.n_samples, recipe.calibration.seed
        )
        calibration = ds.inputs
    # group (stage, technique) -> {layer: params}
    work: list[tuple[Stage, str, object, dict[str, object]]] = []
    for stage in Stage:
        by_tech: dict[str, tuple[object, dict]] = {}
        for lname, steps in plan.per_layer.items():
            for st, tech, params in steps:
                if st == stage.key:
                    by_tech.setdefault(tech.name, (tech, {}))[1][lname] = params
        for tname, (tech, layers) in by_tech.items():
            work.append((stage, tname, tech, layers))
    steps_done = []
    yield Progress(0.0, "starting")
    for i, (stage, tname, tech, layers) in enumerate(work):
        yield Progress(i / max(len(work), 1), f"{stage.key}: {tname} on {len(layers)} layer(s)")
        # Names of later stages may have been split by earlier ones (fc1 -> fc1/svd_a, fc1/svd_b).
        cur = analyze(proto, with_stats=False) if i else analysis
        mapped: dict[str, object] = {}
        for lname, params in layers.items():
            targets = layers_for(lname, cur)
            if not targets:
                warnings.append(f"{lname}: {tname} skipped, the layer no longer exists after earlier stages")
            for t in targets:
                if tech.applies_to(cur.by_name()[t]):
                    mapped[t] = params
        if not mapped:
            continue
        # Share the caller's cancel event: a technique's ctx.progress() raises JobCancelled.
        # With a driving ctx, a technique's progress (and payload: a loss curve) goes out live.
        job = JobContext(_forward_into(driver, i, len(work)), cancel_event)
        ctx = ApplyContext(
            job=job, calibration=calibration, original=model.proto, analysis=cur, seed=recipe.calibration.seed
        )
        ctx.extras["torch_source"] = model.torch_source
        ctx.extras["model_handle"] = model
        ctx.extras["recipe"] = recipe  # fine-tuning rebuilds the whole recipe in the source framework
        try:
            new = tech.apply(proto, mapped, ctx)
        except (StudioError, JobCancelled, MemoryError):
            raise  # out of memory is no fault of the recipe: let the job runner report it
        except Exception as e:
            raise TechniqueError(f"{tname} failed on {sorted(mapped)[:3]}: {type(e).__name__}: {e}") from e
        if new is not None:
            proto = new
        warnings.extend(ctx.warnings)
        infer = infer_shapes_inplace(proto)
        warnings.extend(w for w in infer if "shape inference failed" in w)
        if check:
            check_model(proto, what=f"{stage.key}/{tname}")
        steps_done.append({"stage": stage.key, "technique": tname, "layers": sorted(mapped)})
        yield Progress((i + 1) / max(len(work), 1), f"{tname} done")
    digest = hashlib.sha256(recipe.model_dump_json().encode() + model.sha256.encode()).hexdigest()[:12]
    prov = {
        "id": digest,
        "source_path": str(model.source_path) if model.source_path else None,
        "source_sha256": model.sha256,
        "studio_version": __version__,
        "steps": steps_done,
        "seconds": round(time.time() - t0, 3),
        "created": time.time(),
    }
    proto.producer_name = "pareto-studio"
    proto.producer_version = __version__
    yield Progress(1.0, "done")
    return Variant(proto, recipe, prov, parent=parent, warnings=warnings)


def _forward_into(ctx: JobContext | None, i: int, n: int):
    """Progress callback of stage `i` of `n`: maps a technique's 0..1 into the stage's slice of
    the caller's ctx (without its cancel check: the shared cancel event is the technique's)."""
    if ctx is None or ctx._on_progress is None:
        return None
    lo, hi = (
        ctx._lo + (ctx._hi - ctx._lo) * i / max(n, 1),
        ctx._lo + (ctx._hi - ctx._lo) * (i + 1) / max(n, 1),
    )

    def on(p: Progress) -> None:
        f = -1.0 if p.fraction < 0 else lo + (hi - lo) * min(max(p.fraction, 0.0), 1.0)
        ctx._on_progress(Progress(f, p.message, p.payload))

    return on
