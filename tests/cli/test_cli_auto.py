"""`studio auto` / `studio analyze` end to end on the digits CNN (real ORT, no mocks)."""

from __future__ import annotations

import json

from studio.cli.main import main
from studio.core.model import load_model


def test_auto_digits_10x_within_one_point(digits_onnx, digits_eval, digits_calib, tmp_path, capsys):
    """Acceptance: ≥ 10× smaller at ≤ 1 pt held-out accuracy drop, decided on the calibration set."""
    out, rec = tmp_path / "auto.onnx", tmp_path / "auto.yaml"
    rc = main(["auto", str(digits_onnx), "--data", str(digits_eval), "--calib", str(digits_calib),
               "--target", "size=10x", "--max-drop", "1.0", "--json", "--workers", "1",
               "-o", str(out), "--recipe-out", str(rec)])  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert rc == 0, res["message"]
    best = next(c for c in res["candidates"] if c["id"] == res["best"])
    m = best["metrics"]
    assert res["baseline"]["size_bytes"] / m["size_bytes"]["value"] >= 10
    assert m["heldout_drop"]["value"] <= 0.01 and m["heldout_drop"]["n_samples"] == 360
    assert m["calib_drop"]["source"].endswith("digits_calib.npz")
    assert res["sensitivity_cost"]["multiple"] < 1
    # the written model is the plan (plus the embedded recipe) and loads
    assert load_model(out).proto.ByteSize() <= res["baseline"]["size_bytes"] / 10 + 4096
    assert "layers:" in rec.read_text()


def test_analyze_prints_heatmap_and_cost(digits_onnx, digits_calib, capsys):
    rc = main(["analyze", str(digits_onnx), "--data", str(digits_calib), "--n-samples", "32",
               "--settings", "kmeans:4", "--layers", "/fc1/Gemm", "/fc2/Gemm"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "/fc1/Gemm" in out and "kmeans:4" in out and "naive sweep" in out


def test_bad_target_is_a_one_line_error(digits_onnx, digits_eval, capsys):
    rc = main(["auto", str(digits_onnx), "--data", str(digits_eval), "--target", "speed=2x"])
    assert rc == 2
    assert "target" in capsys.readouterr().err
