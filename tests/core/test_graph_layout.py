"""Qt-free layered graph layout: placement invariants, folding, cycles, crossings, MiniLM scale."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import time

import onnx
import pytest
from onnx import TensorProto, helper

from studio.gui.views.graph_layout import (
    NODE_GAP,
    DisplayGraph,
    DisplayNode,
    GraphSpec,
    _count_crossings,
    _isotonic,
    collapse_group,
    default_collapsed,
    expand_group,
    fold,
    layout,
    layout_model,
)


def _check_layout(display: DisplayGraph, lay) -> None:
    n = len(display.nodes)
    assert len(lay.x) == len(lay.y) == n
    assert len(lay.edge_paths) == len(display.edges)
    # every box in a layer keeps its gap to its neighbour: no overlaps
    by_layer: dict[int, list[int]] = {}
    for i, lv in enumerate(lay.layer):
        by_layer.setdefault(lv, []).append(i)
    for members in by_layer.values():
        assert len({lay.y[i] for i in members}) == 1
        members.sort(key=lambda i: lay.x[i])
        for a, b in itertools.pairwise(members):
            gap = (lay.x[b] - display.nodes[b].width / 2) - (lay.x[a] + display.nodes[a].width / 2)
            assert gap >= NODE_GAP - 1e-6
    for (a, b), path in zip(display.edges, lay.edge_paths, strict=True):
        assert lay.layer[a] != lay.layer[b]
        assert path[0][0] == pytest.approx(lay.x[a]) and path[-1][0] == pytest.approx(lay.x[b])


def test_digits_layout_places_every_node(digits_onnx):
    proto = onnx.load(str(digits_onnx))
    spec = GraphSpec.from_proto(proto)
    # 11 ops + 1 input + 1 output, and a chain: 12 edges
    assert len(spec.nodes) == len(proto.graph.node) + 2
    assert len(spec.edges) == len(spec.nodes) - 1
    assert default_collapsed(spec) == set()  # small graphs stay expanded
    display, lay = layout_model(spec, set())
    _check_layout(display, lay)
    assert lay.crossings == 0
    assert sorted(lay.layer) == list(range(len(spec.nodes)))  # a chain: one node per layer
    assert {d.layer_name for d in display.nodes if d.layer_name} == {
        "/conv1/conv1.0/Conv", "/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv", "/fc1/Gemm", "/fc2/Gemm"
    }  # fmt: skip


def _synthetic(n_blocks: int, width: int = 6) -> onnx.ModelProto:
    """A transformer-shaped DAG: blocks of parallel branches with residual adds, named
    /enc/block.i/branch.j/Op so the name hierarchy has groups to fold."""
    nodes = []
    cur = "x"
    for b in range(n_blocks):
        outs = []
        for j in range(width):
            t1 = f"b{b}_{j}_a"
            t2 = f"b{b}_{j}_b"
            nodes.append(helper.make_node("Relu", [cur], [t1], name=f"/enc/block.{b}/branch.{j}/Relu"))
            nodes.append(helper.make_node("Neg", [t1], [t2], name=f"/enc/block.{b}/branch.{j}/Neg"))
            outs.append(t2)
        acc = cur
        for j, o in enumerate(outs):
            nxt = f"b{b}_sum{j}"
            nodes.append(helper.make_node("Add", [acc, o], [nxt], name=f"/enc/block.{b}/Add_{j}"))
            acc = nxt
        cur = acc
    nodes.append(helper.make_node("Identity", [cur], ["y"], name="/head/Identity"))
    g = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(g)


def test_large_graph_layout_valid_and_scales():
    small, big = _synthetic(10), _synthetic(40)  # ~180 and ~720 nodes
    times = []
    for proto in (small, big):
        spec = GraphSpec.from_proto(proto)
        t0 = time.perf_counter()
        display, lay = layout_model(spec, set())
        times.append(time.perf_counter() - t0)
        _check_layout(display, lay)
    # near-linear: 4x the nodes must not cost anything like 16x (quadratic) time
    assert times[1] / max(times[0], 1e-4) < 12


def test_fold_expand_collapse_roundtrip():
    spec = GraphSpec.from_proto(_synthetic(12))
    full = fold(spec, set())
    folded_set = default_collapsed(spec, max_visible=40)
    folded = fold(spec, folded_set)
    assert len(folded.nodes) <= 40 < len(full.nodes)
    assert folded_set == {("enc", f"block.{b}") for b in range(12)}
    # every spec node is represented exactly once
    members = sorted(m for d in folded.nodes for m in d.members)
    assert members == sorted(n.name for n in spec.nodes)
    assert all(a != b for a, b in folded.edges)
    _check_layout(folded, layout(folded))
    # open one block: it is big (30 nodes > max_children=10), so its branches stay folded
    opened = expand_group(spec, folded_set, ("enc", "block.3"), max_children=10)
    assert ("enc", "block.3") not in opened and ("enc", "block.3", "branch.0") in opened
    g_open = fold(spec, opened)
    assert len(g_open.nodes) == len(folded.nodes) - 1 + 6 + 6  # 6 branch boxes + 6 Adds
    assert collapse_group(opened, ("enc", "block.3")) == folded_set


def test_fold_that_creates_a_cycle_still_lays_out():
    # /g/A -> /B -> /g/C : folding g gives g -> B -> g
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="/g/A"),
        helper.make_node("Neg", ["a"], ["b"], name="/B"),
        helper.make_node("Relu", ["b"], ["y"], name="/g/C"),
    ]
    g = helper.make_graph(
        nodes, "cyc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    spec = GraphSpec.from_proto(helper.make_model(g))
    display = fold(spec, {("g",)})
    assert len(display.nodes) == 4  # input, g, B, output
    lay = layout(display)
    _check_layout(display, lay)


def test_crossing_count_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        pairs = [(rng.randrange(8), rng.randrange(8)) for _ in range(rng.randrange(1, 25))]
        brute = sum(1 for (a, b), (c, d) in itertools.combinations(pairs, 2) if (a - c) * (b - d) < 0)
        assert _count_crossings([], pairs) == brute


def test_ordering_removes_avoidable_crossings():
    # two parallel chains whose second layer is listed crosswise: sweeps must untangle them
    def node(i, w=40.0):
        return DisplayNode(str(i), "Op", "", "op", [str(i)], None, (), width=w)

    display = DisplayGraph([node(i) for i in range(6)], [(0, 3), (1, 2), (3, 5), (2, 4)], {})
    lay = layout(display)
    assert lay.crossings == 0
    _check_layout(display, lay)


def test_isotonic_keeps_order_and_gaps():
    rng = random.Random(1)
    for _ in range(30):
        n = rng.randrange(1, 12)
        desired = [rng.uniform(-50, 50) for _ in range(n)]
        sep = [rng.uniform(1, 20) for _ in range(n - 1)]
        x = _isotonic(desired, sep)
        assert all(x[i + 1] - x[i] >= sep[i] - 1e-9 for i in range(n - 1))
        # feasible targets are met exactly
        ok = sorted(desired)
        ok = [ok[0] + sum(sep[:i]) * 2 + i for i in range(n)]
        assert _isotonic(ok, sep) == pytest.approx(ok)


def test_layout_module_is_qt_free():
    code = "import sys, studio.gui.views.graph_layout; print('PySide6' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.nlp
def test_minilm_layout_under_two_seconds(minilm_paths):
    proto = onnx.load(str(minilm_paths[0]), load_external_data=False)
    spec = GraphSpec.from_proto(proto)
    t0 = time.perf_counter()
    display, lay = layout_model(spec, set())  # everything expanded: the worst case
    dt = time.perf_counter() - t0
    _check_layout(display, lay)
    assert len(display.nodes) > 300
    assert dt < 2.0
    folded = default_collapsed(spec)
    assert ("encoder", "layer.0") in folded
    assert len(fold(spec, folded).nodes) < len(display.nodes) / 3
