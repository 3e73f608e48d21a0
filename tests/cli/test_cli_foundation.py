"""`studio inspect | eval | bench` on real models, and every kind of bad input refused with one
line on stderr, exit code 2, no traceback and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from studio.cli.main import main
from studio.core.graph import analyze
from studio.core.model import load_model, save_model
from studio.core.onnx_utils import replace_initializer, tensor_array
from tests.conftest import ROOT
from tests.core.test_evaluate import write_png

# ------------------------------------------------------------------ inspect


def test_inspect_table_lists_layers_and_the_totals_identity(capsys, digits_onnx):
    assert main(["inspect", str(digits_onnx)]) == 0
    out = capsys.readouterr().out
    an = analyze(load_model(digits_onnx).proto)
    for la in an.layers:
        assert la.name in out
    assert "[batch,32,8,8] → [batch,64,8,8]" in out  # conv3 activation shapes
    assert "[256,1024]" in out  # fc1 weight
    line = next(s for s in out.splitlines() if s.startswith("weights "))
    assert line.startswith(
        f"weights {an.total_weight_bytes:,} B = layers {an.layer_weight_bytes:,} B "
        f"+ other initializers {an.other_initializer_bytes:,} B; file {digits_onnx.stat().st_size:,} B"
    )
    share = 100 * an.total_weight_bytes / digits_onnx.stat().st_size
    assert f"weights are {share:.1f}% of file" in line


def test_inspect_json_top_and_group(capsys, digits_onnx):
    assert main(["inspect", str(digits_onnx), "--json", "--top", "2", "--group", "--group-depth", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [la["name"] for la in data["layers"]] == ["/fc1/Gemm", "/conv3/conv3.0/Conv"]  # largest first
    t = data["totals"]
    assert t["total_weight_bytes"] == t["layer_weight_bytes"] + t["other_initializer_bytes"]
    assert t["file_bytes"] == digits_onnx.stat().st_size and t["layers"] == 5
    fc1 = data["layers"][0]
    assert fc1["weight_shape"] == [256, 1024] and fc1["params"] == 256 * 1024 + 256
    assert fc1["input_shape"] == ["batch", 1024] and fc1["output_shape"] == ["batch", 256]
    assert {g["group"] for g in data["groups"]} == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert sum(g["bytes"] for g in data["groups"]) == t["layer_weight_bytes"]


def test_inspect_shows_load_warnings(capsys, tmp_path, digits_onnx):
    m = load_model(digits_onnx, normalize_graph=False).proto
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 11  # declares 11 classes, computes 10
    p = save_model(m, tmp_path / "wrong_decl.onnx")
    assert main(["inspect", str(p)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "declares shape" in err


@pytest.mark.nlp
def test_inspect_minilm_json(capsys, minilm_paths):
    onnx_path, _ = minilm_paths
    assert main(["inspect", str(onnx_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {la["name"] for la in data["layers"]}
    assert "/encoder/layer.0/intermediate/dense/MatMul" in names
    assert data["totals"]["layers"] == len(data["layers"]) >= 36


# ------------------------------------------------------------------ eval


def test_eval_accuracy_with_labels(capsys, digits_onnx, digits_eval):
    from studio.core.evaluate import evaluate, load_npz

    assert main(["eval", str(digits_onnx), "--data", str(digits_eval), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ms = {m["name"]: m for m in data["metrics"]}
    expected = {m.name: m.value for m in evaluate(load_model(digits_onnx).proto, load_npz(digits_eval))}
    assert ms["top1"]["value"] == expected["top1"]
    assert ms["top1"]["kind"] == "measured" and ms["top1"]["n_samples"] == 360
    assert ms["top1"]["what"] == f"measured on 360 samples of {digits_eval}"
    assert not any(m["kind"] == "fidelity" for m in data["metrics"])  # no reference asked for
    assert main(["eval", str(digits_onnx), "--data", str(digits_eval), "--n", "40"]) == 0
    assert "measured on 40 samples of" in capsys.readouterr().out


def test_eval_without_labels_is_fidelity_against_itself(capsys, digits_onnx, digits_calib):
    assert main(["eval", str(digits_onnx), "--data", str(digits_calib), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ms = {m["name"]: m for m in data["metrics"]}
    assert ms["cosine_mean"]["value"] == 1.0 and ms["cosine_min"]["value"] == 1.0
    assert ms["top1_agreement"]["value"] == 1.0 and ms["sqnr_db"]["value"] == "inf"
    assert ms["cosine_mean"]["what"].startswith(
        f"label-free fidelity vs {digits_onnx} (itself) on 128 samples"
    )
    assert main(["eval", str(digits_onnx), "--data", str(digits_calib)]) == 0
    assert "label-free fidelity vs" in capsys.readouterr().out


def test_eval_against_a_reference(capsys, tmp_path, digits_onnx, digits_calib):
    m = load_model(digits_onnx).proto
    w = tensor_array(next(t for t in m.graph.initializer if t.name == "fc1.weight"))
    noisy = onnx.ModelProto()
    noisy.CopyFrom(m)
    replace_initializer(
        noisy, "fc1.weight", w + np.random.default_rng(0).normal(0, w.std(), w.shape).astype(np.float32)
    )
    p = save_model(noisy, tmp_path / "noisy.onnx")
    assert main(["eval", str(p), "--data", str(digits_calib), "--reference", str(digits_onnx), "--json"]) == 0
    ms = {m["name"]: m for m in json.loads(capsys.readouterr().out)["metrics"]}
    assert 0 < ms["cosine_mean"]["value"] < 0.999
    assert ms["cosine_mean"]["extra"]["reference"] == str(digits_onnx)


def test_eval_image_folder_and_evaluator(capsys, tmp_path, monkeypatch, digits_onnx, digits_eval):
    z = np.load(digits_eval)
    root = tmp_path / "imgs"
    for i in range(30):
        d = root / f"class_{int(z['labels'][i])}"
        d.mkdir(parents=True, exist_ok=True)
        write_png(d / f"{i}.png", np.rint(z["input"][i, 0] * 16).astype(np.uint8) * 15)
    (root / "preprocess.json").write_text(json.dumps({"grayscale": True, "scale": 1 / 240}))
    (tmp_path / "my_eval.py").write_text(
        "from studio.core.metrics import Metric\n"
        "def n_classes(outputs, ds):\n"
        "    return [Metric('classes_seen', float(len(set(ds.labels.tolist()))), 'measured', ds.source,"
        " n_samples=len(ds))]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["eval", str(digits_onnx), "--data", str(root), "--evaluator", "my_eval:n_classes", "--json"])
    assert rc == 0
    ms = {m["name"]: m for m in json.loads(capsys.readouterr().out)["metrics"]}
    # Labels are indices into the sorted folder names; the evaluator sees exactly those.
    classes = sorted({f"class_{int(c)}" for c in z["labels"][:30]})
    assert ms["classes_seen"]["value"] == len(classes)
    assert ms["top1"]["n_samples"] == 30


# ------------------------------------------------------------------ bench


def test_bench_json(capsys, digits_onnx):
    assert (
        main(["bench", str(digits_onnx), "--batch", "1,4", "--repeats", "3", "--warmup", "1", "--json"]) == 0
    )
    ms = json.loads(capsys.readouterr().out)["metrics"]
    lat = [(m["name"], m["extra"]["batch_size"]) for m in ms if m["name"].startswith("latency")]
    assert lat == [("latency_p50_ms", 1), ("latency_p90_ms", 1), ("latency_p50_ms", 4), ("latency_p90_ms", 4)]
    assert all(m["kind"] == "measured" and m["n_samples"] == 3 for m in ms if m["name"].startswith("latency"))
    size = {m["name"]: m for m in ms if m["name"].endswith("bytes")}
    assert size["size_bytes"]["value"] == digits_onnx.stat().st_size
    assert 0 < size["zipped_bytes"]["value"] < size["size_bytes"]["value"]


def test_bench_table(capsys, digits_onnx):
    assert main(["bench", str(digits_onnx), "--batch", "2", "--repeats", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "p50 ms" in out and "measured over 3 runs after 3 warm-up runs" in out and "1 thread" in out
    assert f"{digits_onnx.stat().st_size:,} B" in out and "zip -6" in out


# ------------------------------------------------------------------ bad input


def _bad_npz(path, digits_eval, kind):
    z = np.load(digits_eval)
    if kind == "keys":
        np.savez(path, pixels=z["input"][:10], labels=z["labels"][:10])
    else:
        np.savez(path, input=z["input"][:10, :, :4, :4], labels=z["labels"][:10])


BAD = {
    # case: (make(tmp, assets) -> argv, words the one error line must contain)
    "missing file": (lambda t, a: ["inspect", str(t / "nope.onnx")], ["no such file"]),
    "a directory": (lambda t, a: ["inspect", str(t)], ["is a directory"]),
    "truncated onnx": (
        lambda t, a: (
            (t / "trunc.onnx").write_bytes(a["onnx"].read_bytes()[:500_000]),
            ["bench", str(t / "trunc.onnx")],
        )[1],
        ["not a valid ONNX file", "truncated"],
    ),
    "random bytes": (
        lambda t, a: (
            (t / "rand.onnx").write_bytes(np.random.default_rng(1).bytes(5000)),
            ["eval", str(t / "rand.onnx"), "--data", str(a["eval"])],
        )[1],
        ["not a valid ONNX file"],
    ),
    "empty file": (
        lambda t, a: ((t / "e.onnx").write_bytes(b""), ["inspect", str(t / "e.onnx")])[1],
        ["empty"],
    ),
    "npz wrong keys": (
        lambda t, a: (
            _bad_npz(t / "k.npz", a["eval"], "keys"),
            ["eval", str(a["onnx"]), "--data", str(t / "k.npz")],
        )[1],
        ["no array for model input", "input", "pixels"],
    ),
    "npz wrong shapes": (
        lambda t, a: (
            _bad_npz(t / "s.npz", a["eval"], "shape"),
            ["eval", str(a["onnx"]), "--data", str(t / "s.npz")],
        )[1],
        ["has shape [10, 1, 4, 4]", "expects"],
    ),
    "image folder without images": (
        lambda t, a: (
            (t / "imgs" / "cat").mkdir(parents=True),
            ["eval", str(a["onnx"]), "--data", str(t / "imgs")],
        )[1],
        ["no images found in"],
    ),
    "evaluator cannot be imported": (
        lambda t, a: ["eval", str(a["onnx"]), "--data", str(a["eval"]), "--evaluator", "nopkg_qq:f"],
        ["cannot import evaluator", "nopkg_qq:f"],
    ),
    "bad batch list": (
        lambda t, a: ["bench", str(a["onnx"]), "--batch", "1,x"],
        ["--batch", "positive integers"],
    ),
}


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _check_one_error_line(err: str, words: list[str]):
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2(case, capsys, tmp_path, monkeypatch, digits_onnx, digits_eval):
    make, words = BAD[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = make(tmp_path, {"onnx": digits_onnx, "eval": digits_eval})
    before = _files(tmp_path)
    assert main(argv) == 2
    cap = capsys.readouterr()
    _check_one_error_line(cap.err, words)
    assert cap.out == ""
    assert _files(tmp_path) == before  # nothing written


@pytest.mark.torch
def test_bad_torch_inputs(capsys, tmp_path, monkeypatch):
    import torch

    from studio.demos.digits import build_model
    from tests.conftest import ASSETS

    torch.manual_seed(0)
    pickled = tmp_path / "module.pt"
    torch.save(build_model(), pickled)
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    assert main(["inspect", str(pickled)]) == 2
    _check_one_error_line(capsys.readouterr().err, ["--trust-pickle", "module.pt"])
    assert main(["inspect", str(ASSETS / "digits_cnn.pt"), "--factory", "not_a_pkg_zz.nets:build"]) == 2
    _check_one_error_line(capsys.readouterr().err, ["cannot import", "not_a_pkg_zz.nets:build"])
    assert _files(tmp_path) == before


def _run_cli(args, cwd):
    exe = ROOT / ".venv" / "bin" / "studio"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "studio.cli.main"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_bad_inputs_through_a_real_process(tmp_path, digits_onnx):
    (tmp_path / "rand.onnx").write_bytes(np.random.default_rng(2).bytes(3000))
    before = _files(tmp_path)
    r = _run_cli(["inspect", "rand.onnx"], tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    _check_one_error_line(r.stderr, ["rand.onnx", "not a valid ONNX file"])
    r = _run_cli(["eval", str(digits_onnx), "--data", "missing.npz"], tmp_path)
    assert r.returncode == 2
    _check_one_error_line(r.stderr, ["missing.npz"])
    assert _files(tmp_path) == before


def test_inspect_json_through_a_real_process(tmp_path, digits_onnx):
    r = _run_cli(["inspect", str(digits_onnx), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["totals"]["layers"] == 5
