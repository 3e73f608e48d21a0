"""Export: atomic folder of model + recipe + report + verification.json; verification content;
never over the source; cancel/failure leave nothing behind."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import onnx
import pytest
from onnx import helper

from studio.cli.main import main
from studio.core.errors import ExportError, JobCancelled
from studio.core.evaluate import load_npz
from studio.core.export import (
    META_RECIPE,
    embedded_recipe,
    export_variant,
    op_types,
    recipe_sha256,
    verify_providers,
)
from studio.core.jobs import JobContext, drive
from studio.core.model import file_sha256, load_model
from studio.core.pipeline import Variant, compress
from studio.core.recipe import Recipe

FILES = {"model.onnx", "recipe.yaml", "report.md", "verification.json"}
SVD = {"layers": {"/fc1/Gemm": {"decompose": {"svd": {"rank_ratio": 0.25}}}}}


@pytest.fixture(scope="module")
def digits(digits_onnx):
    return load_model(digits_onnx)


@pytest.fixture(scope="module")
def variant(digits):
    return drive(compress(digits, Recipe.from_dict(SVD)))


@pytest.fixture(scope="module")
def eval_ds(digits_eval):
    return load_npz(digits_eval)


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".staging-" in p.name]


def test_export_writes_verified_bundle(digits, variant, eval_ds, tmp_path, digits_onnx):
    before = file_sha256(digits_onnx)
    res = export_variant(variant, digits, tmp_path / "out", data=eval_ds, n_samples=100)
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES
    assert res.ok and res.onnx_path == tmp_path / "out" / "model.onnx"
    v = json.loads(res.verification_path.read_text())
    assert v == json.loads(json.dumps(res.verification))  # what is returned is what is written
    assert v["checker"] == {"ok": True, "error": None, "full_check": True}
    cpu = v["providers"]["CPUExecutionProvider"]
    assert cpu["ok"] and cpu["unsupported_ops"] == [] and "session load" in cpu["method"]
    assert v["ops"]["Gemm"]["count"] == 3  # fc1 split in two + fc2
    assert v["flagged_ops"] == []
    f = v["fidelity"]
    assert f["n_samples"] == 100 and not f["synthetic"] and "digits_eval.npz" in f["data"]
    kinds = {m["name"]: m["kind"] for m in f["metrics"]}
    assert kinds["cosine_mean"] == "fidelity" and kinds["top1"] == "measured"
    assert all(m["n_samples"] == 100 for m in f["metrics"])
    assert 0.9 < f["cosine_mean"] <= 1.0 + 1e-9 and f["top1"] >= f["original_top1"] - 0.05
    s = v["sizes"]
    assert s["original_bytes"] == digits_onnx.stat().st_size
    assert s["variant_bytes"] == res.onnx_path.stat().st_size
    assert s["ratio"] > 2 and s["kind"] == "measured"
    assert v["recipe_sha256"] == recipe_sha256(variant.recipe)
    assert v["source_sha256"] == before and v["studio_version"]
    # Recipe file and the copy embedded in the ONNX metadata both reload to the same recipe.
    assert Recipe.load(res.recipe_path) == variant.recipe
    exported = onnx.load(str(res.onnx_path))
    assert embedded_recipe(exported) == variant.recipe
    assert any(p.key == META_RECIPE for p in exported.metadata_props)
    report = res.report_path.read_text()
    for needle in ("## Recipe", "## Layers", "`/fc1/Gemm`", "◐ fidelity", "● measured", "studio compress"):
        assert needle in report
    assert file_sha256(digits_onnx) == before
    assert _leftovers(tmp_path) == []


def test_synthetic_inputs_are_labelled(digits, variant, tmp_path):
    res = export_variant(variant, digits, tmp_path / "out", n_samples=500)
    f = res.verification["fidelity"]
    assert f["synthetic"] and "synthetic" in f["data"] and f["n_samples"] == 32
    assert "top1" not in f  # no labels, no accuracy
    assert "synthetic random inputs" in res.report_path.read_text()


def test_refuses_to_overwrite_the_source(tmp_path, variant):
    src = tmp_path / "model.onnx"
    shutil.copy(Path(__file__).resolve().parents[2] / "assets" / "digits_cnn.onnx", src)
    handle = load_model(src)
    h0 = file_sha256(src)
    with pytest.raises(ExportError, match="source model"):
        export_variant(variant, handle, src)  # the folder path *is* the model file
    with pytest.raises(ExportError, match="source model"):
        export_variant(variant, handle, tmp_path)  # would write tmp_path/model.onnx
    assert file_sha256(src) == h0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_cancel_leaves_nothing(digits, variant, eval_ds, tmp_path):
    for stop_at in ("onnx.checker (full)", "loading on providers", "writing recipe and report"):
        cancel = threading.Event()
        ctx = JobContext(lambda p, s=stop_at, c=cancel: c.set() if p.message == s else None, cancel)
        with pytest.raises(JobCancelled):
            export_variant(variant, digits, tmp_path / "out", data=eval_ds, n_samples=40, ctx=ctx)
        assert not (tmp_path / "out").exists()
        assert list(tmp_path.iterdir()) == []


def test_invalid_variant_fails_without_files(digits, variant, tmp_path):
    broken = onnx.ModelProto()
    broken.CopyFrom(variant.proto)
    del broken.graph.initializer[-1]
    bad = Variant(broken, variant.recipe, dict(variant.provenance))
    with pytest.raises(ExportError, match="fails onnx.checker"):
        export_variant(bad, digits, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_keeps_other_files_and_replaces_ours(digits, variant, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.md").write_text("stale")
    res = export_variant(variant, digits, out, formats=("onnx", "report"))
    names = {p.name for p in out.iterdir()}
    assert names == {"notes.txt", "model.onnx", "report.md", "verification.json"}
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "report.md").read_text() != "stale"
    assert res.recipe_path is None
    with pytest.raises(ExportError, match="unknown export format"):
        export_variant(variant, digits, out, formats=("pdf",))


def test_verification_only_without_model_file(digits, variant, tmp_path):
    res = export_variant(variant, digits, tmp_path / "v", formats=("recipe",))
    assert {p.name for p in (tmp_path / "v").iterdir()} == {"recipe.yaml", "verification.json"}
    assert res.onnx_path is None and res.verification["sizes"]["variant_bytes"] > 0


def test_unavailable_provider_is_recorded_not_fatal(digits, variant, tmp_path):
    res = export_variant(
        variant, digits, tmp_path / "out", providers=["CPUExecutionProvider", "NoSuchExecutionProvider"]
    )
    assert not res.ok
    p = res.verification["providers"]
    assert p["CPUExecutionProvider"]["ok"]
    assert not p["NoSuchExecutionProvider"]["ok"]
    assert "not available" in p["NoSuchExecutionProvider"]["error"]
    assert (tmp_path / "out" / "model.onnx").exists()


def test_op_without_kernel_is_flagged(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="relu"),
        helper.make_node("FancyOp", ["h"], ["y"], name="fancy", domain="com.example"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    ops = op_types(model)
    assert set(ops) == {"Relu", "com.example::FancyOp"}
    res, _ = verify_providers(path, model, ["CPUExecutionProvider"], None, tmp_path)
    cpu = res["CPUExecutionProvider"]
    assert not cpu["ok"] and cpu["error"]
    assert cpu["unsupported_ops"] == ["com.example::FancyOp"]


def test_cli_export(digits_onnx, digits_eval, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    Recipe.from_dict(SVD).save(recipe)
    out = tmp_path / "bundle"
    rc = main(
        ["export", str(digits_onnx), "--recipe", str(recipe), "-o", str(out), "--data", str(digits_eval),
         "--n-samples", "64"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert {p.name for p in out.iterdir()} == FILES
    assert "ONNX Runtime CPUExecutionProvider: loads" in text
    assert "fidelity (on 64 samples of" in text and "verification: passed" in text
    rc = main(
        ["export", str(digits_onnx), "--recipe", str(recipe), "-o", str(tmp_path / "b2"),
         "--providers", "CPUExecutionProvider", "NoSuchExecutionProvider", "--json"]
    )  # fmt: skip
    v = json.loads(capsys.readouterr().out)
    assert rc == 1 and not v["ok"] and v["fidelity"]["synthetic"]
    rc = main(["export", str(digits_onnx), "--recipe", str(recipe), "-o", str(digits_onnx)])
    assert rc == 2 and "source model" in capsys.readouterr().err


@pytest.mark.nlp
def test_export_minilm_int8(tmp_path):
    """A transformer with int64 inputs: verification loads it, checks kernels, measures fidelity."""
    from studio.demos.minilm import build_minilm

    onnx_path, npz = build_minilm()
    handle = load_model(onnx_path)
    recipe = Recipe.load(Path(__file__).resolve().parents[2] / "examples" / "minilm_int8.yaml")
    v = drive(compress(handle, recipe))
    res = export_variant(v, handle, tmp_path / "minilm", data=load_npz(npz), n_samples=16, formats=("onnx",))
    ver = res.verification
    assert res.ok and ver["flagged_ops"] == [] and ver["providers"]["CPUExecutionProvider"]["ok"]
    assert ver["fidelity"]["n_samples"] == 16 and ver["fidelity"]["cosine_mean"] > 0.95
    assert ver["sizes"]["ratio"] > 1.3
    assert embedded_recipe(onnx.load(str(res.onnx_path), load_external_data=False)) == recipe
