"""Low-rank decomposition on real models: SVD (plain, energy, whitened) and Tucker-2, applied
through the pipeline, run in ONNX Runtime, and measured against the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core.errors import RecipeError, TechniqueError
from studio.core.evaluate import evaluate, load_npz, make_session
from studio.core.graph import analyze
from studio.core.jobs import drive
from studio.core.model import ModelHandle, load_model
from studio.core.pipeline import compress, estimate_recipe
from studio.core.recipe import Recipe

FC1 = "/fc1/Gemm"
CONV3 = "/conv3/conv3.0/Conv"


@pytest.fixture(scope="module")
def base_top1(digits, eval_ds):
    return _metrics(digits.proto, eval_ds)["top1"]


def _recipe(layers: dict) -> Recipe:
    return Recipe.from_dict({"layers": layers})


def _metrics(proto, ds, reference=None) -> dict[str, float]:
    return {m.name: m.value for m in evaluate(proto, ds, reference=reference, threads=1)}


def _svd(layer: str, **params) -> Recipe:
    return _recipe({layer: {"decompose": {"svd": params}}})


def test_svd_fc1_smaller_and_accurate(digits, eval_ds, base_top1):
    before = analyze(digits.proto, with_stats=False)
    est = estimate_recipe(before, _svd(FC1, rank_ratio=1 / 16))
    variant = drive(compress(digits, _svd(FC1, rank_ratio=1 / 16)))
    after = analyze(variant.proto, with_stats=False)
    layers = after.by_name()
    assert FC1 not in layers and {f"{FC1}/svd_a", f"{FC1}/svd_b"} <= set(layers)
    assert layers[f"{FC1}/svd_a"].weight_shape == [16, 1024]  # transB kept: [r, K]
    assert layers[f"{FC1}/svd_b"].bias_name == "fc1.bias"
    fc1_bytes = layers[f"{FC1}/svd_a"].weight_bytes + layers[f"{FC1}/svd_b"].weight_bytes
    assert est.weight_bytes == after.total_weight_bytes  # the formula predicts the real graph
    assert est.per_layer[FC1].weight_bytes == fc1_bytes
    size_before, size_after = len(digits.serialized()), len(variant.proto.SerializeToString())
    assert size_after < 0.2 * size_before
    top1 = _metrics(variant.proto, eval_ds)["top1"]
    print(
        f"\nsvd 1/16 on fc1: fc1 weights {before.by_name()[FC1].weight_bytes} -> {fc1_bytes} B (analyze), "
        f"file {size_before} -> {size_after} B (serialized); top1 {base_top1:.4f} -> {top1:.4f} "
        f"(measured on {len(eval_ds)} samples)"
    )
    assert top1 >= base_top1 - 0.01


def test_svd_energy_picks_rank_from_spectrum(digits, eval_ds):
    w = numpy_helper.to_array(next(t for t in digits.proto.graph.initializer if t.name == "fc1.weight"))
    s = np.linalg.svd(w.astype(np.float64).T, compute_uv=False)
    share = np.cumsum(s**2) / (s**2).sum()
    expected = int(np.argmax(share >= 0.6) + 1)
    est = estimate_recipe(analyze(digits.proto, with_stats=False), _svd(FC1, energy=0.6))
    assert any("energy" in n for n in est.per_layer[FC1].notes)
    variant = drive(compress(digits, _svd(FC1, energy=0.6)))
    layers = analyze(variant.proto, with_stats=False).by_name()
    rank = layers[f"{FC1}/svd_a"].weight_shape[0]
    m = _metrics(variant.proto, eval_ds)
    print(f"\nsvd energy=0.6 on fc1: rank {rank} (numpy says {expected}), top1 {m['top1']:.4f} (measured)")
    assert rank == expected
    assert len(variant.proto.SerializeToString()) < len(digits.serialized())


def test_whitened_svd_is_at_least_as_faithful(digits, eval_ds, calib):
    plain = drive(compress(digits, _svd(FC1, rank_ratio=1 / 16)))
    white = drive(compress(digits, _svd(FC1, rank_ratio=1 / 16, whitened=True), calibration=calib))
    assert (
        analyze(plain.proto, with_stats=False).total_weight_bytes
        == analyze(white.proto, with_stats=False).total_weight_bytes
    )
    fp = _metrics(plain.proto, eval_ds, reference=digits.proto)
    fw = _metrics(white.proto, eval_ds, reference=digits.proto)
    print(
        f"\nsvd rank 16 on fc1, fidelity on {len(eval_ds)} samples: plain sqnr {fp['sqnr_db']:.2f} dB "
        f"cos {fp['cosine_mean']:.4f}; whitened sqnr {fw['sqnr_db']:.2f} dB cos {fw['cosine_mean']:.4f}"
    )
    assert fw["sqnr_db"] >= fp["sqnr_db"]
    assert fw["cosine_mean"] >= fp["cosine_mean"]


def test_whitened_without_calibration_is_a_clear_error(digits):
    with pytest.raises(TechniqueError, match="calibration"):
        drive(compress(digits, _svd(FC1, rank_ratio=0.1, whitened=True)))


def test_rank_that_saves_nothing_is_refused(digits):
    est = estimate_recipe(analyze(digits.proto, with_stats=False), _svd(FC1, rank_ratio=0.9))
    assert any("does not reduce cost" in n for n in est.per_layer[FC1].notes)
    assert est.per_layer[FC1].params == analyze(digits.proto, with_stats=False).by_name()[FC1].params
    with pytest.raises(TechniqueError, match="/fc1/Gemm"):
        drive(compress(digits, _svd(FC1, rank_ratio=0.9)))


def test_svd_params_are_validated(digits):
    with pytest.raises(RecipeError) as e:
        estimate_recipe(analyze(digits.proto, with_stats=False), _svd(FC1, rank_ratio=0.1, energy=0.9))
    assert e.value.layer == FC1 and e.value.field.startswith("decompose.params")
    with pytest.raises(RecipeError) as e:
        estimate_recipe(analyze(digits.proto, with_stats=False), _svd(FC1, rank_ratio=1.5))
    assert e.value.field == "decompose.params.rank_ratio"
    with pytest.raises(RecipeError, match="Conv"):
        estimate_recipe(analyze(digits.proto, with_stats=False), _svd(CONV3, rank_ratio=0.1))


def _matmul_model(rng) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x[4,12] -> Gemm(transA=1 over x^T, transB=0) -> MatMul(weight on the left of y^T)."""
    w1 = rng.standard_normal((12, 10)).astype(np.float32)
    b1 = rng.standard_normal(10).astype(np.float32)
    w2 = rng.standard_normal((8, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="t0", perm=[1, 0]),
        helper.make_node("Gemm", ["xt", "w1", "b1"], ["y"], name="gemm", transA=1, alpha=0.5, beta=2.0),
        helper.make_node("Transpose", ["y"], ["yt"], name="t1", perm=[1, 0]),
        helper.make_node("MatMul", ["w2", "yt"], ["z"], name="left"),
    ]
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 12])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, "n"])],
        [numpy_helper.from_array(a, k) for k, a in {"w1": w1, "b1": b1, "w2": w2}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"w1": w1, "b1": b1, "w2": w2}


