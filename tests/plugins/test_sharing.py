"""K-means weight sharing on the real digits model: file size, accuracy, layer identity after
encoding, uint4 packing, and the Huffman size estimate."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from studio.core.errors import RecipeError
from studio.core.evaluate import evaluate, make_session, run_model
from studio.core.graph import analyze
from studio.core.jobs import drive
from studio.core.pipeline import compress, estimate_recipe
from studio.core.recipe import Recipe

FC1 = "/fc1/Gemm"


@pytest.fixture(scope="module")
def base_top1(digits, eval_ds):
    return _top1(digits.proto, eval_ds)


def _top1(proto, ds) -> float:
    return next(m.value for m in evaluate(proto, ds, threads=1) if m.name == "top1")


def _kmeans(**params) -> Recipe:
    return Recipe.from_dict({"defaults": {"encode": {"kmeans": params}}})


@pytest.fixture(scope="module")
def encoded8(digits):
    return drive(compress(digits, _kmeans(bits=8)))


def test_kmeans_8bit_all_layers(digits, eval_ds, base_top1, encoded8):
    before = analyze(digits.proto)
    after = analyze(encoded8.proto)
    est = estimate_recipe(before, _kmeans(bits=8))
    size0, size1 = len(digits.serialized()), len(encoded8.proto.SerializeToString())
    top1 = _top1(encoded8.proto, eval_ds)
    print(
        f"\nkmeans 8 bit, all layers: file {size0} -> {size1} B ({size0 / size1:.2f}x smaller, serialized); "
        f"weights {before.total_weight_bytes} -> {after.total_weight_bytes} B (analyze, estimate "
        f"{est.weight_bytes}); top1 {base_top1:.4f} -> {top1:.4f} (measured on {len(eval_ds)} samples)"
    )
    assert size0 / size1 >= 3.5
    assert top1 >= base_top1 - 0.005
    # Every layer is still found under its own name, with its weight shape and parameter count.
    assert [la.name for la in after.layers] == [la.name for la in before.layers]
    # conv1 has 144 weights: a 256-entry codebook would cost more than it saves, so it is skipped.
    assert any("/conv1/conv1.0/Conv: kmeans skipped" in w for w in encoded8.warnings)
    assert after.layers[0].dtype == "float" and after.layers[0].weight_bytes == before.layers[0].weight_bytes
    for b, a in list(zip(before.layers, after.layers))[1:]:
        assert (a.weight_shape, a.params, a.dtype) == (b.weight_shape, b.params, "uint8")
        assert a.weight_bytes < b.weight_bytes
    for b, a in zip(before.layers, after.layers):
        assert abs(a.stats.std - b.stats.std) < 0.05 * b.stats.std  # stats of the decoded weights
    assert est.weight_bytes == after.total_weight_bytes
    names = {n.name for n in encoded8.proto.graph.node}
    assert f"{FC1}/codebook_gather" in names and f"{FC1}/codebook_cast" in names
    meta = {e.key: json.loads(e.value) for e in encoded8.proto.metadata_props}
    fc1 = meta[f"studio.kmeans:{FC1}"]
    assert fc1["codebook_entries"] == 256 and fc1["huffman_bytes_estimated"] < fc1["stored_bytes"]


def test_encoded_model_runs_as_fast(digits, eval_ds, encoded8):
    # ORT folds Cast+Gather on constants at session load, so inference cost is the original's.
    feed = {"input": eval_ds.inputs["input"][:64]}

    def best_ms(proto) -> float:
        sess = make_session(proto, threads=1)
        sess.run(None, feed)
        times = []
        for _ in range(15):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t)
        return 1000 * min(times)

    t0, t1 = best_ms(digits.proto), best_ms(encoded8.proto)
    print(f"\nlatency batch 64 (best of 15, measured): original {t0:.3f} ms, kmeans 8 bit {t1:.3f} ms")
    assert t1 < 2.0 * t0 + 0.5


def test_kmeans_4bit_and_uint4_packing(digits, eval_ds, base_top1):
    plain = drive(compress(digits, _kmeans(bits=4)))
    packed = drive(compress(digits, _kmeans(bits=4, pack_uint4=True)))
    s0 = len(digits.serialized())
    s4, s4p = len(plain.proto.SerializeToString()), len(packed.proto.SerializeToString())
    top1 = _top1(plain.proto, eval_ds)
    est = estimate_recipe(analyze(digits.proto), _kmeans(bits=4, pack_uint4=True))
    print(
        f"\nkmeans 4 bit: file {s0} -> {s4} B as uint8 ({s0 / s4:.2f}x), {s4p} B as uint4 ({s0 / s4p:.2f}x) "
        f"(serialized); top1 {base_top1:.4f} -> {top1:.4f} (measured on {len(eval_ds)} samples)"
    )
    print("estimate notes fc1:", est.per_layer[FC1].notes)
    assert top1 >= base_top1 - 0.02
    assert s4p < 0.6 * s4
    assert analyze(packed.proto).by_name()[FC1].dtype == "uint4"
    assert est.weight_bytes == analyze(packed.proto).total_weight_bytes
    # Packing changes the storage only: the decoded weights, hence the outputs, are identical.
    ds = eval_ds.subset(np.arange(64))
    np.testing.assert_array_equal(run_model(plain.proto, ds)[0], run_model(packed.proto, ds)[0])


def test_kmeans_after_svd_encodes_both_factors(digits, eval_ds):
    recipe = Recipe.from_dict(
        {"layers": {FC1: {"decompose": {"svd": {"rank_ratio": 0.125}}, "encode": {"kmeans": {"bits": 8}}}}}
    )
    variant = drive(compress(digits, recipe))
    layers = analyze(variant.proto, with_stats=False).by_name()
    assert layers[f"{FC1}/svd_a"].dtype == layers[f"{FC1}/svd_b"].dtype == "uint8"
    assert len(variant.proto.SerializeToString()) < 0.3 * len(digits.serialized())
    assert _top1(variant.proto, eval_ds) >= 0.97


def test_bits_out_of_range_names_the_field(digits):
    with pytest.raises(RecipeError) as e:
        estimate_recipe(analyze(digits.proto, with_stats=False), _kmeans(bits=9))
    assert e.value.field == "encode.params.bits"
    with pytest.raises(RecipeError) as e:
        estimate_recipe(analyze(digits.proto, with_stats=False), _kmeans(bits=8, pack_uint4=True))
    assert e.value.field.startswith("encode.params")


def test_huffman_bits_and_estimate_note(digits):
    from studio_sharing.codebook import huffman_bits

    assert huffman_bits([1, 1, 2, 4]) == 14  # code lengths 3, 3, 2, 1
    assert huffman_bits([5, 5]) == 10
    est = estimate_recipe(analyze(digits.proto), _kmeans(bits=4))
    notes = " ".join(est.per_layer[FC1].notes)
    assert "Huffman" in notes and "estimated" in notes
