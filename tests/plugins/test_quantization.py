"""Quantization plugin through the real pipeline: real digits CNN / MiniLM, real ORT sessions."""

from __future__ import annotations

import platform
import time

import numpy as np
import onnx
import pytest

from studio.core.errors import RecipeError, TechniqueError
from studio.core.evaluate import evaluate, load_npz, make_session
from studio.core.graph import analyze
from studio.core.jobs import drive
from studio.core.model import load_model
from studio.core.pipeline import compress, estimate_recipe, resolve_plan
from studio.core.recipe import Recipe

CONVS = ["/conv1/conv1.0/Conv", "/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv"]
FCS = ["/fc1/Gemm", "/fc2/Gemm"]


@pytest.fixture(scope="module")
def fp32_top1(digits, eval_ds):
    return next(m.value for m in evaluate(digits.proto, eval_ds) if m.name == "top1")


def run(handle, recipe: dict, calibration=None):
    return drive(compress(handle, Recipe.from_dict(recipe), calibration=calibration))


def top1(proto, ds) -> float:
    return next(m.value for m in evaluate(proto, ds) if m.name == "top1")


def layers(proto):
    return analyze(proto, with_stats=False).by_name()


def latency_ratio(new, old, feed, reps=20) -> float:
    """Same-run, interleaved timing (new / old); only reported, never asserted (shared CPU)."""
    s_new, s_old = make_session(new, threads=1), make_session(old, threads=1)
    t_new = t_old = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        s_old.run(None, feed)
        t_old += time.perf_counter() - t
        t = time.perf_counter()
        s_new.run(None, feed)
        t_new += time.perf_counter() - t
    return t_new / t_old


# ---------------------------------------------------------------------- int8 static


def test_int8_static_all_layers_shrinks_and_keeps_accuracy(digits, eval_ds, calib, fp32_top1):
    recipe = {"defaults": {"quantize": "int8_static"}}
    v = run(digits, recipe, calib)
    before, after = analyze(digits.proto), analyze(v.proto)
    la = after.by_name()
    assert [la[n].dtype for n in CONVS + FCS] == ["int8"] * 5  # real int8 initializers behind DQ
    ratio = before.layer_weight_bytes / after.layer_weight_bytes
    assert ratio >= 3.5
    est = estimate_recipe(before, Recipe.from_dict(recipe))
    assert est.weight_bytes == pytest.approx(after.total_weight_bytes, rel=0.05)
    acc = top1(v.proto, eval_ds)
    assert acc >= fp32_top1 - 0.01
    # Node names survive; the weight dequantizers follow the `X/<suffix>` convention.
    names = {n.name for n in v.proto.graph.node}
    assert set(CONVS + FCS) <= names
    assert "/fc1/Gemm/weight_dq" in names
    lat = latency_ratio(v.proto, digits.proto, {"input": eval_ds.inputs["input"][:64]})
    print(f"\nint8_static digits: weights {ratio:.2f}x smaller (measured), top1 {fp32_top1:.4f} -> {acc:.4f} "
          f"(measured, {len(eval_ds)} samples), latency ratio {lat:.2f} (same run, batch 64, 1 thread)")  # fmt: skip


def test_int8_static_per_layer_exclusion_and_overrides(digits, calib):
    recipe = {
        "defaults": {"quantize": "int8_static"},
        "layers": {
            "/conv1/conv1.0/Conv": {"quantize": None},
            "/fc2/Gemm": {"quantize": {"int8_static": {"per_channel": False}}},
        },
    }
    v = run(digits, recipe, calib)
    la = layers(v.proto)
    assert la["/conv1/conv1.0/Conv"].dtype == "float"  # excluded: untouched float32
    assert la["/conv2/conv2.0/Conv"].dtype == "int8"
    idx = {t.name: t for t in v.proto.graph.initializer}
    nodes = {n.name: n for n in v.proto.graph.node}
    scale_fc2 = idx[nodes["/fc2/Gemm/weight_dq"].input[1]]
    scale_fc1 = idx[nodes["/fc1/Gemm/weight_dq"].input[1]]
    assert list(scale_fc2.dims) == []  # per-tensor for the overridden layer
    assert list(scale_fc1.dims) == [256]  # per-channel elsewhere
    conv1 = nodes["/conv1/conv1.0/Conv"]
    assert conv1.input[1] in idx and idx[conv1.input[1]].data_type == onnx.TensorProto.FLOAT


def test_int8_static_without_calibration_is_a_technique_error(digits):
    with pytest.raises(TechniqueError, match="int8_static needs calibration data"):
        run(digits, {"defaults": {"quantize": "int8_static"}})


def test_int8_static_conflicting_global_params(digits, calib):
    recipe = {
        "defaults": {"quantize": "int8_static"},
        "layers": {"/fc2/Gemm": {"quantize": {"int8_static": {"calibrate_method": "entropy"}}}},
    }
    with pytest.raises(TechniqueError, match="calibrate_method"):
        run(digits, recipe, calib)


