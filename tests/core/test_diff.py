"""Structural diff on real plugin output: pruned channels, SVD split, precisions, sparsity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from studio.cli.main import main
from studio.core.diff import _weight_view, diff_models
from studio.core.jobs import drive
from studio.core.model import load_model, save_model
from studio.core.onnx_utils import GraphIndex, tensor_array
from studio.core.pipeline import compress
from studio.core.recipe import Recipe

CONV2, CONV3, FC1 = "/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv", "/fc1/Gemm"

MIXED = """
name: prune+svd+int8
defaults:
  quantize: int8_static
layers:
  /conv2/conv2.0/Conv: {prune: {channels: {ratio: 0.5, importance: l1}}}
  /fc1/Gemm: {decompose: {svd: {rank_ratio: 0.25}}}
"""


@pytest.fixture(scope="module")
def mixed(digits_onnx, digits_calib):
    from studio.core.evaluate import load_npz

    h = load_model(digits_onnx)
    calib = {k: v[:64] for k, v in load_npz(digits_calib).inputs.items()}
    v = drive(compress(h, Recipe.loads(MIXED), calibration=calib))
    return h, v


def test_mixed_variant_lists_pruned_channels_svd_and_int8(mixed):
    h, v = mixed
    d = diff_models(h.proto, v.proto)
    conv2 = d.layer(CONV2)
    w = tensor_array(GraphIndex(h.proto).inits[h.proto.graph.node[0].input[1]])  # sanity: conv1 weight
    assert w.shape[0] == 16
    # Independent check: the l1 importance drops the 16 filters with the smallest L1 norm.
    wa = tensor_array(GraphIndex(h.proto).inits[_weight_name(h.proto, CONV2)])
    l1 = np.abs(wa).reshape(32, -1).sum(1)
    expected = sorted(np.argsort(l1)[:16].tolist())
    assert conv2.pruned["n_pruned"] == 16 and conv2.pruned["n_total"] == 32
    assert conv2.pruned["pruned"] == expected
    assert sorted(set(conv2.pruned["kept"]) | set(expected)) == list(range(32))
    assert conv2.precision_b.startswith("int8 QDQ")
    assert "pruned 16 of 32 output channels" in "; ".join(conv2.changes())
    # The consumer lost the matching input channels.
    assert d.layer(CONV3).inputs_reduced == (32, 16)
    fc1 = d.layer(FC1)
    assert fc1.split["kind"] == "svd"
    assert fc1.nodes_b == [f"{FC1}/svd_a", f"{FC1}/svd_b"]
    rank = _svd_rank(v.proto)
    assert fc1.split["ranks"] == [rank] and rank == 64  # 0.25 × min(256, 1024)
    assert fc1.params_b < fc1.params_a / 3
    for layer in d.layers:
        assert layer.precision_a == "fp32" and layer.precision_b.startswith("int8 QDQ"), layer.name
    a, b = d.totals["model_bytes"]
    assert b < a / 5
    assert d.totals["macs"][1] < d.totals["macs"][0]
    assert d.op_counts("added")["DequantizeLinear"] >= 5
    assert (f"{FC1}/svd_a", "Gemm") in d.added_nodes and (FC1, "Gemm") in d.removed_nodes


def _weight_name(proto: onnx.ModelProto, node_name: str) -> str:
    return next(n.input[1] for n in proto.graph.node if n.name == node_name)


def _svd_rank(proto: onnx.ModelProto) -> int:
    # Read the rank straight from the graph: the output width of X/svd_a's (dequantized) weight.
    idx = GraphIndex(proto)
    node = idx.nodes[f"{FC1}/svd_a"]
    return int(_weight_view(node, idx).array.shape[0])


def test_kept_rows_match_the_original_rows(mixed):
    h, v = mixed
    d = diff_models(h.proto, v.proto)
    kept = d.layer(CONV2).pruned["kept"]
    ia, ib = GraphIndex(h.proto), GraphIndex(v.proto)
    wa = _weight_view(ia.nodes[CONV2], ia).array
    wb = _weight_view(ib.nodes[CONV2], ib).array
    rel = np.linalg.norm(wb - wa[kept], axis=1) / np.linalg.norm(wa[kept], axis=1)
    assert rel.max() < 0.05  # int8 per-channel rounding only


def test_identical_models_have_no_changes(digits_onnx):
    h = load_model(digits_onnx)
    d = diff_models(h.proto, h.proto)
    assert d.changed() == [] and d.added_nodes == [] and d.removed_nodes == []
    assert all(x.status == "unchanged" for x in d.layers) and len(d.layers) == 5


def test_int4_fp16_kmeans_and_sparsity_are_recognised(digits_onnx):
    h = load_model(digits_onnx)
    recipe = Recipe.loads(
        """
layers:
  /fc1/Gemm: {quantize: {int4_weight: {block_size: 32}}}
  /conv3/conv3.0/Conv: {encode: {kmeans: {}}}
  /conv2/conv2.0/Conv: {prune: {magnitude: {ratio: 0.5}}}
  /fc2/Gemm: {quantize: fp16}
"""
    )
    v = drive(compress(h, recipe))
    d = diff_models(h.proto, v.proto)
    fc1 = d.layer(FC1)
    assert fc1.precision_b.startswith("int4 MatMulNBits") and "MatMulNBits" in fc1.ops_b
    # The unpacked 4-bit weight still looks like the original (validates the decoding).
    ia, ib = GraphIndex(h.proto), GraphIndex(v.proto)
    wa = _weight_view(ia.nodes[FC1], ia).array
    nb = next(n for n in v.proto.graph.node if n.op_type == "MatMulNBits")
    wb = _weight_view(nb, ib).array
    cos = (wa * wb).sum() / (np.linalg.norm(wa) * np.linalg.norm(wb))
    assert wa.shape == wb.shape and cos > 0.98
    conv3 = d.layer(CONV3)
    assert conv3.precision_b.startswith("k-means") and "codebook" in conv3.precision_b
    assert d.layer("/fc2/Gemm").precision_b.startswith("fp16")
    conv2 = d.layer(CONV2)
    assert conv2.sparsity_a == 0 and conv2.sparsity_b == pytest.approx(0.5, abs=0.02)
    assert any(c.startswith("sparsity 0% → 50%") for c in conv2.changes())
    assert d.layer("/conv1/conv1.0/Conv").status == "unchanged"


def test_cli_diff_table_and_json(mixed, tmp_path, capsys):
    h, v = mixed
    b = save_model(v.proto, tmp_path / "variant.onnx")
    assert main(["diff", str(h.source_path), str(b)]) == 0
    text = capsys.readouterr().out
    assert "pruned 16 of 32 output channels" in text
    assert "svd split" in text and "rank 64" in text
    assert "int8 QDQ" in text
    assert main(["diff", str(h.source_path), str(b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by = {x["name"]: x for x in data["layers"]}
    assert by[CONV2]["pruned"]["n_pruned"] == 16 and by[FC1]["split"]["ranks"] == [64]
    assert data["kind"].startswith("estimated")


def test_cli_diff_workspace_variants(mixed, tmp_path, capsys):
    from studio.core.workspace import Workspace

    h, v = mixed
    with Workspace.create(tmp_path / "w.studio", h) as ws:
        vid = ws.add_variant(v)
    assert main(["diff", "--workspace", str(tmp_path / "w.studio"), "original", vid]) == 0
    assert "pruned 16 of 32" in capsys.readouterr().out
    assert main(["diff", "--workspace", str(tmp_path / "w.studio"), "original", "nope"]) == 2
    assert "no variant matches" in capsys.readouterr().err
