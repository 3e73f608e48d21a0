"""Input statistics of layers on calibration data (for activation-aware low-rank factorisation)."""

from __future__ import annotations

import numpy as np
import onnx

from studio.core.errors import DatasetError, TechniqueError
from studio.core.evaluate import Dataset, check_dataset, make_session

# Which axis of the activation holds the K features a layer's weight contracts over.
LAST_AXIS = "last"  # X[..., K] @ W
SECOND_LAST_AXIS = "second_last"  # W @ X[..., K, N]
FIRST_AXIS_2D = "first"  # Gemm transA=1: A is [K, M]


def feature_rows(x: np.ndarray, layout: str) -> np.ndarray:
    """Rows of the activation as [samples, K] for the given layout."""
    if layout == LAST_AXIS:
        return x.reshape(-1, x.shape[-1])
    if layout == SECOND_LAST_AXIS:
        return np.swapaxes(x, -1, -2).reshape(-1, x.shape[-2])
    if layout == FIRST_AXIS_2D:
        return x.T
    raise ValueError(layout)


def input_grams(
    model: onnx.ModelProto,
    wanted: dict[str, str],
    calibration: dict[str, np.ndarray],
    *,
    batch_size: int = 32,
    job=None,
) -> dict[str, np.ndarray]:
    """X^T X (float64, K x K) of each activation in `wanted` (value name -> layout) over the data.

    One ORT pass over the calibration set with the activations exposed as extra outputs.
    """
    if not calibration:
        raise TechniqueError("whitened SVD needs calibration data; set recipe.calibration.data")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    inputs = {i.name for i in probe.graph.input}
    vinfo = {vi.name: vi for vi in probe.graph.value_info}
    fetch = [v for v in wanted if v not in inputs]
    for v in fetch:
        if v not in outputs:
            vi = onnx.ValueInfoProto()
            if v in vinfo:
                vi.CopyFrom(vinfo[v])
            else:
                vi.name = v
            probe.graph.output.append(vi)
    sess = make_session(probe, threads=1)
    ds = Dataset(dict(calibration), source="calibration")
    check_dataset(ds, sess)
    n = len(ds)
    if n == 0:
        raise DatasetError("calibration data holds no samples")
    grams: dict[str, np.ndarray] = {}
    for bi, feed in enumerate(ds.batches(batch_size)):
        res = dict(zip(fetch, sess.run(fetch, feed))) if fetch else {}
        for v, layout in wanted.items():
            x = feed[v] if v in inputs else res[v]
            rows = feature_rows(np.asarray(x, dtype=np.float64), layout)
            g = rows.T @ rows
            grams[v] = g if v not in grams else grams[v] + g
        if job is not None:
            job.report(min((bi + 1) * batch_size, n) / n, "collecting layer inputs")
    return grams
