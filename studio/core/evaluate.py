"""Measured evaluation with ONNX Runtime: datasets, accuracy, label-free fidelity."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from studio.core.errors import DatasetError, UnsupportedModelError
from studio.core.metrics import Metric

ORT_TO_NP = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}  # fmt: skip


@dataclass
class Dataset:
    """Model inputs keyed by input name, N samples along axis 0, optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "in-memory"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, idx) -> Dataset:
        idx = np.asarray(idx)
        return Dataset(
            {k: v[idx] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[idx],
            f"{self.source}[{len(idx)} of {len(self)}]",
            dict(self.meta),
        )

    def batches(self, batch_size: int):
        n = len(self)
        for s in range(0, n, batch_size):
            yield {k: v[s : s + batch_size] for k, v in self.inputs.items()}


def calibration_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """Deterministic (seeded) subset; the same n/seed always picks the same samples."""
    if n >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ds), size=n, replace=False))
    return ds.subset(idx)


def make_session(
    model, *, threads: int = 0, providers: list[str] | None = None, profile_dir: str | None = None
):
    """An ORT session over a ModelProto, bytes or a path. threads=0 lets ORT decide."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort_profile")
    if isinstance(model, onnx.ModelProto):
        from studio.core.onnx_utils import ort_model_bytes

        # Weights still in their files (as opened) stay there: ORT reads them from that folder.
        model, folder = ort_model_bytes(model)
        if folder:
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    elif isinstance(model, Path):
        model = str(model)
    try:
        return ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own types (Fail, InvalidGraph, ...): make them user errors
        raise UnsupportedModelError(
            f"ONNX Runtime cannot load the model: {_ort_message(e)}",
            hint="unknown ops, a too-new opset or an invalid graph; see `studio inspect`",
        ) from e


def _ort_message(e: Exception) -> str:
    """First line of an ORT error without its `[ONNXRuntimeError] : 1 : FAIL :` prefix."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)[:300]


def model_input_specs(session) -> dict[str, tuple[list, type]]:
    return {i.name: (list(i.shape), ORT_TO_NP.get(i.type, np.float32)) for i in session.get_inputs()}


def check_dataset(ds: Dataset, session) -> None:
    """Every model input present with matching rank / static dims / dtype kind."""
    specs = model_input_specs(session)
    missing = [k for k in specs if k not in ds.inputs]
    if missing:
        raise DatasetError(
            f"{ds.source}: no array for model input(s) {missing}; it has {sorted(ds.inputs)}",
            hint="name the arrays after the model's inputs",
        )
    if len(ds) == 0:
        raise DatasetError(f"{ds.source}: holds no samples", hint="give at least one sample per input")
    for name, (shape, dt) in specs.items():
        arr = ds.inputs[name]
        if arr.dtype.kind not in "biuf":
            raise DatasetError(
                f"{ds.source}: input {name!r} holds {arr.dtype} values; the model expects numbers ({np.dtype(dt).name})"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise DatasetError(
                f"{ds.source}: input {name!r} holds {bad} NaN/inf value(s)", hint="clean the data"
            )
        if arr.ndim != len(shape):
            raise DatasetError(
                f"{ds.source}: input {name!r} has shape {list(arr.shape)}, the model expects {shape}"
            )
        for a, m in zip(arr.shape[1:], shape[1:]):
            if isinstance(m, int) and m > 0 and a != m:
                raise DatasetError(
                    f"{ds.source}: input {name!r} has shape {list(arr.shape)}, the model expects {shape}"
                )
        if np.dtype(dt).kind != arr.dtype.kind:
            ds.inputs[name] = arr.astype(dt)
        elif arr.dtype != dt:
            ds.inputs[name] = arr.astype(dt)
    if ds.labels is not None and len(ds.labels) != len(ds):
        raise DatasetError(f"{ds.source}: {len(ds.labels)} labels for {len(ds)} samples")


def load_npz(path: str | os.PathLike) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DatasetError(f"{path}: not a readable .npz file ({type(e).__name__})") from e
    labels = arrays.pop("labels", None)
    if not arrays:
        raise DatasetError(f"{path}: holds no input arrays")
    scalars = sorted(k for k, v in arrays.items() if v.ndim == 0)
    if scalars:
        raise DatasetError(f"{path}: array(s) {scalars} are scalars; samples go along axis 0")
    lens = {len(v) for v in arrays.values()}
    if len(lens) != 1:
        raise DatasetError(f"{path}: arrays have different sample counts {sorted(lens)}")
    if labels is not None:
        integral = labels.dtype.kind in "iub" or (
            labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels) & (labels == np.round(labels))))
        )
        if labels.ndim != 1 or not integral:
            raise DatasetError(
                f"{path}: 'labels' must be a 1-D array of class indices, got {labels.dtype} {list(labels.shape)}"
            )
        labels = labels.astype(np.int64)
    return Dataset(arrays, labels, str(path))


