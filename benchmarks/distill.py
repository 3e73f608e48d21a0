"""Accuracy vs distillation steps for the digits CNN opened from its PyTorch source.

Recipe: 62.5% channel pruning of conv1-3 and fc1 + int8 static (QDQ) everywhere, then a
`distill` finetune with N steps (lr 3e-3, batch 64, T 4, no labels) on the digits *training*
split with 1-pixel shifts (the 360 held-out samples are only used to measure). Row "pipeline" is
the same recipe without a finetune stage (the ONNX pruner's least-squares refit, no training).
Every accuracy is top-1 measured with ONNX Runtime on assets/digits_eval.npz (360 samples); sizes
are files on disk; seconds are wall-clock of the whole compress job (1 torch thread).
Writes benchmarks/results/distill.json.

    .venv/bin/python benchmarks/distill.py [--steps 0 50 100 200 400 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from studio.core.evaluate import load_npz, run_model
from studio.core.jobs import drive
from studio.core.model import load_model
from studio.core.pipeline import compress
from studio.core.recipe import Recipe
from studio.demos.digits import load_digits_split

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "distill.json"
LAYERS = ["/conv1/conv1.0/Conv", "/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv", "/fc1/Gemm"]
RATIO = 0.625


def make_recipe(steps: int | None, data: str) -> Recipe:
    defaults: dict = {"quantize": "int8_static"}
    if steps is not None:
        defaults["finetune"] = {"distill": {"steps": steps, "lr": 3e-3, "data": data}}
    layers = {n: {"prune": {"channels": {"ratio": RATIO}}} for n in LAYERS}
    return Recipe.from_dict({"defaults": defaults, "layers": layers})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 50, 100, 200, 400, 1000])
    args = ap.parse_args()
    x, y, _, _ = load_digits_split(seed=0)
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    xa = np.concatenate([pad[:, :, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]).astype(
        np.float32
    )
    tmp = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    data = tmp / "digits_train_shifted.npz"
    np.savez(data, input=xa)
    handle = load_model(ROOT / "assets" / "digits_cnn.pt", factory="studio.demos.digits:build_model")
    held = load_npz(ROOT / "assets" / "digits_eval.npz")
    calib = load_npz(ROOT / "assets" / "digits_calib.npz").inputs
    src_bytes = (ROOT / "assets" / "digits_cnn.onnx").stat().st_size
    fp32 = float((run_model(handle.proto, held)[0].argmax(1) == held.labels).mean())

    rows = []
    print(f"digits CNN, {RATIO:.1%} channel pruning (conv1-3, fc1) + int8 static; fp32 top1 {fp32:.4f}")
    print(f"{'finetune':>10} {'top1':>7} {'drop pt':>8} {'size kB':>8} {'x smaller':>9} {'seconds':>8}")
    for steps in [None, *args.steps]:
        t0 = time.perf_counter()
        v = drive(compress(handle, make_recipe(steps, str(data)), calibration=calib))
        sec = time.perf_counter() - t0
        path = tmp / f"v_{steps}.onnx"
        path.write_bytes(v.proto.SerializeToString())
        acc = float((run_model(v.proto, held)[0].argmax(1) == held.labels).mean())
        size = path.stat().st_size
        label = "pipeline" if steps is None else f"{steps} steps"
        rows.append(
            {
                "finetune": label,
                "steps": steps,
                "top1": acc,
                "drop_pt": (fp32 - acc) * 100,
                "size_bytes": size,
                "ratio": src_bytes / size,
                "seconds": round(sec, 2),
            }
        )
        print(
            f"{label:>10} {acc:7.4f} {(fp32 - acc) * 100:8.2f} {size / 1e3:8.1f} {src_bytes / size:9.1f} {sec:8.1f}"
        )
    result = {
        "model": "assets/digits_cnn.pt (studio.demos.digits:build_model)",
        "recipe": f"channels {RATIO} on {LAYERS} + int8_static on all layers; distill lr 3e-3, batch 64, T 4, no labels",
        "training_data": "digits training split (1437) x 9 one-pixel shifts; held-out 360 never used for training",
        "metric": "top1 measured with ONNX Runtime on assets/digits_eval.npz (n=360)",
        "fp32_top1": fp32,
        "source_size_bytes": src_bytes,
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
