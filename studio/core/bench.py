"""Measured speed and size: latency percentiles per batch size, interleaved A/B latency ratio,
size on disk (raw and zipped) and a per-node profile from ONNX Runtime's profiler.

Every number comes back as a `Metric` with kind "measured" and a source that says how it was
taken (provider, threads, batch, real or synthetic inputs).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import onnx

from studio.core.errors import DatasetError, ModelLoadError
from studio.core.evaluate import Dataset, check_dataset, make_session, model_input_specs
from studio.core.metrics import Metric

# Symbolic dims other than the batch (sequence length, image side) get this size in synthetic inputs.
DEFAULT_FREE_DIM = 32
SAFE_INT_HIGH = 100  # token ids are drawn from [0, 100): inside every real vocabulary


def _model_arg(model):
    """Accept a ModelHandle, ModelProto, bytes or path; return something make_session takes."""
    proto = getattr(model, "proto", None)
    if isinstance(proto, onnx.ModelProto):
        return proto
    if isinstance(model, str | os.PathLike):
        return Path(model)
    return model


def _model_proto(model) -> onnx.ModelProto | None:
    m = _model_arg(model)
    if isinstance(m, onnx.ModelProto):
        return m
    if isinstance(m, bytes):
        return onnx.load_from_string(m)
    if isinstance(m, Path):
        return onnx.load(str(m), load_external_data=False)
    return None


def _threads_text(threads: int) -> str:
    return f"{threads} thread{'s' if threads != 1 else ''}" if threads else "ORT default threads"


def _gather_table_rows(proto: onnx.ModelProto | None) -> dict[str, int]:
    """For integer graph inputs read by a Gather: the number of rows of its table (the vocab)."""
    if proto is None:
        return {}
    inits = {t.name: t for t in proto.graph.initializer}
    out: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[0] in inits:
            dims = list(inits[n.input[0]].dims)
            if dims:
                out[n.input[1]] = min(out.get(n.input[1], dims[0]), dims[0])
    return out


def synthetic_inputs(session, batch_size: int, *, proto=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs shaped like the model's: floats ~ N(0, 1); masks all ones; other ints in a range every
    embedding table of the model accepts (at most [0, 100)). Free dims other than batch -> 32."""
    rng = np.random.default_rng(seed)
    rows = _gather_table_rows(proto)
    feed = {}
    for name, (shape, dt) in model_input_specs(session).items():
        dims = [
            d if isinstance(d, int) and d > 0 else (batch_size if i == 0 else DEFAULT_FREE_DIM)
            for i, d in enumerate(shape)
        ]
        if dims and isinstance(shape[0], int) and shape[0] > 0 and shape[0] != batch_size:
            dims[0] = shape[0]  # a fixed batch dim wins over the requested batch size
        kind = np.dtype(dt).kind
        if kind == "f":
            feed[name] = rng.standard_normal(dims).astype(dt)
        elif kind == "b":
            feed[name] = np.ones(dims, dtype=dt)
        elif "mask" in name.lower():
            feed[name] = np.ones(dims, dtype=dt)
        else:
            high = max(1, min(SAFE_INT_HIGH, rows.get(name, SAFE_INT_HIGH)))
            feed[name] = rng.integers(0, high, size=dims).astype(dt)
    return feed


def _feed_from_dataset(ds: Dataset, session, batch_size: int) -> dict[str, np.ndarray]:
    check_dataset(ds, session)
    if len(ds) == 0:
        raise DatasetError(f"{ds.source}: holds no samples")
    idx = np.arange(batch_size) % len(ds)  # repeat samples when the data set is smaller than a batch
    return {k: np.ascontiguousarray(v[idx]) for k, v in ds.inputs.items() if k in model_input_specs(session)}


def _time_runs(session, feed, warmup: int, repeats: int, ctx=None, frac=(0.0, 1.0)) -> np.ndarray:
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times[i] = (time.perf_counter() - t0) * 1000.0
        if ctx is not None:
            ctx.report(frac[0] + (frac[1] - frac[0]) * (i + 1) / repeats, "timing")
    return times


