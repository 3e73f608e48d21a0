"""Distillation fine-tuning (stage FINETUNE) for models opened from PyTorch.

Design. FINETUNE runs last, after the pipeline has rewritten the ONNX graph; fine-tuning that
graph is not possible (no training in ONNX Runtime here), so this technique rebuilds the recipe in
torch and *replaces* the pipeline's ONNX result:

1. The teacher is the original torch module (``ctx.extras["torch_source"]``); the student is a
   copy with the recipe's decompose / prune stages applied in torch (``torch_map``: same rank and
   channel-selection rules as the ONNX techniques, BatchNorm folded first).
2. Layers with an int8 / int4 quantize step get fake quantization (QAT, ``lowbit``) so training
   sees the quantization error.
3. The student is trained by knowledge distillation (``kd``) on ``data`` (an npz / dataset spec)
   or, if not given, on the calibration inputs; labels (``labels_data``) add a hard-label term.
   The best state by distillation loss on a held-back split is kept. A cancel during training
   means "stop now": the cancel is consumed, the best checkpoint is exported and a warning says so
   (a second cancel aborts the job).
4. The trained float student is exported (legacy exporter, opset 17, the source's input/output
   names) with the recipe's node names (``X``, or ``X/svd_a`` ... for factorised layers) and the
   recipe's quantize / encode steps are re-run on it by the pipeline itself, so the int8 variant is
   produced by the same ONNX Runtime tools as without fine-tuning - from QAT-trained weights.

Layers whose effective plan has no ``finetune`` step are frozen (their weights do not train).
The per-step progress payload is ``{"step", "loss", "val_loss", "best_step"}`` (val_loss is the
latest held-back distillation loss), for a live loss curve.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
from pydantic import Field

from studio.core.errors import DatasetError, TechniqueError
from studio.core.graph import LayerInfo
from studio.plugin_api.technique import (
    YES,
    ApplyContext,
    BaseTechnique,
    LayerEstimate,
    Params,
    Stage,
    Support,
)

NEEDS_TORCH = "distillation needs a model opened from PyTorch (state_dict + factory or TorchScript)"


class DistillParams(Params):
    steps: int = Field(200, ge=0, le=1_000_000, description="optimizer steps")
    lr: float = Field(1e-3, gt=0, le=1.0)
    batch_size: int = Field(64, ge=1)
    temperature: float = Field(4.0, gt=0, description="softmax temperature T of the KD term")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label loss (only with labels)")
    hint_weight: float = Field(0.0, ge=0, description="weight of layer-output (hint) losses")
    seed: int = 0
    data: str | None = Field(None, description="training inputs (npz / dataset spec); default: calibration")
    labels_data: str | None = Field(
        None, description="npz whose 'labels' align with data; none = teacher only"
    )
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="held back to pick the best checkpoint")
    eval_every: int = Field(10, ge=1)
    qat: bool = Field(True, description="fake-quantize layers the recipe quantizes while training")
    threads: int = Field(1, ge=1, le=64, description="torch threads (1: no OpenMP spin-wait on a busy CPU)")


class Distill(BaseTechnique):
    """Knowledge-distillation fine-tuning of the compressed model against the original (torch)."""

    name: ClassVar[str] = "distill"
    label: ClassVar[str] = "Distillation fine-tune"
    stage: ClassVar[Stage] = Stage.FINETUNE
    Params: ClassVar[type[Params]] = DistillParams
    primary_param: ClassVar[str | None] = "steps"
    description: ClassVar[str] = (
        "Trains the pruned / factorised / quantized model to mimic the original (KD, QAT). Needs a "
        "model opened from PyTorch; changes weights, not size."
    )

    def applies_to(self, layer: LayerInfo) -> Support:
        # Training is whole-model; a layer without the step is frozen (see module doc).
        return YES

    def estimate(self, layer: LayerInfo, params: Params, before: LayerEstimate) -> LayerEstimate:
        return LayerEstimate(
            before.params,
            before.macs,
            before.weight_bytes,
            notes=[
                *before.notes,
                f"distillation fine-tune ({params.steps} steps): weights change, size does not",
            ],
        )

    def apply(self, model: onnx.ModelProto, plan: dict[str, Params], ctx: ApplyContext) -> onnx.ModelProto:
        src = ctx.extras.get("torch_source")
        if not src:
            raise TechniqueError(NEEDS_TORCH)
        recipe = ctx.extras.get("recipe")
        if recipe is None or ctx.original is None:
            raise TechniqueError(
                "distillation needs the full recipe and the original model from the pipeline"
            )
        distinct = {p.model_dump_json() for p in plan.values()}
        params = next(iter(plan.values()))
        if len(distinct) > 1:
            ctx.warn(
                "distill: layers give different finetune params; the first layer's are used for the model"
            )
        return run_distillation(src, recipe, ctx.original, params, ctx)


# ---------------------------------------------------------------------- the job


def _inputs_outputs(proto: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [o.name for o in proto.graph.output]


def training_data(params: DistillParams, ctx: ApplyContext, input_names: list[str]):
    """(inputs in model order, labels or None) from params.data or the calibration inputs."""
    from studio.core.evaluate import load_dataset

    if params.data:
        ds = load_dataset(params.data)
        inputs, source = ds.inputs, params.data
    elif ctx.calibration:
        inputs, source = ctx.calibration, "calibration data"
    else:
        raise TechniqueError(
            "distillation needs training inputs: set finetune params data=<npz> or give calibration data"
        )
    missing = [n for n in input_names if n not in inputs]
    if missing:
        raise DatasetError(f"{source}: no array for model input(s) {missing}")
    arrays = [np.asarray(inputs[n]) for n in input_names]
    labels = None
    if params.labels_data:
        lab = load_dataset(params.labels_data).labels
        if lab is None:
            raise DatasetError(f"{params.labels_data}: holds no 'labels' array")
        if len(lab) != len(arrays[0]):
            raise DatasetError(
                f"{params.labels_data}: {len(lab)} labels for {len(arrays[0])} training samples in {source}"
            )
        labels = lab
    return arrays, labels, source


def quantize_recipe(recipe, build, student_proto: onnx.ModelProto, ctx: ApplyContext):
    """The recipe's quantize / encode steps, re-targeted at the student's layer names."""
    from studio.core.graph import analyze
    from studio.core.pipeline import layers_for
    from studio.core.recipe import LayerPlan, Recipe
    from studio.plugin_api.registry import default_registry

    reg = default_registry()
    cur = analyze(student_proto, with_stats=False)
    by_name = cur.by_name()
    layers: dict[str, LayerPlan] = {}
    for name, plan in build.plans.items():
        if plan.quantize is None and plan.encode is None:
            continue
        for target in layers_for(name, cur):
            steps = {}
            for stage in ("quantize", "encode"):
                step = getattr(plan, stage)
                if step is not None and reg.get(step.technique).applies_to(by_name[target]):
                    steps[stage] = step
            if steps:
                layers[target] = LayerPlan(**steps)
        if not layers_for(name, cur):
            ctx.warn(f"{name}: not found in the distilled model; its quantize/encode steps were not applied")
    return Recipe(name=recipe.name, calibration=recipe.calibration, layers=layers)


def run_distillation(src: dict, recipe, original: onnx.ModelProto, params: DistillParams, ctx: ApplyContext):
    import torch

    from studio.backends.torch_loader import load_torch_module
    from studio.core.jobs import JobContext, drive
    from studio.core.model import ModelHandle
    from studio.core.pipeline import compress
    from studio_distill import kd, lowbit, torch_map

    job = ctx.job
    job.report(0.0, "distill: loading the torch model")
    teacher = load_torch_module(
        src["path"], factory=src.get("factory"), trust_pickle=src.get("trust_pickle", False)
    )
    input_names, output_names = _inputs_outputs(original)
    arrays, labels, source = training_data(params, ctx, input_names)
    example = tuple(torch.from_numpy(np.ascontiguousarray(a[:2])) for a in arrays)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        build = torch_map.build_student(teacher, recipe, original, example, seed=params.seed)
        for note in build.notes:
            ctx.warn(f"distill: {note}")
        trainable = _freeze_unplanned(build)
        qat = (
            _attach_qat(build) if params.qat and not isinstance(build.student, torch.jit.ScriptModule) else []
        )
        hints = _hints(build, teacher) if params.hint_weight > 0 else []
        cfg = kd.KDConfig(
            steps=params.steps,
            lr=params.lr,
            batch_size=params.batch_size,
            temperature=params.temperature,
            alpha=params.alpha,
            hint_weight=params.hint_weight,
            seed=params.seed,
            val_fraction=params.val_fraction,
            eval_every=params.eval_every,
            threads=params.threads,
        )
        train_job = job.sub(0.02, 0.85)
        res = kd.train_kd(
            build.student,
            teacher,
            arrays,
            cfg,
            labels=labels,
            hints=hints,
            report=lambda f, m, p: train_job.report(f, m, p),
        )
        if res.cancelled:
            job._cancel.clear()  # consumed: "stop training, keep the best checkpoint"
            ctx.warn(
                f"distill: cancelled at step {res.steps_done}/{params.steps}; exported the best "
                f"checkpoint (step {res.best_step}, held-back KD loss {res.best_val_loss:.4f})"
            )
        lowbit.detach_all(qat, bake=True)
        job.report(0.87, "distill: exporting the trained student")
        student_proto = torch_map.export_student(build, example, input_names, output_names)
    finally:
        torch.set_num_threads(old_threads)
    ctx.extras["distill"] = {
        "steps": res.steps_done,
        "best_step": res.best_step,
        "best_val_loss": res.best_val_loss,
        "cancelled": res.cancelled,
        "seconds": round(res.seconds, 3),
        "n_train": res.n_train,
        "n_val": res.n_val,
        "data": source,
        "labels": labels is not None,
        "qat_layers": len(qat),
        "trainable_params": trainable,
        "history": res.history,
    }
    qrec = quantize_recipe(recipe, build, student_proto, ctx)
    if not qrec.layers:
        job.report(1.0, "distill: done")
        return student_proto
    handle = ModelHandle(student_proto, sha256="distilled", source_kind="onnx")
    sub = job.sub(0.9, 1.0)
    inner = JobContext(lambda p: sub.report(max(p.fraction, 0.0), f"distill: {p.message}"), job._cancel)
    variant = drive(compress(handle, qrec, calibration=ctx.calibration, ctx=inner), inner)
    ctx.warnings.extend(f"distill: {w}" for w in variant.warnings)
    return variant.proto


def _freeze_unplanned(build) -> int:
    """Freeze layers whose plan has no finetune step; returns the trainable parameter count."""
    for name, path in build.layer_module.items():
        plan = build.plans.get(name)
        if plan is None or plan.finetune is None:
            for p in build.student.get_submodule(path).parameters():
                p.requires_grad_(False)
    return int(sum(p.numel() for p in build.student.parameters() if p.requires_grad))


def _attach_qat(build) -> list:
    """Fake quantization mirroring each layer's ONNX quantize step (weights and activations)."""
    from studio_distill import lowbit

    out = []
    for name in build.layer_module:
        plan = build.plans.get(name)
        step = plan.quantize if plan is not None else None
        if step is None or step.technique not in ("int8_static", "int8_dynamic", "int4_weight"):
            continue  # fp16 and other quantizers: no meaningful fake quant
        for path in build.leaf_paths(name):
            weight, act = _fake_quant_for(step)
            out.append(lowbit.attach(build.student.get_submodule(path), weight, act))
    return out


def _fake_quant_for(step):
    """(weight parametrization, input hook) for one layer of an int8 / int4 quantize step."""
    from studio_quantization import ort_bridge

    from studio_distill import lowbit

    p = step.params
    if step.technique == "int4_weight":
        block, sym = int(p.get("block_size", 32)), bool(p.get("symmetric", False))
        return lowbit.WeightQuant("blocks", 4, block, sym), None
    # ORT's reduce_range (auto on x86 without VNNI) means 7-bit weights.
    bits = 7 if ort_bridge.auto_reduce_range(p.get("reduce_range")) else 8
    act = lowbit.ActQuant("static" if step.technique == "int8_static" else "dynamic")
    return lowbit.WeightQuant("symmetric", bits), act


def _hints(build, teacher) -> list:
    """Hint pairs: each recipe layer's output in the student vs the teacher (post-BN when folded)."""
    from studio_distill.kd import Hint

    out = []
    for name, path in build.layer_module.items():
        t_path = build.folded.get(path, path)
        try:
            s_mod, t_mod = build.student.get_submodule(path), teacher.get_submodule(t_path)
        except AttributeError:
            continue
        out.append(Hint(name, s_mod, t_mod, build.kept.get(name)))
    return out
