"""Memory: opening and analysing a model with ~1 GB of external weights peaks at most 2x the
weights above the interpreter's own baseline (both measured as peak RSS in a fresh child), and
the weights are not copied into memory on open (they stay in their file, memory-mapped)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.reliability import corpus

ROOT = Path(__file__).resolve().parents[2]
CHUNK_ROWS = 4096
# Bound: peak RSS above the baseline at most 2x the weight bytes, with no allowance. Opening
# keeps external tensors in their files and analysis memory-maps them, so the file pages are
# touched once (~1x, plus the statistics' fixed-size chunk buffers).
MAX_RATIO = 2.0

# Runs in a fresh interpreter: open + analyse (with weight statistics), report peak RSS.
_CHILD = r"""
import json, resource, sys
from studio.core.graph import analyze
from studio.core.model import load_model
h = load_model(sys.argv[1])
an = analyze(h.proto, with_stats=True)
# VmHWM is this process image's own peak. ru_maxrss survives execve, so a child started from a
# big parent (vfork) would report the parent's peak; it is kept for reference only.
hwm_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
big = max(an.layers, key=lambda la: la.weight_bytes)
print(json.dumps({"external": h.has_external_data(), "peak_bytes": hwm_kib * 1024, "ru_maxrss_bytes": maxrss_kib * 1024, "layers": len(an.layers),
                  "weight_bytes": an.total_weight_bytes, "std": big.stats.std, "mean": big.stats.mean}))
"""


def write_big_gather_model(folder: Path, rows: int, dim: int) -> tuple[Path, int]:
    """An embedding lookup whose [rows, dim] float32 table lives in `weights.bin`, written in
    chunks through a memmap so this process never holds the whole table."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "weights.bin"
    table = np.memmap(data, dtype=np.float32, mode="w+", shape=(rows, dim))
    rng = np.random.default_rng(0)
    for s in range(0, rows, CHUNK_ROWS):
        e = min(s + CHUNK_ROWS, rows)
        table[s:e] = rng.standard_normal((e - s, dim), dtype=np.float32)
    table.flush()
    del table
    nbytes = rows * dim * 4
    w = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[rows, dim])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(nbytes))):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], name="/embeddings/Gather")],
        "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "seq", dim])],
        initializer=[w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "big.onnx"
    path.write_bytes(m.SerializeToString())
    return path, nbytes


def _peak(model: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(tmp_path: Path, rows: int, dim: int) -> tuple[float, dict, dict, int]:
    small, _ = write_big_gather_model(tmp_path / "small", 64, dim)
    big, nbytes = write_big_gather_model(tmp_path / "big", rows, dim)
    base = _peak(small)  # same imports, same code path, negligible weights
    run = _peak(big)
    assert run["weight_bytes"] == nbytes and run["layers"] == 1
    assert run["external"], "opening copied the external weights into the proto"
    assert abs(run["mean"]) < 0.01 and abs(run["std"] - 1.0) < 0.01  # stats over the whole table
    return (run["peak_bytes"] - base["peak_bytes"]) / nbytes, base, run, nbytes


def test_peak_memory_small_model_ratio(tmp_path):
    """64 MiB of weights: the same bound, cheap enough for the default suite."""
    ratio, base, run, nbytes = _ratio(tmp_path, 16384, 1024)
    corpus.record("memory")
    print(
        f"weights {nbytes >> 20} MiB, baseline {base['peak_bytes'] >> 20} MiB, "
        f"peak {run['peak_bytes'] >> 20} MiB, ratio {ratio:.3f}x (measured peak RSS, VmHWM)"
    )
    assert ratio <= MAX_RATIO, f"peak RSS above baseline is {ratio:.3f}x the weights"


@pytest.mark.reliability
def test_peak_memory_1gb_external_data(tmp_path):
    ratio, base, run, nbytes = _ratio(tmp_path, 262144, 1024)  # 1 GiB table
    corpus.record("memory")
    print(
        f"weights {nbytes >> 20} MiB, baseline {base['peak_bytes'] >> 20} MiB, "
        f"peak {run['peak_bytes'] >> 20} MiB, ratio {ratio:.3f}x (measured peak RSS, VmHWM)"
    )
    assert ratio <= MAX_RATIO, f"peak RSS above baseline is {ratio:.3f}x the weights"