def bench_latency(
    model,
    *,
    batch_sizes=(1,),
    threads: int = 0,
    warmup: int = 3,
    repeats: int = 20,
    inputs: Dataset | None = None,
    ctx=None,
) -> list[Metric]:
    """Latency p50 and p90 (ms per batch) for each batch size, measured over `repeats` runs after
    `warmup` runs on ORT's CPU provider. Without `inputs`, synthetic inputs are used (and said)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    sess = make_session(_model_arg(model), threads=threads)
    proto = _model_proto(model) if inputs is None else None
    metrics: list[Metric] = []
    nb = len(batch_sizes)
    for k, b in enumerate(batch_sizes):
        b = int(b)
        if inputs is not None:
            feed = _feed_from_dataset(inputs, sess, b)
            what = f"inputs from {inputs.source}"
        else:
            feed = synthetic_inputs(sess, b, proto=proto)
            what = "synthetic inputs"
        times = _time_runs(sess, feed, warmup, repeats, ctx, (k / nb, (k + 1) / nb))
        source = f"ORT CPUExecutionProvider, {_threads_text(threads)}, batch {b}, {what}"
        extra = {"batch_size": b, "threads": threads, "warmup": warmup, "synthetic": inputs is None}
        for q in (50, 90):
            metrics.append(
                Metric(
                    f"latency_p{q}_ms",
                    float(np.percentile(times, q)),
                    "measured",
                    source,
                    n_samples=repeats,
                    unit="ms",
                    extra=dict(extra),
                )
            )
    return metrics


def interleaved_ab(
    model_a,
    model_b,
    *,
    batch_size: int = 1,
    threads: int = 0,
    warmup: int = 3,
    repeats: int = 20,
    inputs: Dataset | None = None,
    ctx=None,
) -> Metric:
    """Latency of B relative to A (< 1: B is faster). Runs alternate A, B, A, B, ... in one loop so
    that machine noise (other processes, frequency changes) hits both equally; the value is the
    median of the per-pair ratios."""
    sa = make_session(_model_arg(model_a), threads=threads)
    sb = make_session(_model_arg(model_b), threads=threads)
    if inputs is not None:
        fa = _feed_from_dataset(inputs, sa, batch_size)
        fb = _feed_from_dataset(inputs, sb, batch_size)
        what = f"inputs from {inputs.source}"
    else:
        fa = synthetic_inputs(sa, batch_size, proto=_model_proto(model_a))
        fb = {k: fa[k] for k in model_input_specs(sb) if k in fa}
        if len(fb) != len(model_input_specs(sb)):
            raise DatasetError(
                f"models A and B have different inputs ({sorted(fa)} vs {sorted(model_input_specs(sb))})"
            )
        what = "synthetic inputs"
    for _ in range(warmup):
        sa.run(None, fa)
        sb.run(None, fb)
    ta, tb = np.empty(repeats), np.empty(repeats)
    for i in range(repeats):
        # Alternate which model goes first so cache warmth does not favour one of them.
        order = ((sa, fa, ta), (sb, fb, tb)) if i % 2 == 0 else ((sb, fb, tb), (sa, fa, ta))
        for sess, feed, arr in order:
            t0 = time.perf_counter()
            sess.run(None, feed)
            arr[i] = time.perf_counter() - t0
        if ctx is not None:
            ctx.report((i + 1) / repeats, "timing A/B")
    ratio = float(np.median(tb / np.maximum(ta, 1e-12)))
    return Metric(
        "latency_ratio",
        ratio,
        "measured",
        f"interleaved A/B, ORT CPUExecutionProvider, {_threads_text(threads)}, batch {batch_size}, {what}",
        n_samples=repeats,
        unit="x",
        extra={
            "a_p50_ms": float(np.median(ta) * 1000),
            "b_p50_ms": float(np.median(tb) * 1000),
            "batch_size": batch_size,
            "threads": threads,
        },
    )


def _external_data_files(proto: onnx.ModelProto, base: Path) -> list[Path]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locs = set()
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    locs.add(e.value)
    return [base / loc for loc in sorted(locs)]


def model_file_bytes(path: str | os.PathLike) -> int:
    """Bytes of an .onnx file plus the external data files it points at."""
    path = Path(path)
    files = [path]
    try:
        files += _external_data_files(onnx.load(str(path), load_external_data=False), path.parent)
    except Exception:  # noqa: BLE001 - an unreadable model still has a size
        pass
    return sum(f.stat().st_size for f in files if f.exists())


def size_on_disk(proto_or_path) -> list[Metric]:
    """`size_bytes` (the file, with any external data) and `zipped_bytes` (zlib level 6 of the same
    bytes): what a download or an app bundle would weigh."""
    arg = _model_arg(proto_or_path)
    if isinstance(arg, Path):
        if not arg.is_file():
            raise ModelLoadError(f"{arg}: no such file", hint="check the path")
        files = [arg]
        try:
            files += _external_data_files(onnx.load(str(arg), load_external_data=False), arg.parent)
        except Exception:  # noqa: BLE001
            pass
        size = 0
        comp = zlib.compressobj(6)
        zipped = 0
        for f in files:
            if not f.exists():
                continue
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    size += len(chunk)
                    zipped += len(comp.compress(chunk))
        zipped += len(comp.flush())
        source = "file on disk"
        where = str(arg)
    else:
        data = arg if isinstance(arg, bytes) else arg.SerializeToString()
        size = len(data)
        zipped = len(zlib.compress(data, 6))
        source = "file on disk (serialized model, as saved)"
        where = "in-memory model"
    return [
        Metric("size_bytes", float(size), "measured", source, unit="B", extra={"path": where}),
        Metric("zipped_bytes", float(zipped), "measured", "zip -6", unit="B", extra={"path": where}),
    ]


_SUFFIXES = re.compile(r"(_nchwc|_token_\d+|_fence_before|_fence_after|_kernel_time)+$")


def _attribute(event_name: str, op_name: str, nodes: dict, producer: dict) -> str:
    """Map an ORT profiler node name back to a node of the original graph, best effort.

    ORT renames nodes it fuses or re-lays out: "fused /fc1/Gemm" (Gemm+Relu), or
    "/conv1/conv1.2/Relu_output_0_nchwc" (Conv+Relu named after the value it writes),
    "/enc/MatMul/MatMulScaleFusion/". We strip
    the decorations, then look for a node of that name, else the producer of that value, and walk
    up from there to the nearest node of the kernel's op type (the Conv behind a fused Relu)."""
    name = _SUFFIXES.sub("", event_name)
    if name.startswith("fused "):
        name = name[len("fused ") :]
    if name in nodes:
        return name
    node = producer.get(name)
    if node is None:
        # Fusions named "<original>/<FusionName>/" (MatMulScaleFusion): strip trailing parts.
        parts = name.rstrip("/").split("/")
        for k in range(len(parts) - 1, 1, -1):
            if "/".join(parts[:k]) in nodes:
                return "/".join(parts[:k])
        return name  # a node ORT added or fused without a trace (layout reorders): keep its name
    want = op_name.removeprefix("Fused")
    cur, steps = node, 0
    while cur is not None and steps < 4:
        if cur.op_type == want or cur.op_type == op_name:
            return cur.name
        cur = producer.get(cur.input[0]) if cur.input else None
        steps += 1
    return node.name


