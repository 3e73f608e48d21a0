"""Measure jobs that run in a spawned subprocess (`jobs.run_in_subprocess`).

onnx/protobuf/ORT calls on a big model (SerializeToString, CopyFrom, onnx.checker, ORT session
creation) hold the GIL for hundreds of milliseconds, so a worker *thread* still freezes the GUI
on a 90 MB model. These module-level functions run in a child process instead: the child opens
the model from its file, does the work, writes the variant to a file and sends back only small,
picklable data (paths, metric dicts, warnings, provenance). Progress (with payloads: a loss
curve, a candidate) streams back live through the job's pipe; a crash is a JobCrashedError and a
cancel terminates the child.

Every function here is also callable in-process (tests, the CLI): `fn(JobContext(), ...)`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from studio.core.evaluate import Dataset, calibration_subset, evaluate, load_dataset, make_session
from studio.core.jobs import JobContext, forward
from studio.core.metrics import Metric
from studio.core.model import ModelHandle, load_model, load_onnx_file, save_model
from studio.core.onnx_utils import model_nbytes

# Option keys (MeasureSettings fields) and their defaults when a caller leaves one out.
DEFAULT_OPTIONS = {
    "eval_samples": None,
    "calib_samples": 128,
    "bench_runs": 30,
    "bench_warmup": 5,
    "bench_batch": 1,
    "threads": 1,
    "synthetic_samples": 32,
}
PRIVATE_PREFIX = ".job-"  # per-job scratch folder beside the output; removed whatever happens


def _opt(options: dict | None) -> dict:
    return {**DEFAULT_OPTIONS, **(options or {})}


# ---------------------------------------------------------------------- model + data specs


def model_spec(handle: ModelHandle) -> tuple[str, dict | None] | None:
    """(model_path, factory_info) that reopens `handle` in another process, or None when the
    model lives only in memory. PyTorch sources reopen from the source (the ONNX export is cached
    by hash) so fine-tuning still finds its module."""
    ts = handle.torch_source
    if ts and ts.get("path"):
        return str(ts["path"]), {
            "factory": ts.get("factory"),
            "trust_pickle": bool(ts.get("trust_pickle")),
            "input_shape": ts.get("input_shape"),
        }
    for p in (handle.onnx_path, handle.source_path):
        if p is not None and Path(p).suffix.lower() == ".onnx" and Path(p).exists():
            return str(p), None
    return None


def open_model(model_path: str, factory_info: dict | None = None) -> ModelHandle:
    """The child's side of `model_spec`: load (and normalize) the model exactly as the GUI did."""
    fi = factory_info or {}
    shape = tuple(fi["input_shape"]) if fi.get("input_shape") else None
    return load_model(
        Path(model_path),
        factory=fi.get("factory"),
        trust_pickle=bool(fi.get("trust_pickle")),
        input_shape=shape,
    )