# ---------------------------------------------------------------------- bad params


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"int8_static": {"bits": 4}}, "quantize.params.bits"),
        ({"int8_dynamic": {"bits": 4}}, "quantize.params.bits"),
        ({"int4_weight": {"bits": 3}}, "quantize.params.bits"),
        ({"int4_weight": {"block_size": 48}}, "quantize.params.block_size"),
        ({"fp16": {"per_channel": True}}, "quantize.params.per_channel"),
    ],
)
def test_bad_params_name_layer_and_field(digits, step, field):
    recipe = Recipe.from_dict({"layers": {"/fc1/Gemm": {"quantize": step}}})
    with pytest.raises(RecipeError) as e:
        resolve_plan(analyze(digits.proto, with_stats=False), recipe)
    assert e.value.layer == "/fc1/Gemm"
    assert e.value.field == field


def test_explicit_unsupported_layer_is_a_recipe_error_with_reason(digits):
    recipe = Recipe.from_dict({"layers": {"/conv2/conv2.0/Conv": {"quantize": "int8_dynamic"}}})
    with pytest.raises(RecipeError, match="slower than float32 Conv"):
        resolve_plan(analyze(digits.proto, with_stats=False), recipe)


# ---------------------------------------------------------------------- int8 dynamic / int4 / fp16


def test_int8_dynamic_on_gemms_keeps_names_and_skips_convs(digits, eval_ds, fp32_top1):
    v = run(digits, {"defaults": {"quantize": "int8_dynamic"}})
    la = layers(v.proto)
    assert la["/fc1/Gemm"].op_type == "MatMulInteger" and la["/fc1/Gemm"].dtype == "int8"
    assert all(la[c].op_type == "Conv" and la[c].dtype == "float" for c in CONVS)
    assert sum("slower than float32 Conv" in w for w in v.warnings) == 3
    assert top1(v.proto, eval_ds) >= fp32_top1 - 0.01


def test_int8_dynamic_one_layer_leaves_the_other_gemm_intact(digits):
    v = run(digits, {"layers": {"/fc1/Gemm": {"quantize": {"int8_dynamic": {"per_channel": False}}}}})
    nodes = {n.name: n for n in v.proto.graph.node}
    # ORT's dynamic mode rewrites every Gemm as MatMul+Add; the unplanned one is put back as it was.
    orig = next(n for n in digits.proto.graph.node if n.name == "/fc2/Gemm")
    assert nodes["/fc2/Gemm"] == orig
    assert nodes["/fc1/Gemm"].op_type == "MatMulInteger"
    assert not any(n.endswith(("_MatMul", "_Add")) for n in nodes)


@pytest.mark.parametrize("algorithm", ["rtn", "hqq"])
def test_int4_weight_only_fc1(digits, eval_ds, fp32_top1, algorithm):
    if algorithm == "hqq":
        pytest.importorskip("torch")
    recipe = {
        "layers": {"/fc1/Gemm": {"quantize": {"int4_weight": {"algorithm": algorithm, "block_size": 32}}}}
    }
    v = run(digits, recipe)
    before, after = layers(digits.proto), layers(v.proto)
    fc1 = after["/fc1/Gemm"]
    assert fc1.op_type == "MatMulNBits" and fc1.dtype == "int4"
    assert fc1.params == 256 * 1024  # logical weights, not packed bytes
    assert fc1.weight_bytes < 0.2 * before["/fc1/Gemm"].weight_bytes
    assert after["/fc2/Gemm"].op_type == "Gemm"  # not in the plan
    est = estimate_recipe(analyze(digits.proto), Recipe.from_dict(recipe)).per_layer["/fc1/Gemm"]
    assert est.weight_bytes == pytest.approx(fc1.weight_bytes, rel=0.05)
    assert top1(v.proto, eval_ds) >= fp32_top1 - 0.02


def test_fp16_halves_weights_and_keeps_accuracy(digits, eval_ds, fp32_top1):
    v = run(digits, {"defaults": {"quantize": "fp16"}, "layers": {"/conv2/conv2.0/Conv": {"quantize": None}}})
    before, after = analyze(digits.proto), analyze(v.proto)
    la = after.by_name()
    assert la["/conv2/conv2.0/Conv"].dtype == "float"
    assert all(la[n].dtype == "float16" for n in [CONVS[0], CONVS[2], *FCS])
    ratio = before.layer_weight_bytes / after.layer_weight_bytes
    assert 1.9 <= ratio <= 2.0
    assert top1(v.proto, eval_ds) >= fp32_top1 - 0.01
    # Inputs/outputs stay float32 and no float32 -> float16 -> float32 Cast round trips remain.
    sess = make_session(v.proto)
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    producer = {o: n for n in v.proto.graph.node for o in n.output}
    for n in v.proto.graph.node:
        if n.op_type == "Cast" and n.input[0] in producer:
            assert producer[n.input[0]].op_type != "Cast", n.name


