"""Pruning plugin on real models through the pipeline: magnitude (sparsity, honest sizes) and
structured channels (smaller, fewer MACs, faster, accurate with refit), plus refusals."""

from __future__ import annotations

import time
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from studio_pruning.groups import prunable_layers

from studio.core.errors import RecipeError, TechniqueError
from studio.core.evaluate import Dataset, evaluate, load_npz, make_session, run_model
from studio.core.graph import analyze
from studio.core.jobs import drive
from studio.core.model import load_model, normalize
from studio.core.onnx_utils import GraphIndex, tensor_array
from studio.core.pipeline import compress, estimate_recipe
from studio.core.recipe import Recipe
from studio.plugin_api.registry import default_registry

CONV2, CONV3 = "/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv"
FC1, FC2 = "/fc1/Gemm", "/fc2/Gemm"
FP32_ACCURACY = 0.9972


@pytest.fixture(scope="module")
def digits(digits_onnx, digits_eval, digits_calib):
    return load_model(digits_onnx), load_npz(digits_eval), load_npz(digits_calib)


def _recipe(layers, technique, **params) -> Recipe:
    return Recipe.from_dict({"layers": {la: {"prune": {technique: params}} for la in layers}})


def _compress(handle, recipe, calibration=None):
    return drive(compress(handle, recipe, calibration=calibration))


def _top1(proto, ds) -> float:
    return next(m.value for m in evaluate(proto, ds) if m.name == "top1")


def _interleaved_p50(s0, s1, feed, runs: int, warmup: int) -> tuple[float, float]:
    """Median seconds per run of two sessions, timed alternately so load on the machine hits
    both alike."""
    for _ in range(warmup):
        s0.run(None, feed), s1.run(None, feed)
    t0, t1 = [], []
    for _ in range(runs):
        a = time.perf_counter()
        s0.run(None, feed)
        b = time.perf_counter()
        s1.run(None, feed)
        t0.append(b - a)
        t1.append(time.perf_counter() - b)
    return float(np.median(t0)), float(np.median(t1))


# ---------------------------------------------------------------------- magnitude


def test_magnitude_half_sparsity_same_dense_size_smaller_zip(digits):
    handle, ev, _ = digits
    recipe = Recipe.from_dict({"defaults": {"prune": {"magnitude": {"ratio": 0.5}}}})
    variant = _compress(handle, recipe)
    before, after = analyze(handle.proto), analyze(variant.proto)
    for la in after.layers:
        w = tensor_array(GraphIndex(variant.proto).inits[la.weight_name])
        sparsity = np.count_nonzero(w == 0) / w.size
        assert abs(sparsity - 0.5) <= 1 / w.size + 1e-9, (la.name, sparsity)
    # Dense ONNX stores every zero: initializer bytes are identical, the zipped file is not.
    assert after.total_weight_bytes == before.total_weight_bytes
    dense0, dense1 = handle.proto.SerializeToString(), variant.proto.SerializeToString()
    assert abs(len(dense1) - len(dense0)) < 0.01 * len(dense0)
    zip0, zip1 = len(zlib.compress(dense0, 6)), len(zlib.compress(dense1, 6))
    print(f"\nmagnitude 50%: dense {len(dense0)} -> {len(dense1)} B, zlib {zip0} -> {zip1} B (measured)")
    assert zip1 < 0.8 * zip0
    # The estimate does not claim the dense file shrinks, but names the sparse-format size.
    est = estimate_recipe(before, recipe)
    assert est.weight_bytes == before.total_weight_bytes
    note = " ".join(est.per_layer[FC1].notes)
    assert "CSR" in note and "zip" in note
    # Accuracy: every layer at 50% (conv1 has 9 weights per filter) is printed; the big fc1 alone
    # at 50% must keep the model accurate.
    fc1_only = _compress(handle, _recipe([FC1], "magnitude", ratio=0.5))
    acc_all, acc_fc1 = _top1(variant.proto, ev), _top1(fc1_only.proto, ev)
    print(f"magnitude 50%: top1 all layers {acc_all:.4f}, fc1 only {acc_fc1:.4f} on {len(ev)} (measured)")
    assert acc_fc1 >= FP32_ACCURACY - 0.011


# ---------------------------------------------------------------------- channels


def test_graph_support_of_digits(digits):
    support = prunable_layers(digits[0].proto)
    assert all(support[n][0] for n in ("/conv1/conv1.0/Conv", CONV2, CONV3, FC1))
    ok, reason = support[FC2]
    assert not ok and "model output" in reason
    assert FC1 in support[CONV3][1]  # conv3's channels end in fc1's input features


