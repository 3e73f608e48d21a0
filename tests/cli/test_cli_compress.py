"""`studio compress`: the mixed-recipe acceptance on the digits CNN (no training), the printed
table, and user errors that exit 2 with one line and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from studio.cli.main import main
from studio.core.export import embedded_recipe
from studio.core.model import file_sha256
from studio.core.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
MIXED = ROOT / "examples" / "digits_mixed.yaml"
FP32_ACCURACY = 0.9972  # assets/digits_eval.npz, 360 held-out samples


def _compress_json(capsys, *args) -> dict:
    rc = main(["compress", *map(str, args), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_acceptance_mixed_recipe_digits(digits_onnx, digits_eval, tmp_path, capsys):
    """channels + SVD + int8 static: >= 8x smaller on disk at <= 1 pt held-out accuracy drop
    (the recipe is tuned for margin: >= 10x at <= 0.6 pt)."""
    src_hash = file_sha256(digits_onnx)
    out = tmp_path / "digits_mixed.onnx"
    res = _compress_json(capsys, digits_onnx, "--recipe", MIXED, "-o", out, "--data", digits_eval)
    rows = {r["name"]: r for r in res["metrics"]}
    size, top1 = rows["size_bytes"], rows["top1"]
    # Sizes are measured on disk: the printed numbers are the files' sizes.
    assert size["kind"] == "measured" and size["source"] == "file on disk"
    assert size["original"] == digits_onnx.stat().st_size and size["compressed"] == out.stat().st_size
    ratio = size["original"] / size["compressed"]
    assert ratio == pytest.approx(size["ratio"])
    # Accuracy is measured on all 360 held-out samples, for both models in the same run.
    assert top1["kind"] == "measured" and top1["n_samples"] == 360
    assert top1["original"] == pytest.approx(FP32_ACCURACY, abs=1e-3)
    drop_pt = (top1["original"] - top1["compressed"]) * 100
    print(f"digits mixed: {ratio:.2f}x smaller, accuracy {top1['original']:.4f} -> {top1['compressed']:.4f}")
    assert ratio >= 8 and drop_pt <= 1.0  # the acceptance bar
    assert ratio >= 10 and drop_pt <= 0.6  # the margin this recipe was tuned for
    assert rows["top1_agreement"]["kind"] == "fidelity"
    # Every stage ran, in order, and the output is a checked model carrying its recipe.
    assert [s["technique"] for s in res["steps"]] == ["svd", "channels", "int8_static"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert embedded_recipe(model) == Recipe.load(MIXED)
    assert file_sha256(digits_onnx) == src_hash


def test_table_says_what_each_figure_is(digits_onnx, digits_eval, tmp_path, capsys):
    recipe = tmp_path / "svd.toml"
    recipe.write_text('[layers."/fc1/Gemm".decompose]\ntechnique = "svd"\nparams = {rank_ratio = 0.25}\n')
    out = tmp_path / "svd.onnx"
    rc = main(["compress", str(digits_onnx), "--recipe", str(recipe), "-o", str(out), "--data", str(digits_eval),
               "--n-samples", "90", "--latency"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    lines = {ln.split("│")[1].strip(): ln for ln in text.splitlines() if ln.count("│") > 3}
    assert "measured" in lines["size_bytes"] and "file on disk" in lines["size_bytes"]
    assert "smaller" in lines["size_bytes"]
    assert "measured" in lines["top1"] and " 90 " in lines["top1"]
    assert "fidelity" in lines["cosine_mean"]
    # Latency: interleaved A/B in the same run, shown as a ratio (values are noisy: no bounds).
    assert "measured" in lines["latency_p50_ms"] and "× time" in lines["latency_p50_ms"]
    assert "interleaved" in lines["latency_p50_ms"]


def _recipe(tmp_path, body: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    return p


BAD = {
    "unknown layer": ("layers: {/fc9/Gemm: {quantize: int8_dynamic}}", "no such layer"),
    "unknown technique": ("layers: {/fc1/Gemm: {quantize: int3_magic}}", "unknown technique 'int3_magic'"),
    "ratio above 1": ("layers: {/conv2/conv2.0/Conv: {prune: {channels: {ratio: 1.5}}}}", "ratio"),
    "ratio zero": ("layers: {/fc1/Gemm: {prune: {magnitude: {ratio: 0}}}}", "ratio"),
    "bits unsupported": ("layers: {/fc1/Gemm: {quantize: {int4_weight: {bits: 3}}}}", "bits"),
    "rank too large": ("layers: {/fc1/Gemm: {decompose: {svd: {rank_ratio: 1.0}}}}", "rank"),
    "tucker ranks too large": (
        "layers: {/conv2/conv2.0/Conv: {decompose: {tucker: {ranks: [100, 100]}}}}",
        "rank",
    ),
    "newer version": ("version: 99\n", "newer than this studio"),
    "layer the technique cannot handle": (
        "layers: {/conv1/conv1.0/Conv: {decompose: {svd: {rank_ratio: 0.5}}}}",
        "cannot handle",
    ),
    "wrong stage": ("layers: {/fc1/Gemm: {prune: int8_dynamic}}", "belongs to stage"),
    "unknown param": ("layers: {/fc1/Gemm: {decompose: {svd: {rank: 8}}}}", "rank"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_user_errors_exit_2_one_line_nothing_written(case, digits_onnx, tmp_path, capsys):
    body, needle = BAD[case]
    out = tmp_path / "out.onnx"
    rc = main(["compress", str(digits_onnx), "--recipe", str(_recipe(tmp_path, body)), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and needle in err
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no temp files either


def test_refuses_to_overwrite_source_and_bad_data(digits_onnx, digits_calib, tmp_path, capsys):
    import shutil

    src = tmp_path / "m.onnx"
    shutil.copy(digits_onnx, src)
    h = file_sha256(src)
    recipe = _recipe(tmp_path, "layers: {/fc1/Gemm: {decompose: {svd: {rank_ratio: 0.25}}}}")
    assert main(["compress", str(src), "--recipe", str(recipe), "-o", str(src)]) == 2
    assert "source model" in capsys.readouterr().err
    assert file_sha256(src) == h
    wrong = tmp_path / "wrong.npz"
    import numpy as np

    np.savez(wrong, input=np.zeros((4, 3, 8, 8), np.float32))
    out = tmp_path / "o.onnx"
    assert main(["compress", str(src), "--recipe", str(recipe), "-o", str(out), "--data", str(wrong)]) == 2
    assert "expects" in capsys.readouterr().err
    assert not out.exists()
    assert main(["compress", str(src), "--recipe", str(recipe), "-o", str(tmp_path)]) == 2
    assert "folder" in capsys.readouterr().err


def test_console_script_error_is_one_line(digits_onnx, tmp_path):
    """The real entry point (subprocess): no traceback, exit 2, nothing written."""
    out = tmp_path / "o.onnx"
    recipe = _recipe(tmp_path, BAD["unknown layer"][0])
    p = subprocess.run(
        [sys.executable, "-m", "studio.cli.main", "compress", str(digits_onnx), "--recipe", str(recipe),
         "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "/fc9/Gemm" in p.stderr
    assert not out.exists()