def profile_per_layer(
    model,
    *,
    batch_size: int = 1,
    threads: int = 0,
    warmup: int = 2,
    repeats: int = 10,
    inputs: Dataset | None = None,
    ctx=None,
) -> dict[str, float]:
    """Mean kernel time per run (ms) of each node, from ORT's profiler (optimisations on, so the
    numbers are what deployment sees). Fused kernels are attributed to the original node names
    where the mapping is recoverable; ORT-inserted nodes keep their own names."""
    proto = _model_proto(model)
    with tempfile.TemporaryDirectory(prefix="studio_profile_") as d:
        sess = make_session(_model_arg(model), threads=threads, profile_dir=d)
        feed = (
            _feed_from_dataset(inputs, sess, batch_size)
            if inputs is not None
            else synthetic_inputs(sess, batch_size, proto=proto)
        )
        for _ in range(warmup):
            sess.run(None, feed)
        for i in range(repeats):
            sess.run(None, feed)
            if ctx is not None:
                ctx.report((i + 1) / repeats, "profiling")
        path = sess.end_profiling()
        if not path or not os.path.exists(path):
            found = glob.glob(os.path.join(d, "*.json"))
            path = found[0] if found else path
        with open(path) as f:
            events = json.load(f)
    nodes = {n.name: n for n in proto.graph.node} if proto is not None else {}
    producer = {o: n for n in nodes.values() for o in n.output}
    # Only kernels inside the last `repeats` model runs count (warm-up runs are logged too).
    runs = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[-repeats:]
    lo = runs[0][0] if runs else float("-inf")
    n_runs = len(runs) or repeats
    out: dict[str, float] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e.get("ts", 0) < lo:
            continue
        key = _attribute(name, e.get("args", {}).get("op_name", ""), nodes, producer)
        out[key] = out.get(key, 0.0) + float(e.get("dur", 0)) / 1000.0 / n_runs
    return out