def test_channels_conv_smaller_fewer_macs_accurate_with_refit(digits):
    handle, ev, calib = digits
    recipe = _recipe([CONV2, CONV3], "channels", ratio=0.25)
    variant = _compress(handle, recipe, calibration=calib.inputs)
    before, after = analyze(handle.proto), analyze(variant.proto)
    shapes = {la.name: la.weight_shape for la in after.layers}
    assert shapes[CONV2][0] == 24 and shapes[CONV3][:2] == [48, 24] and shapes[FC1][1] == 48 * 16
    assert after.total_weight_bytes < 0.8 * before.total_weight_bytes
    assert after.total_macs < 0.7 * before.total_macs
    assert variant.proto.ByteSize() < handle.proto.ByteSize()
    acc = _top1(variant.proto, ev)
    print(
        f"\nchannels 25% conv2+conv3 (refit on {len(calib)} samples): top1 {acc:.4f} on {len(ev)} (measured)"
    )
    assert acc >= FP32_ACCURACY - 0.011
    # estimate(): this layer shrinks by the kept fraction and says the consumer shrinks too
    est = estimate_recipe(before, recipe).per_layer[CONV3]
    conv3 = before.by_name()[CONV3]
    assert est.params == round(conv3.params * 48 / 64) and est.macs == round(conv3.macs * 48 / 64)
    assert any("consum" in n for n in est.notes)


def test_channels_fc1_hidden_neurons(digits):
    handle, ev, calib = digits
    variant = _compress(handle, _recipe([FC1], "channels", ratio=0.5, importance="l2"), calib.inputs)
    shapes = {la.name: la.weight_shape for la in analyze(variant.proto).layers}
    assert shapes[FC1] == [128, 1024] and shapes[FC2] == [10, 128]
    assert run_model(variant.proto, ev)[0].shape == (len(ev), 10)
    assert _top1(variant.proto, ev) >= FP32_ACCURACY - 0.011


def test_refit_beats_plain_slicing_at_high_ratio(digits):
    handle, ev, calib = digits
    layers = [CONV2, CONV3, FC1]
    acc = {}
    for refit in (True, False):
        v = _compress(handle, _recipe(layers, "channels", ratio=0.75, refit=refit), calib.inputs)
        acc[refit] = _top1(v.proto, ev)
    print(f"\nchannels 75%: top1 refit {acc[True]:.4f} vs sliced {acc[False]:.4f} on {len(ev)} (measured)")
    assert acc[True] > acc[False] + 0.1


def test_channels_without_calibration_warns(digits):
    handle, ev, _ = digits
    variant = _compress(handle, _recipe([FC1], "channels", ratio=0.25))
    assert any("without a least-squares refit" in w for w in variant.warnings)
    assert analyze(variant.proto).by_name()[FC2].weight_shape == [10, 192]


@pytest.mark.parametrize("technique", ["magnitude", "channels"])
@pytest.mark.parametrize("ratio", [0, 1.2])
def test_bad_ratio_names_layer_and_field(digits, technique, ratio):
    with pytest.raises(RecipeError) as e:
        _compress(digits[0], _recipe([CONV2], technique, ratio=ratio))
    assert e.value.layer == CONV2 and e.value.field == "prune.params.ratio"
    assert CONV2 in str(e.value) and "ratio" in str(e.value)


def test_heavily_pruned_model_is_faster(digits):
    handle, ev, calib = digits
    variant = _compress(handle, _recipe([CONV2, CONV3, FC1], "channels", ratio=0.9), calib.inputs)
    s0, s1 = make_session(handle.proto, threads=1), make_session(variant.proto, threads=1)
    feed = {"input": ev.inputs["input"][:64]}
    p50_0, p50_1 = _interleaved_p50(s0, s1, feed, runs=15, warmup=3)
    ratio = p50_1 / p50_0
    print(f"\nchannels 90%: p50 latency {p50_1 * 1e3:.2f} ms vs {p50_0 * 1e3:.2f} ms "
          f"(ratio {ratio:.2f}, measured, batch 64, 15 runs)")  # fmt: skip
    assert ratio < 0.95


# ---------------------------------------------------------------------- graph structure