def load_dataset(spec: str | os.PathLike, **kw) -> Dataset:
    """npz file, image folder (class sub-folders) or `module:function` evaluator data."""
    s = str(spec)
    p = Path(s)
    if p.is_dir():
        from studio.core.datasets import load_image_folder

        return load_image_folder(p, **kw)
    if p.suffix == ".npz" or p.exists():
        return load_npz(p)
    if ":" in s and not p.exists():
        from studio.core.datasets import load_python_dataset

        return load_python_dataset(s)
    raise DatasetError(f"{s}: no such data file or folder")


def run_model(
    model, ds: Dataset, *, batch_size: int = 64, threads: int = 0, session=None, ctx=None
) -> list[np.ndarray]:
    """All outputs of the model over the dataset, concatenated along axis 0."""
    sess = session or make_session(model, threads=threads)
    check_dataset(ds, sess)
    outs: list[list[np.ndarray]] = []
    n = len(ds)
    for bi, feed in enumerate(ds.batches(batch_size)):
        try:
            res = sess.run(None, feed)
        except Exception as e:  # shapes the model declares but cannot compute, bad values, ...
            raise UnsupportedModelError(
                f"ONNX Runtime failed running the model on {ds.source}: {_ort_message(e)}"
            ) from e
        if not outs:
            outs = [[] for _ in res]
        for k, r in enumerate(res):
            outs[k].append(np.asarray(r))
        if ctx is not None:
            ctx.report(min((bi + 1) * batch_size, n) / n, "evaluating")
    return [np.concatenate(o, axis=0) for o in outs]


def accuracy(logits: np.ndarray, labels: np.ndarray, *, source: str, top: int = 1) -> Metric:
    logits = logits.reshape(len(logits), -1)
    if top == 1:
        hit = logits.argmax(1) == labels
    else:
        k = min(top, logits.shape[1])
        topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        hit = (topk == labels[:, None]).any(1)
    return Metric(f"top{top}", float(hit.mean()), "measured", source, n_samples=len(labels))


def fidelity(
    ref: list[np.ndarray], out: list[np.ndarray], *, source: str, token_mask: np.ndarray | None = None
) -> list[Metric]:
    """Label-free agreement with the original model's outputs (first output drives top-1).

    `token_mask` ([N, T], e.g. the attention mask) restricts [N, T, H] outputs to real tokens:
    padding positions carry no meaning and would otherwise dominate the worst-case numbers."""
    n = len(ref[0])
    r = ref[0].reshape(n, -1).astype(np.float64)
    o = out[0].reshape(n, -1).astype(np.float64)
    if r.shape != o.shape:
        raise DatasetError(
            f"output shapes differ: original {list(ref[0].shape)}, variant {list(out[0].shape)}"
        )
    if ref[0].ndim == 3:  # [N, T, H] sequence outputs: compare per token
        r = ref[0].reshape(-1, ref[0].shape[-1]).astype(np.float64)
        o = out[0].reshape(-1, out[0].shape[-1]).astype(np.float64)
        if token_mask is not None and tuple(token_mask.shape) == tuple(ref[0].shape[:2]):
            keep = np.asarray(token_mask).reshape(-1) != 0
            if keep.any():
                r, o = r[keep], o[keep]
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    cos = np.where(
        denom > 0, (r * o).sum(1) / np.maximum(denom, 1e-30), np.where(np.abs(r - o).sum(1) == 0, 1.0, 0.0)
    )
    # Identical rows are exactly 1.0 (float rounding of the quotient can give 0.9999999999999998).
    cos = np.where((r == o).all(1), 1.0, cos)
    noise = float(((r - o) ** 2).sum())
    sig = float((r**2).sum())
    sqnr = float("inf") if noise == 0 else 10 * np.log10(max(sig, 1e-30) / noise)
    ms = [
        Metric("cosine_mean", float(cos.mean()), "fidelity", source, n_samples=n),
        Metric("cosine_min", float(cos.min()), "fidelity", source, n_samples=n),
        Metric("sqnr_db", sqnr, "fidelity", source, n_samples=n, unit="dB"),
    ]
    if ref[0].ndim == 2 and ref[0].shape[1] > 1:
        agree = float((ref[0].argmax(1) == out[0].argmax(1)).mean())
        ms.append(Metric("top1_agreement", agree, "fidelity", source, n_samples=n))
    return ms


def evaluate(
    model, ds: Dataset, *, reference=None, batch_size: int = 64, threads: int = 0, ctx=None
) -> list[Metric]:
    """Accuracy when the dataset has labels; fidelity against `reference` (a model) when given."""
    out = run_model(model, ds, batch_size=batch_size, threads=threads, ctx=ctx)
    metrics: list[Metric] = []
    if ds.labels is not None:
        metrics.append(accuracy(out[0], ds.labels, source=ds.source))
        if out[0].reshape(len(ds), -1).shape[1] > 5:
            metrics.append(accuracy(out[0], ds.labels, source=ds.source, top=5))
    if reference is not None:
        ref = run_model(reference, ds, batch_size=batch_size, threads=threads)
        metrics.extend(fidelity(ref, out, source=ds.source, token_mask=ds.inputs.get("attention_mask")))
    if "evaluator" in ds.meta:
        from studio.core.datasets import run_evaluator

        metrics.extend(run_evaluator(ds.meta["evaluator"], out, ds))
    return metrics