def _truncated(w: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def test_svd_wiring_transA_alpha_beta_and_left_weight():
    rng = np.random.default_rng(0)
    model, w = _matmul_model(rng)
    handle = ModelHandle(model, sha256="synthetic")
    recipe = _recipe({"gemm": {"decompose": {"svd": {"rank_ratio": 0.3}}}, "left": {"decompose": "svd"}})
    variant = drive(compress(handle, recipe))
    names = {n.name for n in variant.proto.graph.node}
    assert {"gemm/svd_a", "gemm/svd_b", "left/svd_a", "left/svd_b"} <= names
    x = rng.standard_normal((5, 12)).astype(np.float32)
    got = make_session(variant.proto).run(None, {"x": x})[0]
    y = 0.5 * x @ _truncated(w["w1"], 3) + 2.0 * w["b1"]  # rank ceil(0.3 * 10)
    want = _truncated(w["w2"], 2) @ y.T  # default rank_ratio 0.25 of 8
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tucker_conv3_runs_with_fewer_params(digits, eval_ds, base_top1):
    recipe = _recipe({CONV3: {"decompose": {"tucker": {"rank_ratio": 0.5}}}})
    before = analyze(digits.proto, with_stats=False)
    est = estimate_recipe(before, recipe)
    variant = drive(compress(digits, recipe))
    after = analyze(variant.proto, with_stats=False).by_name()
    parts = [f"{CONV3}/tucker_in", f"{CONV3}/tucker_core", f"{CONV3}/tucker_out"]
    assert CONV3 not in after and all(p in after for p in parts)
    assert after[parts[1]].weight_shape == [32, 16, 3, 3]
    assert after[parts[1]].attrs["pads"] == [1, 1, 1, 1]
    params = sum(after[p].params for p in parts)
    macs = sum(after[p].macs for p in parts)
    assert params == est.per_layer[CONV3].params < before.by_name()[CONV3].params
    assert macs == est.per_layer[CONV3].macs < before.by_name()[CONV3].macs
    m = _metrics(variant.proto, eval_ds, reference=digits.proto)
    print(
        f"\ntucker 0.5 on conv3: params {before.by_name()[CONV3].params} -> {params}, MACs "
        f"{before.by_name()[CONV3].macs} -> {macs} (analyze); top1 {base_top1:.4f} -> {m['top1']:.4f}, "
        f"cosine {m['cosine_mean']:.4f} (measured on {len(eval_ds)} samples)"
    )
    assert m["top1"] >= base_top1 - 0.03


def test_tucker_refuses_grouped_and_pointwise_convs():
    rng = np.random.default_rng(0)
    inits = {
        "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
        "wp": rng.standard_normal((16, 8, 1, 1)).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "wd"], ["h"], name="dw", group=8, pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["h", "wp"], ["y"], name="pw"),
        ],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 6, 6])],
        [numpy_helper.from_array(a, k) for k, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    analysis = analyze(model, with_stats=False)
    with pytest.raises(RecipeError, match="depthwise") as e:
        estimate_recipe(analysis, _recipe({"dw": {"decompose": "tucker"}}))
    assert e.value.layer == "dw"
    with pytest.raises(RecipeError, match="1x1") as e:
        estimate_recipe(analysis, _recipe({"pw": {"decompose": "tucker"}}))
    assert e.value.layer == "pw"


def _minilm_ffn(**params) -> Recipe:
    # `layer.?` keeps the glob off the attention output (".../attention/output/dense/MatMul").
    step = {"decompose": {"svd": params}}
    return _recipe(
        {"/encoder/layer.?/intermediate/dense/MatMul": step, "/encoder/layer.?/output/dense/MatMul": step}
    )


@pytest.mark.nlp
def test_minilm_ffn_svd_half_rank(minilm_paths):
    pytest.importorskip("transformers")
    pytest.importorskip("studio.demos.minilm")
    onnx_path, npz_path = minilm_paths
    handle = load_model(onnx_path)
    ds = load_npz(npz_path).subset(np.arange(32))
    before = analyze(handle.proto, with_stats=False)
    plain = drive(compress(handle, _minilm_ffn(rank_ratio=0.5)))
    after = analyze(plain.proto, with_stats=False)
    split = [la.name for la in after.layers if la.name.endswith(("/svd_a", "/svd_b"))]
    assert len(split) == 24  # 6 layers x 2 FFN MatMuls x 2 factors
    assert after.total_weight_bytes < before.total_weight_bytes
    assert len(plain.proto.SerializeToString()) < len(handle.serialized())
    m = _metrics(plain.proto, ds, reference=handle.proto)
    print(
        f"\nMiniLM FFN SVD 0.5: weights {before.total_weight_bytes} -> {after.total_weight_bytes} B "
        f"(analyze); cosine_mean {m['cosine_mean']:.4f} (min {m['cosine_min']:.4f}) "
        f"(fidelity on {len(ds)} sentences, per token)"
    )
    assert m["cosine_mean"] > 0.5


@pytest.mark.nlp
@pytest.mark.reliability
def test_minilm_whitened_svd_beats_plain(minilm_paths):
    pytest.importorskip("studio.demos.minilm")
    onnx_path, npz_path = minilm_paths
    handle = load_model(onnx_path)
    data = load_npz(npz_path)
    ds = data.subset(np.arange(32))
    calib = data.subset(np.arange(len(data) - 16, len(data))).inputs  # disjoint from ds
    plain = drive(compress(handle, _minilm_ffn(rank_ratio=0.5)))
    white = drive(compress(handle, _minilm_ffn(rank_ratio=0.5, whitened=True), calibration=calib))
    mp = _metrics(plain.proto, ds, reference=handle.proto)
    mw = _metrics(white.proto, ds, reference=handle.proto)
    print(
        f"\nMiniLM FFN SVD 0.5, fidelity on {len(ds)} sentences: plain cosine_mean {mp['cosine_mean']:.4f}, "
        f"whitened (16 calibration sentences) {mw['cosine_mean']:.4f}"
    )
    assert mw["cosine_mean"] >= mp["cosine_mean"]
