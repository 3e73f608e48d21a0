"""Sensitivity sweep on the digits CNN: real ORT runs on suffix graphs, checked against full runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from studio.core.evaluate import calibration_subset, load_npz, make_session
from studio.core.jobs import JobContext, drive
from studio.core.model import load_model
from studio.core.pipeline import compress
from studio.core.recipe import Recipe
from studio.core.sensitivity import (
    SensitivityTable,
    cosine_mean,
    parse_settings,
    sweep,
)

SETTINGS = "channels:0.25,0.5,0.75 int8 kmeans:4"


@pytest.fixture(scope="module")
def digits(digits_onnx, digits_calib):
    return load_model(digits_onnx), calibration_subset(load_npz(digits_calib), 64)


@pytest.fixture(scope="module")
def table(digits):
    handle, calib = digits
    payloads = []
    t = drive(sweep(handle, calib, settings=parse_settings(SETTINGS)), JobContext(payloads.append))
    t.payloads = [p.payload for p in payloads if p.payload]  # type: ignore[attr-defined]
    return t


def test_table_shape_metric_and_cost(table):
    assert table.metric == "top1_agreement" and table.kind == "fidelity" and table.n_samples == 64
    assert len(table.layers) == 5
    # Every layer says something for every setting: a number, a bound, or a reason.
    for la in table.layers:
        for s in table.settings:
            k = s["key"]
            assert k in table.drops[la] or k in table.inferred[la] or k in table.skipped[la], (la, k)
    # fc2 has 10 outputs: kmeans on it is measured, int8_dynamic is not applicable to Gemm.
    assert table.drop("/fc2/Gemm", "int8_static") is not None
    c = table.cost
    assert 0 < c["multiple"] < 1.0, c  # cheaper than one full evaluation per pair
    assert c["pairs"] >= c["measured"] > 0
    # one payload per layer, carrying its row for a live heatmap
    rows = [p for p in table.payloads if p["type"] == "sensitivity_row"]
    assert {p["layer"] for p in rows} == set(table.layers)


def test_json_round_trip(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    back = SensitivityTable.load(path)
    assert back.drops == json.loads(json.dumps(table.to_dict()))["drops"]
    assert back.drop("/conv1/conv1.0/Conv", "channels:0.5") == table.drop(
        "/conv1/conv1.0/Conv", "channels:0.5"
    )


def test_suffix_measurement_matches_full_model(digits, table):
    """The cached-input suffix run gives the same outputs as compressing the whole model."""
    handle, calib = digits
    layer, key = "/conv2/conv2.0/Conv", "channels:0.5"
    assert table.samples[layer].get(key) in (16, 64)
    v = drive(
        compress(
            handle, Recipe(layers={layer: {"prune": {"channels": {"ratio": 0.5}}}}), calibration=calib.inputs
        )
    )
    ref = make_session(handle.proto).run(None, calib.inputs)[0]
    out = make_session(v.proto).run(None, calib.inputs)[0]
    n = table.samples[layer][key]
    cos_drop = 1 - cosine_mean(ref[:n], out[:n])
    # refit calibration differs only by float rounding between the suffix and full graph
    assert table.cosine_drop[layer][key] == pytest.approx(cos_drop, abs=2e-3)
    agree_drop = 1 - float((ref[:n].argmax(1) == out[:n].argmax(1)).mean())
    assert table.drops[layer][key] == pytest.approx(agree_drop, abs=1 / n + 1e-9)


def test_early_stop_skips_stronger_settings(digits):
    handle, calib = digits
    t = drive(
        sweep(
            handle,
            calib,
            settings=parse_settings("channels:0.25,0.5,0.75"),
            layers=["/conv1/conv1.0/Conv"],
            hopeless_drop=0.001,
        )  # fmt: skip
    )
    la = "/conv1/conv1.0/Conv"
    d = t.drops[la]
    assert "channels:0.5" in d  # mid first
    if d["channels:0.5"] > 0.001:
        assert t.skipped[la]["channels:0.75"].startswith("early stop")
    else:  # lossless mid: the milder one is inferred, not run
        assert "channels:0.25" in t.inferred[la]


def test_proxy_is_estimated_and_monotone(digits):
    handle, calib = digits
    t = drive(sweep(handle, calib, settings=parse_settings("kmeans:8,4"), layers=["/fc1/Gemm"], proxy=True))
    assert t.kind == "estimated" and t.metric == "layer_output_nsr"
    d = t.drops["/fc1/Gemm"]
    assert 0 <= d["kmeans:8"] < d["kmeans:4"]
    assert "dB" in t.describe_value(d["kmeans:4"])


def test_parse_settings_orders_by_strength():
    s = parse_settings("svd:0.125,0.5 channels:0.75,0.25")
    svd = [x for x in s if x.technique == "svd"]
    ch = [x for x in s if x.technique == "channels"]
    assert [x.key for x in svd] == ["svd:0.5", "svd:0.125"] and [x.level for x in svd] == [0, 1]
    assert [x.key for x in ch] == ["channels:0.25", "channels:0.75"]
    with pytest.raises(Exception, match="settings"):
        parse_settings("nosuchtech:1")


def test_cosine_mean_masks_padding():
    ref = np.ones((1, 3, 4), np.float32)
    out = ref.copy()
    out[0, 2] = -1  # a padding token that differs
    assert cosine_mean(ref, out, np.array([[1, 1, 0]])) == 1.0
    assert cosine_mean(ref, out) < 1.0
