"""Graph view, inspector and Netron tab on the real digits model (and MiniLM when available)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.gui
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

# QtWebEngine must be imported before the QApplication exists
from PySide6.QtCore import QPoint, Qt  # noqa: E402

from studio.core.graph import analyze  # noqa: E402
from studio.core.model import load_model  # noqa: E402
from studio.core.onnx_utils import tensor_array  # noqa: E402
from studio.core.recipe import LayerPlan  # noqa: E402
from studio.gui.views import netron_view  # noqa: E402
from studio.gui.views.graph_view import GraphView  # noqa: E402
from studio.gui.views.inspector import InspectorView  # noqa: E402

WEIGHTED = ["/conv1/conv1.0/Conv", "/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv", "/fc1/Gemm", "/fc2/Gemm"]


@pytest.fixture(scope="module")
def digits(digits_onnx):
    proto = load_model(digits_onnx).proto
    return proto, analyze(proto)


@pytest.fixture
def graph_view(qtbot, digits):
    view = GraphView()
    view.resize(700, 900)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitExposed(view)
    with qtbot.waitSignal(view.layout_finished, timeout=10_000):
        view.set_model(*digits)
    return view


def _viewport_pos(view: GraphView, item) -> QPoint:
    canvas = view._canvas
    canvas.centerOn(item)
    return canvas.mapFromScene(item.scenePos())


def test_graph_view_places_every_node(graph_view, digits):
    proto, _ = digits
    items = graph_view.node_items()
    display = graph_view.display_graph
    assert len(items) == len(proto.graph.node) + 2  # + graph input and output boxes
    assert {m for d in display.nodes for m in d.members} >= {n.name for n in proto.graph.node}
    assert len(graph_view.edge_items()) == len(display.edges) == len(items) - 1  # a chain
    by_row: dict[float, list] = {}
    for it in items:
        by_row.setdefault(round(it.scenePos().y(), 3), []).append(it.sceneBoundingRect())
    for rects in by_row.values():
        for i, a in enumerate(rects):
            for b in rects[i + 1 :]:
                assert not a.intersects(b)
    # every weighted layer is a clickable layer box
    assert {d.layer_name for d in display.nodes if d.layer_name} == set(WEIGHTED)


def test_click_emits_layer_selected_and_select_layer_highlights(qtbot, graph_view):
    fc1 = graph_view.item_for_layer("/fc1/Gemm")
    with qtbot.waitSignal(graph_view.layer_selected, timeout=2000) as sig:
        qtbot.mouseClick(graph_view._canvas.viewport(), Qt.LeftButton, pos=_viewport_pos(graph_view, fc1))
    assert sig.args == ["/fc1/Gemm"]
    assert fc1.selected
    # an op without weights is not a layer: no signal
    relu = graph_view.item_for_layer("/relu/Relu")
    with qtbot.assertNotEmitted(graph_view.layer_selected, wait=100):
        qtbot.mouseClick(graph_view._canvas.viewport(), Qt.LeftButton, pos=_viewport_pos(graph_view, relu))
    # programmatic selection highlights exactly one box and does not echo the signal back
    graph_view._canvas.scale(3, 3)  # zoomed in, so centring has room to scroll
    graph_view._canvas.centerOn(fc1)
    with qtbot.assertNotEmitted(graph_view.layer_selected, wait=100):
        graph_view.select_layer("/conv2/conv2.0/Conv")
    selected = [it for it in graph_view.node_items() if it.selected]
    assert selected == [graph_view.item_for_layer("/conv2/conv2.0/Conv")]
    centre = graph_view._canvas.mapToScene(graph_view._canvas.viewport().rect().center())
    assert (
        abs(centre.y() - selected[0].scenePos().y()) < 5 and abs(centre.x() - selected[0].scenePos().x()) < 5
    )


def test_fold_and_double_click_expand_change_visible_nodes(qtbot, graph_view):
    n_full = len(graph_view.node_items())
    with qtbot.waitSignal(graph_view.layout_finished, timeout=10_000):
        graph_view.toggle_group(("conv1",))  # conv1.0/Conv + conv1.2/Relu -> one box
    assert len(graph_view.node_items()) == n_full - 1
    box = graph_view.item_for_layer("/conv1/conv1.0/Conv")
    assert box.kind == "group"
    # selecting a layer inside a folded group highlights the group box
    graph_view.select_layer("/conv1/conv1.0/Conv")
    assert box.selected
    with qtbot.waitSignal(graph_view.layout_finished, timeout=10_000):
        qtbot.mouseDClick(graph_view._canvas.viewport(), Qt.LeftButton, pos=_viewport_pos(graph_view, box))
    assert len(graph_view.node_items()) == n_full
    assert graph_view.collapsed_groups == set()
    assert graph_view.item_for_layer("/conv1/conv1.0/Conv").selected  # selection survives relayout


def test_colour_by_metric(graph_view, digits):
    _, analysis = digits
    assert all(it.fill is None for it in graph_view.node_items())
    graph_view._combo.setCurrentText("params")
    biggest = max(analysis.layers, key=lambda la: la.params).name
    smallest = min(analysis.layers, key=lambda la: la.params).name
    top = graph_view._cmap.map(np.array([1.0]), mode="qcolor")[0]
    assert graph_view.node_fill(biggest).name() == top.name()
    assert graph_view.node_fill(biggest) != graph_view.node_fill(smallest)
    assert graph_view.node_fill("/relu/Relu") is None  # not a layer: stays uncoloured
    assert graph_view._colorbar.isVisible() and graph_view._colorbar.label == "params"
    # an external metric gets its own combo entry and colour bar
    sens = {name: float(i) for i, name in enumerate(WEIGHTED)}
    graph_view.set_node_colors(sens, "sensitivity (Δ acc)")
    assert graph_view._combo.currentText() == "sensitivity (Δ acc)"
    assert graph_view._colorbar.label == "sensitivity (Δ acc)"
    assert graph_view.node_fill(WEIGHTED[-1]).name() == top.name()
    graph_view._combo.setCurrentText("colour: none")
    assert graph_view.node_fill(WEIGHTED[-1]) is None and not graph_view._colorbar.isVisible()


@pytest.mark.nlp
def test_minilm_graph_folds_and_lays_out_fast(qtbot, minilm_paths):
    proto = onnx.load(str(minilm_paths[0]))
    analysis = analyze(proto, with_stats=False)
    view = GraphView()
    qtbot.addWidget(view)
    t0 = time.perf_counter()
    with qtbot.waitSignal(view.layout_finished, timeout=10_000):
        view.set_model(proto, analysis)
    folded_s = time.perf_counter() - t0
    assert ("encoder", "layer.0") in view.collapsed_groups
    n_folded = len(view.node_items())
    t0 = time.perf_counter()
    with qtbot.waitSignal(view.layout_finished, timeout=10_000):
        view._relayout(set())  # "Expand all": every node
    full_s = time.perf_counter() - t0
    assert len(view.node_items()) > 2 * n_folded
    assert folded_s < 2.0 and full_s < 2.0
    # every layer is reachable: select_layer finds a box for each
    for la in analysis.layers[:20]:
        assert view.item_for_layer(la.name) is not None


# ------------------------------------------------------------------ inspector


def _weight(proto, layer):
    return tensor_array(next(t for t in proto.graph.initializer if t.name == layer.weight_name))


def test_inspector_conv_plan_marks_rank_and_pruned_channels(qtbot, digits):
    proto, analysis = digits
    layer = analysis.by_name()["/conv2/conv2.0/Conv"]
    plan = LayerPlan.model_validate(
        {"decompose": {"tucker": {"rank_ratio": 0.25}}, "prune": {"channels": {"ratio": 0.4}}}
    )
    view = InspectorView()
    qtbot.addWidget(view)
    view.show_layer(layer, proto, plan)
    w = _weight(proto, layer)  # [32, 16, 3, 3]
    l1 = np.abs(w.reshape(w.shape[0], -1)).sum(axis=1)
    expected_k = round(0.4 * w.shape[0])
    assert len(view.pruned) == expected_k == 13
    assert set(view.pruned) == set(np.argsort(l1)[:expected_k])
    assert len(view.l1_pruned_item.opts["height"]) == expected_k
    assert len(view.l1_kept_item.opts["height"]) == w.shape[0] - expected_k
    assert max(view.l1_pruned_item.opts["height"]) <= min(view.l1_kept_item.opts["height"])
    # histogram: every weight counted once
    _, counts = view.hist_item.getData()
    assert counts.sum() == w.size
    # spectrum of the [Cout, Cin*k*k] matrix, rank = ceil(0.25 * 32)
    sv_x, sv_y = view.sv_item.getData()
    s = np.linalg.svd(w.reshape(32, -1).astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(sv_y, s / s[0], rtol=1e-6)
    assert view.chosen_rank == math.ceil(0.25 * 32)
    assert view.rank_line.isVisible() and view.rank_line.value() == view.chosen_rank
    _, energy = view.energy_item.getData()
    assert energy[-1] == pytest.approx(1.0)


def test_inspector_big_svd_runs_in_background(qtbot, digits):
    proto, analysis = digits
    layer = analysis.by_name()["/fc1/Gemm"]  # 256 x 1024: over the inline limit
    plan = LayerPlan.model_validate({"decompose": {"svd": {"energy": 0.9}}})
    view = InspectorView()
    qtbot.addWidget(view)
    with qtbot.waitSignal(view.spectrum_ready, timeout=20_000):
        view.show_layer(layer, proto, plan)
        assert view.is_computing() and view.chosen_rank is None  # show_layer returned first
    s = np.linalg.svd(_weight(proto, layer).astype(np.float64), compute_uv=False)
    cum = np.cumsum(s**2) / np.sum(s**2)
    assert view.chosen_rank == int(np.argmax(cum >= 0.9)) + 1
    assert len(view.pruned) == 0  # no prune step planned
    # cached: showing it again is immediate
    view.show_layer(layer, proto, None)
    assert not view.is_computing() and view.chosen_rank is None and not view.rank_line.isVisible()
    view.show_layer(None, None, None)
    assert view.layer is None and len(view.sv_item.getData()[0] or []) == 0


# ------------------------------------------------------------------ netron


def _js(qtbot, view, code):
    out = {}
    view.run_js(code, lambda v: out.update(v=v))
    qtbot.waitUntil(lambda: "v" in out, timeout=5000)
    return out["v"]


@pytest.fixture
def netron(qtbot):
    view = netron_view.NetronView()
    qtbot.addWidget(view)
    if not view.available:
        assert view.message_label.text() == netron_view.NO_WEBENGINE_TEXT
        pytest.skip("QtWebEngine not installed")
    view.resize(900, 700)
    view.show()
    yield view
    view.shutdown()


def test_netron_serves_digits_on_loopback_only(qtbot, netron, digits_onnx):
    import netron as netron_pkg

    netron.show_model(Path(digits_onnx))
    assert netron.url.startswith("http://127.0.0.1:")
    assert netron.address[0] == "127.0.0.1" and netron_pkg.status(netron.address)
    temp = netron.temp_dir
    assert sorted(p.name for p in temp.iterdir()) == [Path(digits_onnx).name]
    qtbot.waitUntil(lambda: netron.loaded is not None, timeout=30_000)
    assert netron.loaded
    # Netron parses and draws the model after the page load: wait for its node boxes
    state = {}

    def rendered():
        state.update(json.loads(_js(qtbot, netron, (
            "JSON.stringify({cls: document.body.className, nodes: document.querySelectorAll('.node').length,"
            " cookie: document.cookie})"
        ))))  # fmt: skip
        return state["nodes"] >= 11

    qtbot.waitUntil(rendered, timeout=30_000)
    assert "message" not in state["cls"].split()  # no consent banner
    assert "consent=" in state["cookie"]
    address = netron.address
    netron.shutdown()  # also deletes the page: no request can arrive after this
    assert not temp.exists()
    seen, blocked = netron.seen_requests, netron.blocked_requests
    assert any(u.startswith(netron.url) for u in seen)
    outside = [u for u in seen if not netron_view.is_loopback_url(u)]
    assert outside == blocked  # everything that would leave the machine was blocked
    qtbot.waitUntil(lambda: not netron_pkg.status(address), timeout=3000)  # server polls every 0.25 s


def test_netron_copies_external_data_but_nothing_else(qtbot, netron, digits_onnx, tmp_path):
    proto = onnx.load(str(digits_onnx))
    model = tmp_path / "m.onnx"
    onnx.save_model(proto, str(model), save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "secret.txt").write_text("not for netron")
    netron.show_model(model)
    assert sorted(p.name for p in netron.temp_dir.iterdir()) == ["m.data", "m.onnx"]
    first = netron.temp_dir
    netron.show_model(Path(digits_onnx))  # a new model gets a fresh folder; the old one goes
    assert netron.temp_dir != first and not first.exists()


def test_is_loopback_url():
    ok = [
        "http://127.0.0.1:8080/x",
        "http://localhost/",
        "http://[::1]:9/",
        "data:text/plain,hi",
        "blob:http://127.0.0.1/1",
    ]
    bad = [
        "https://ipinfo.io/json",
        "https://analytics.google.com/g/collect",
        "http://10.0.0.1/",
        "file://host/x",
    ]
    assert all(netron_view.is_loopback_url(u) for u in ok)
    assert not any(netron_view.is_loopback_url(u) for u in bad)


def test_netron_without_webengine_shows_a_label(qtbot, monkeypatch, digits_onnx):
    monkeypatch.setattr(netron_view, "HAVE_WEBENGINE", False)
    view = netron_view.NetronView()
    qtbot.addWidget(view)
    assert not view.available
    assert view.message_label.text() == "Netron view needs QtWebEngine (PySide6-Addons)"
    view.show_model(Path(digits_onnx))  # a no-op, not a crash
    assert view.temp_dir is None and view.url is None
    view.shutdown()