def test_reduce_range_auto_follows_vnni():
    from studio_quantization.ort_bridge import auto_reduce_range, cpu_has_vnni

    assert auto_reduce_range(True) is True and auto_reduce_range(False) is False
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert auto_reduce_range(None) == (x86 and not cpu_has_vnni())


def test_registry_finds_the_four_techniques():
    from studio_quantization.techniques import quantization_techniques

    from studio.plugin_api.registry import default_registry

    reg = default_registry()
    for cls in quantization_techniques():
        t = reg.get(cls.name)
        assert type(t).__name__ == cls.__name__ and t.primary_param == "bits"


# ---------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    try:
        from studio.demos.minilm import build_minilm
    except ImportError:
        pytest.skip("studio.demos.minilm is missing")
    onnx_path, npz_path = build_minilm()  # cached build (stamp-checked) in the user cache
    return load_model(onnx_path), load_npz(npz_path).subset(np.arange(32))


def cosine(metrics) -> float:
    return next(m.value for m in metrics if m.name == "cosine_mean")


@pytest.mark.nlp
def test_minilm_int8_dynamic_per_channel_fidelity(minilm, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    handle, ds = minilm
    v = run(handle, {"defaults": {"quantize": "int8_dynamic"}})
    la = layers(v.proto)
    matmuls = [n for n, x in layers(handle.proto).items() if x.op_type == "MatMul"]
    assert matmuls and all(la[n].op_type == "MatMulInteger" for n in matmuls)
    ours = cosine(evaluate(v.proto, ds, reference=handle.proto))
    # ORT's own defaults (per-tensor, every supported op) on the same sentences, for comparison.
    quantize_dynamic(handle.proto, tmp_path / "ort_default.onnx")
    ort_default = cosine(evaluate(str(tmp_path / "ort_default.onnx"), ds, reference=handle.proto))
    lat = latency_ratio(v.proto, handle.proto, ds.subset(np.arange(8)).inputs, reps=5)
    print(f"\nMiniLM int8_dynamic per-channel cosine_mean {ours:.4f} vs ORT quantize_dynamic defaults "
          f"{ort_default:.4f} (fidelity, {len(ds)} sentences, real tokens); latency ratio {lat:.2f} "
          f"(same run, batch 8, 1 thread)")  # fmt: skip
    assert ours >= 0.99
    assert ours > ort_default


@pytest.mark.nlp
def test_minilm_int4_ffn_runs_and_shrinks(minilm):
    handle, ds = minilm
    ffn = ["/encoder/layer.*/intermediate/dense/MatMul", "/encoder/layer.*/output/dense/MatMul"]
    v = run(handle, {"layers": {p: {"quantize": "int4_weight"} for p in ffn}})
    before, after = layers(handle.proto), layers(v.proto)
    target = [
        n for n in before if "/intermediate/dense/" in n or ("/output/dense/" in n and "attention" not in n)
    ]
    assert len(target) == 12
    assert all(after[n].op_type == "MatMulNBits" for n in target)
    assert after["/encoder/layer.0/attention/self/query/MatMul"].op_type == "MatMul"
    shrink = sum(after[n].weight_bytes for n in target) / sum(before[n].weight_bytes for n in target)
    assert shrink < 0.25
    cos = cosine(evaluate(v.proto, ds, reference=handle.proto))
    print(
        f"\nMiniLM int4 FFN: FFN weights x{shrink:.3f} (measured), cosine_mean {cos:.4f} (fidelity, {len(ds)})"
    )
    assert cos > 0.95


@pytest.mark.nlp
def test_minilm_static_estimate_warns_on_transformer_matmuls(minilm):
    handle, _ = minilm
    est = estimate_recipe(
        analyze(handle.proto, with_stats=False), Recipe.from_dict({"defaults": {"quantize": "int8_static"}})
    )
    notes = est.per_layer["/encoder/layer.0/intermediate/dense/MatMul"].notes
    assert any("transformer" in n and n.startswith("warning") for n in notes)


@pytest.mark.nlp
def test_minilm_int8_gather_per_row_embedding(minilm):
    """int8_dynamic on the word-embedding Gather: int8 rows + per-row scales, ~4x smaller table,
    near-lossless (ORT's own Gather quantization is per tensor)."""
    handle, ds = minilm
    before = layers(handle.proto)
    word = max((la for la in before.values() if la.op_type == "Gather"), key=lambda la: la.weight_bytes)
    v = run(handle, {"layers": {word.name: {"quantize": "int8_dynamic"}}})
    after = layers(v.proto)
    assert word.name in after and after[word.name].dtype == "int8"
    ratio = after[word.name].weight_bytes / word.weight_bytes
    cos = cosine(evaluate(v.proto, ds, reference=handle.proto))
    print(
        f"\nMiniLM int8 word embedding: table x{ratio:.3f} (measured bytes), cosine_mean {cos:.5f} (fidelity)"
    )
    assert ratio < 0.27
    assert cos >= 0.999
    # The other layers are untouched.
    q = "/encoder/layer.0/attention/self/query/MatMul"
    assert after[q].op_type == "MatMul" and after[q].dtype == "float"
