"""Measured latency, interleaved A/B ratio, size on disk and the per-node profile, on real ORT
sessions. Timings are noisy on a shared machine: only loose ratios are asserted."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest

from studio.core.bench import (
    bench_latency,
    interleaved_ab,
    model_file_bytes,
    profile_per_layer,
    size_on_disk,
    synthetic_inputs,
)
from studio.core.evaluate import load_npz, make_session
from studio.core.graph import analyze
from studio.core.model import load_model, save_model
from studio.core.onnx_utils import replace_initializer, tensor_array


@pytest.fixture(scope="module")
def digits(digits_onnx):
    return load_model(digits_onnx)


def test_latency_p50_p90_per_batch_size(digits):
    ms = bench_latency(digits, batch_sizes=(1, 32), repeats=15, warmup=2)
    assert [(m.name, m.extra["batch_size"]) for m in ms] == [
        ("latency_p50_ms", 1), ("latency_p90_ms", 1), ("latency_p50_ms", 32), ("latency_p90_ms", 32),
    ]  # fmt: skip
    for m in ms:
        assert m.kind == "measured" and m.n_samples == 15 and m.unit == "ms"
        assert m.source.startswith("ORT CPUExecutionProvider, ORT default threads, batch ")
        assert "synthetic inputs" in m.source
        assert m.value > 0
    by = {(m.name, m.extra["batch_size"]): m.value for m in ms}
    assert by[("latency_p90_ms", 1)] >= by[("latency_p50_ms", 1)]
    assert by[("latency_p90_ms", 32)] >= by[("latency_p50_ms", 32)]
    # 32 samples cost more than one, and less than 32 separate runs' worth x a wide margin.
    assert by[("latency_p50_ms", 32)] > by[("latency_p50_ms", 1)]


def test_latency_on_real_inputs_with_threads(digits, digits_calib):
    ds = load_npz(digits_calib)
    ms = bench_latency(digits.proto, batch_sizes=(4,), threads=1, repeats=5, warmup=1, inputs=ds)
    assert "1 thread, batch 4, inputs from" in ms[0].source and str(digits_calib) in ms[0].source
    assert ms[0].extra["synthetic"] is False


def test_synthetic_inputs_respect_embedding_tables():
    """Token ids must stay inside every table the ids index; masks are ones."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.ones((3, 2), np.float32), "types")
    g = helper.make_graph(
        [
            helper.make_node("Gather", ["types", "token_type_ids"], ["e"], name="emb/Gather"),
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "ax"], ["mu"]),
            helper.make_node("Mul", ["e", "mu"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[table, numpy_helper.from_array(np.array([-1], np.int64), "ax")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    feed = synthetic_inputs(make_session(m), 4, proto=m)
    assert feed["token_type_ids"].shape == (4, 32)
    assert feed["token_type_ids"].min() >= 0 and feed["token_type_ids"].max() < 3
    assert (feed["attention_mask"] == 1).all()
    assert bench_latency(m, repeats=2, warmup=0)[0].value > 0  # runs without index errors


def test_interleaved_ab_of_a_model_with_itself_is_near_one(digits):
    r = interleaved_ab(digits, digits, batch_size=8, repeats=30, warmup=3)
    assert r.name == "latency_ratio" and r.kind == "measured" and r.n_samples == 30
    assert "interleaved A/B" in r.source
    assert 0.5 < r.value < 2.0


def test_interleaved_ab_sees_a_much_bigger_model(digits, tmp_path):
    """B = digits with fc1 widened 16x through a chain of extra Gemms: clearly slower."""
    from onnx import helper, numpy_helper

    big = onnx.ModelProto()
    big.CopyFrom(digits.proto)
    # Insert 6 square 1024x1024 Gemms before fc1: ~6 M extra MACs per sample vs 1.75 M.
    g = big.graph
    fc1 = next(n for n in g.node if n.name == "/fc1/Gemm")
    src = fc1.input[0]
    for k in range(6):
        w = numpy_helper.from_array(np.eye(1024, dtype=np.float32), f"extra{k}.w")
        g.initializer.append(w)
        out = f"extra{k}.out"
        g.node.append(helper.make_node("Gemm", [src, w.name], [out], name=f"/extra{k}/Gemm"))
        src = out
    fc1.input[0] = src
    from studio.core.onnx_utils import topo_sort

    topo_sort(big)
    r = interleaved_ab(digits, big, batch_size=32, repeats=15, warmup=2)
    assert r.value > 1.3, r.extra


def test_size_on_disk_file_and_proto(digits, digits_onnx):
    ms = {m.name: m for m in size_on_disk(digits_onnx)}
    raw = digits_onnx.read_bytes()
    assert ms["size_bytes"].value == len(raw) == model_file_bytes(digits_onnx)
    assert ms["zipped_bytes"].value == len(zlib.compress(raw, 6))
    assert ms["size_bytes"].source == "file on disk" and ms["zipped_bytes"].source == "zip -6"
    assert all(m.kind == "measured" and m.n_samples is None for m in ms.values())
    # A proto measures as the file it would be saved as.
    mp = {m.name: m.value for m in size_on_disk(digits.proto)}
    assert mp["size_bytes"] == len(digits.proto.SerializeToString())


def test_zipped_size_sees_pruned_weights(digits, tmp_path):
    pruned = onnx.ModelProto()
    pruned.CopyFrom(digits.proto)
    w = tensor_array(next(t for t in pruned.graph.initializer if t.name == "fc1.weight")).copy()
    w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0  # 90% zeros in the biggest layer
    replace_initializer(pruned, "fc1.weight", w)
    a = {m.name: m.value for m in size_on_disk(save_model(digits.proto, tmp_path / "a.onnx"))}
    b = {m.name: m.value for m in size_on_disk(save_model(pruned, tmp_path / "b.onnx"))}
    assert a["size_bytes"] == b["size_bytes"]  # dense storage: same file size
    assert b["zipped_bytes"] < 0.5 * a["zipped_bytes"]  # but it compresses


def test_size_counts_external_data(digits, tmp_path):
    path = save_model(digits.proto, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    total = path.stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    ms = {m.name: m.value for m in size_on_disk(path)}
    assert ms["size_bytes"] == total
    assert total >= analyze(digits.proto).total_weight_bytes


def test_profile_per_layer_uses_original_node_names(digits):
    prof = profile_per_layer(digits, batch_size=8, repeats=5, warmup=1)
    layers = {la.name for la in analyze(digits.proto, with_stats=False).layers}
    # Conv+Relu and Gemm+Relu are fused by ORT; their time is still found under the layer names.
    assert layers <= set(prof), sorted(prof)
    assert all(v >= 0 for v in prof.values())
    assert sum(prof[name] for name in layers) > 0


@pytest.mark.nlp
def test_minilm_synthetic_latency_and_profile(minilm_paths):
    onnx_path, _ = minilm_paths
    h = load_model(onnx_path)
    ms = bench_latency(h, repeats=3, warmup=1)
    assert ms[0].value > 0 and "synthetic inputs" in ms[0].source
    prof = profile_per_layer(h, repeats=2, warmup=1)
    layers = {la.name for la in analyze(h.proto, with_stats=False).layers}
    assert layers <= set(prof)
    graph_nodes = {n.name for n in h.proto.graph.node}
    unattributed = [k for k in prof if k not in graph_nodes]
    assert len(unattributed) <= 5, unattributed  # only ORT's anonymous fusions (SkipLayerNorm, BiasGelu)