def _residual_model() -> onnx.ModelProto:
    """x -> c0 -> relu = a;  a -> c1 -> relu -> dw (depthwise) -> relu -> c2 = b;
    add(a, b) -> c3 -> c4 -> y.  c0 and c2 meet in a residual Add."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], "c0", **conv),
        helper.make_node("Relu", ["c0"], ["a"], "r0"),
        helper.make_node("Conv", ["a", "w1", "b1"], ["c1"], "c1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], "r1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d"], "dw", group=8, **conv),
        helper.make_node("Relu", ["d"], ["rd"], "rd"),
        helper.make_node("Conv", ["rd", "w2", "b2"], ["b"], "c2", **conv),
        helper.make_node("Add", ["a", "b"], ["s"], "add"),
        helper.make_node("Conv", ["s", "w3"], ["c3"], "c3", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["c3", "w4"], ["y"], "c4", kernel_shape=[1, 1]),
    ]
    inits = [
        w("w0", 8, 4, 3, 3), w("b0", 8), w("w1", 8, 8, 3, 3), w("b1", 8), w("wd", 8, 1, 3, 3),
        w("bd", 8), w("w2", 8, 8, 3, 3), w("b2", 8), w("w3", 6, 8, 1, 1), w("w4", 4, 6, 1, 1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    normalize(model)
    return model


def test_residual_add_refused_branch_and_depthwise_pruned(tmp_path):
    model = _residual_model()
    support = prunable_layers(model)
    for name in ("c0", "c2"):
        ok, reason = support[name]
        assert not ok and "residual" in reason and "add" in reason, reason
    assert support["c1"][0] and "depthwise dw" in support["c1"][1]
    assert support["c3"][0] and not support["c4"][0]
    tech = default_registry().get("channels")
    layers = analyze(model).by_name()
    assert not tech.applies_to(layers["dw"]) and "depthwise" in tech.applies_to(layers["dw"]).reason

    path = tmp_path / "residual.onnx"
    onnx.save(model, str(path))
    handle = load_model(path)
    with pytest.raises(TechniqueError, match="residual"):
        _compress(handle, _recipe(["c2"], "channels", ratio=0.5))

    x = np.random.default_rng(1).normal(size=(16, 4, 8, 8)).astype(np.float32)
    variant = _compress(handle, _recipe(["c1", "c2"], "channels", ratio=0.5), calibration={"x": x})
    assert any("c2: channel pruning skipped" in w and "residual" in w for w in variant.warnings)
    after = analyze(variant.proto).by_name()
    assert after["c1"].weight_shape[0] == 4 and after["dw"].weight_shape[0] == 4
    assert after["dw"].attrs["group"] == 4 and after["c2"].weight_shape[1] == 4
    y = run_model(variant.proto, Dataset({"x": x}))[0]
    assert y.shape == (16, 4, 8, 8) and np.isfinite(y).all()


# ---------------------------------------------------------------------- MiniLM


@pytest.mark.nlp
def test_minilm_ffn_neurons(minilm_paths):
    pytest.importorskip("transformers")
    pytest.importorskip("studio.demos.minilm")
    onnx_path, npz_path = minilm_paths
    handle = load_model(onnx_path)
    data = load_npz(npz_path)
    calib, ev = data.subset(np.arange(32)), data.subset(np.arange(200, 264))
    glob = "/encoder/layer.*/intermediate/dense/MatMul"
    recipe = Recipe.from_dict({"layers": {glob: {"prune": {"channels": {"ratio": 0.5}}}}})
    variant = _compress(handle, recipe, calibration=calib.inputs)
    before, after = analyze(handle.proto), analyze(variant.proto)
    inter = after.by_name()["/encoder/layer.0/intermediate/dense/MatMul"]
    out = after.by_name()["/encoder/layer.0/output/dense/MatMul"]
    assert inter.weight_shape == [384, 768] and out.weight_shape == [768, 384]
    assert variant.proto.ByteSize() < 0.9 * handle.proto.ByteSize()
    assert after.total_macs < 0.75 * before.total_macs
    fid = {m.name: m.value for m in evaluate(variant.proto, ev, reference=handle.proto)}

    s0, s1 = make_session(handle.proto, threads=1), make_session(variant.proto, threads=1)
    feed = {k: v[:16] for k, v in ev.inputs.items()}
    p50_0, p50_1 = _interleaved_p50(s0, s1, feed, runs=5, warmup=1)
    ratio = p50_1 / p50_0
    print(
        f"\nMiniLM FFN 50% (refit on {len(calib)} sentences): size {handle.proto.ByteSize()} -> "
        f"{variant.proto.ByteSize()} B; MACs/token {before.total_macs} -> {after.total_macs} (estimated); "
        f"latency ratio {ratio:.2f} (measured, batch 16, 5 runs); fidelity cosine_mean "
        f"{fid['cosine_mean']:.4f} on {len(ev)} sentences"
    )
    assert fid["cosine_mean"] > 0.6
