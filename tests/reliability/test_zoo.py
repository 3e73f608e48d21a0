"""Architecture zoo: every model goes load -> analyze -> default mixed recipe -> export ->
verification without a crash, gets smaller on disk, reports fidelity, and lists the layers a
technique refused with the reason. Three models in the default suite, all seven under reliability."""

from __future__ import annotations

import math

import pytest

from tests.reliability import corpus

pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


def _check_zoo_model(name, zoo_dir, tmp_path):
    from studio.demos.zoo import build_zoo, run_zoo_model

    model = build_zoo([name], cache_dir=zoo_dir)[name]
    row = run_zoo_model(model, tmp_path / "export", n_samples=16)
    corpus.record("zoo")
    assert row["layers"] > 0
    assert row["size_after_bytes"] < row["size_before_bytes"], row
    assert row["verified"], row["unsupported_ops"]
    fid = row["fidelity"]
    assert row["fidelity_n_samples"] == 16 and "synthetic" in row["fidelity_data"]
    assert math.isfinite(fid["cosine_mean"]) and 0.5 < fid["cosine_mean"] <= 1.0 + 1e-9, fid
    for layer, reasons in row["refused"].items():
        assert layer and reasons and all(isinstance(r, str) and len(r) > 10 for r in reasons)
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert (tmp_path / "export" / "verification.json").is_file()
    return row


@pytest.mark.parametrize("name", ["resnet", "squeezenet", "rnn"])
def test_zoo_fast(name, zoo_dir, tmp_path):
    row = _check_zoo_model(name, zoo_dir, tmp_path)
    if name == "rnn":  # nothing compresses recurrent weights: refused, with the reason
        assert "not LSTM" in " ".join(row["refused"]["/lstm/LSTM"])
        assert "not GRU" in " ".join(row["refused"]["/gru/GRU"])
    if name == "squeezenet":  # fire modules: Concat blocks pruning of the expand convs
        assert any("Concat" in r for rs in row["refused"].values() for r in rs)


@pytest.mark.reliability
@pytest.mark.parametrize("name", ["mobilenetv2", "shufflenet", "transformer", "yolo"])
def test_zoo_full(name, zoo_dir, tmp_path):
    row = _check_zoo_model(name, zoo_dir, tmp_path)
    if name in ("mobilenetv2", "shufflenet"):  # depthwise / grouped convs follow their input
        assert any("depthwise" in r for rs in row["refused"].values() for r in rs)
    if name == "transformer":  # big MatMuls were factored
        assert any(s["technique"] == "svd" for s in row["steps"])