def synthetic_dataset(handle: ModelHandle, n: int, seed: int = 0) -> Dataset:
    """Random inputs that fit the model (used for fidelity when the user gave no data)."""
    sess = make_session(handle.proto, threads=1)
    rng = np.random.default_rng(seed)
    inputs = {}
    for i in sess.get_inputs():
        shape = [n] + [d if isinstance(d, int) and d > 0 else 8 for d in i.shape[1:]]
        if "int" in i.type:
            inputs[i.name] = rng.integers(0, 100, size=shape).astype(np.int64 if "64" in i.type else np.int32)
        elif "bool" in i.type:
            inputs[i.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            inputs[i.name] = rng.standard_normal(shape).astype(np.float16 if "16" in i.type else np.float32)
    return Dataset(inputs, None, f"random inputs ({n}, no data given)")


def eval_data(handle: ModelHandle, data_path: str | None, options: dict | None) -> Dataset:
    """Evaluation data as the GUI session picks it: the file (subset of `eval_samples`), else
    seeded random inputs (deterministic, so parent and child agree)."""
    o = _opt(options)
    if data_path is None:
        return synthetic_dataset(handle, o["synthetic_samples"])
    ds = load_dataset(data_path)
    return calibration_subset(ds, o["eval_samples"]) if o["eval_samples"] else ds


def calibration_inputs(calib_path: str | None, options: dict | None) -> dict[str, np.ndarray] | None:
    if calib_path is None:
        return None
    return calibration_subset(load_dataset(calib_path), _opt(options)["calib_samples"]).inputs


# ---------------------------------------------------------------------- size + latency


def bench_file(path: str | os.PathLike, options: dict | None, ctx: JobContext) -> list[Metric]:
    """Latency (p50/p90) of an ONNX file on ORT's CPU provider; honours cancel at every run."""
    from studio.core.bench import bench_latency

    o = _opt(options)
    return bench_latency(
        Path(path),
        batch_sizes=(o["bench_batch"],),
        threads=o["threads"],
        warmup=o["bench_warmup"],
        repeats=o["bench_runs"],
        ctx=ctx,
    )


def disk_size(path: Path) -> list[Metric]:
    from studio.core.bench import size_on_disk

    return size_on_disk(path)


def file_size(path: Path) -> Metric:
    """Bytes of the model file plus its external data (no zip pass: instant even for big models)."""
    from studio.core.bench import model_file_bytes

    return Metric("size_bytes", float(model_file_bytes(path)), "measured", "file on disk", unit="B")


# ---------------------------------------------------------------------- child functions


def _move_model(src: Path, dst: Path) -> None:
    """Move an ONNX file (and its external data file, named after it) into place."""
    data = src.with_name(src.name + ".data")
    if data.exists():
        os.replace(data, dst.with_name(src.name + ".data"))  # the model names it by this name
    os.replace(src, dst)


def apply_and_measure(
    ctx: JobContext,
    model_path: str,
    factory_info: dict | None,
    recipe_yaml: str,
    data_path: str | None,
    calib_path: str | None,
    out_path: str,
    options: dict | None = None,
) -> dict:
    """compress -> evaluate (accuracy with labels, else fidelity vs the original) -> size on disk
    + latency; the variant is written to `out_path`. Returns small data only:
    {"path", "metrics" (Metric dicts), "warnings", "provenance", "external_data"}.

    The file appears at `out_path` only when every measurement succeeded; until then it lives
    in a private scratch folder beside it (`cleanup_scratch` removes it after a kill)."""
    from studio.core.pipeline import compress
    from studio.core.recipe import Recipe

    o = _opt(options)
    ctx.report(0.0, "opening the model")
    handle = open_model(model_path, factory_info)
    recipe = Recipe.loads(recipe_yaml)
    data = eval_data(handle, data_path, o)
    calibration = calibration_inputs(calib_path, o)
    ctx.report(0.02, "compressing")
    sub = ctx.sub(0.02, 0.45)
    variant = forward(compress(handle, recipe, calibration=calibration, ctx=sub), sub)
    ctx.report(0.45, "evaluating")
    ref = handle.proto if data.labels is None else None
    metrics = evaluate(variant.proto, data, reference=ref, threads=o["threads"], ctx=ctx.sub(0.45, 0.7))
    final = Path(out_path)
    scratch = scratch_dir(final)
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = save_model(variant.proto, scratch / final.name)
    external = tmp.with_name(tmp.name + ".data").exists()
    variant.proto = None  # the measurements below read the file; free the big proto early
    metrics += disk_size(tmp)
    ctx.report(0.72, "benchmarking")
    metrics += bench_file(tmp, o, ctx.sub(0.72, 1.0))
    ctx.check()
    _move_model(tmp, final)
    shutil.rmtree(scratch, ignore_errors=True)
    ctx.report(1.0, "done")
    return {
        "path": str(final),
        "metrics": [m.to_dict() for m in metrics],
        "warnings": list(variant.warnings),
        "provenance": dict(variant.provenance or {}),
        "external_data": external,
    }


def measure_model(
    ctx: JobContext,
    model_path: str,
    factory_info: dict | None,
    data_path: str | None,
    options: dict | None = None,
    *,
    reference_path: str | None = None,
    reference_factory: dict | None = None,
    evaluate_model: bool = True,
    bench: bool = True,
) -> list[dict]:
    """Evaluate and/or benchmark an existing model file (the original, or a stored variant).
    Without labels, quality is fidelity against the reference model (default: the model itself,
    which gives the original's agreement with itself). Returns Metric dicts."""
    o = _opt(options)
    metrics: list[Metric] = []
    path = Path(model_path)
    onnx_file = path if path.suffix.lower() == ".onnx" else None
    if evaluate_model or onnx_file is None:
        ctx.report(0.0, "opening the model")
        handle = open_model(model_path, factory_info)
        if onnx_file is None:  # a PyTorch source: benchmark its cached ONNX export
            onnx_file = Path(handle.onnx_path)
    if evaluate_model:
        ref_handle = handle if reference_path is None else open_model(reference_path, reference_factory)
        data = eval_data(ref_handle, data_path, o)
        ref = ref_handle.proto if data.labels is None else None
        ctx.report(0.05, "evaluating")
        metrics += evaluate(handle.proto, data, reference=ref, threads=o["threads"], ctx=ctx.sub(0.05, 0.6))
        del handle, ref_handle, ref
    if bench:
        ctx.report(0.6 if evaluate_model else 0.0, "benchmarking")
        metrics += bench_file(onnx_file, o, ctx.sub(0.6 if evaluate_model else 0.0, 1.0))
    ctx.report(1.0, "done")
    return [m.to_dict() for m in metrics]


# ---------------------------------------------------------------------- parent-side helpers


def scratch_dir(final: Path) -> Path:
    """The private folder a job writes `final` in before moving it into place."""
    return final.parent / f"{PRIVATE_PREFIX}{final.stem}"


def cleanup_scratch(final: Path) -> None:
    """Remove what a killed or failed job left (its scratch folder; never a finished file)."""
    shutil.rmtree(scratch_dir(Path(final)), ignore_errors=True)


def new_variant_path(out_dir: Path, label: str) -> Path:
    """A fresh file name for a variant in `out_dir` (label + a short unique suffix)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40] or "variant"
    return Path(out_dir) / f"{safe}-{uuid.uuid4().hex[:6]}.onnx"


class FileVariant:
    """A pipeline Variant (same attributes) whose model stays in its file: `.proto` is read on
    first use, so receiving a measured variant never parses the model on the UI thread."""

    def __init__(self, path, recipe, provenance=None, parent=None, warnings=(), metrics=()):
        self.path = Path(path)
        self.recipe = recipe
        self.provenance = dict(provenance or {})
        self.parent = parent
        self.warnings = list(warnings)
        self.metrics = list(metrics)
        self._proto = None

    @property
    def proto(self):
        if self._proto is None:
            self._proto = load_onnx_file(self.path)
        return self._proto

    @proto.setter
    def proto(self, value) -> None:
        self._proto = value

    @property
    def loaded(self) -> bool:
        return self._proto is not None

    @property
    def id(self) -> str:
        return self.provenance.get("id", "")

    def size_bytes(self) -> int:
        return model_nbytes(self.proto)
