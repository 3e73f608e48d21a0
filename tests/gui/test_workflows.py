"""End-to-end GUI workflows on the real digits model: history tree (branch, rename, note, delete),
workspace save → reopen round trip, source-changed banner, diff view + graph colouring, report,
export dialog, Netron tab through the window, sensitivity heatmap, auto-compress candidates and
distillation fine-tune. Real ORT runs on small samples; no engine mocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from studio.gui.models.layer_table import NAME, PRECISION_COL, PRUNE  # noqa: E402

FC1, FC2, CONV3 = "/fc1/Gemm", "/fc2/Gemm", "/conv3/conv3.0/Conv"
ASSETS = Path(__file__).resolve().parents[2] / "assets"


@pytest.fixture
def digits_copy(tmp_path, digits_onnx):
    """The demo model + its data in a private folder (a test may change the model on disk)."""
    d = tmp_path / "model"
    d.mkdir()
    for f in (Path(digits_onnx), ASSETS / "digits_eval.npz", ASSETS / "digits_calib.npz"):
        shutil.copy(f, d / f.name)
    return d / Path(digits_onnx).name


def _measure(qtbot, w, timeout=60_000):
    job = w.apply_and_measure()
    assert job is not None
    qtbot.waitUntil(lambda: job.done.is_set(), timeout=timeout)
    assert job.state == "finished", job.error
    qtbot.waitUntil(lambda: any(v.label == job.result.label for v in w.session.variants))
    return w.session.variants[-1]


def _wait_job(qtbot, job, timeout=60_000):
    assert job is not None
    qtbot.waitUntil(lambda: job.done.is_set(), timeout=timeout)
    assert job.state == "finished", job.error
    qtbot.wait(50)  # deliver the queued finished signal


def test_history_branch_rename_delete_and_workspace_roundtrip(
    qtbot, window, tmp_path, digits_copy, monkeypatch
):
    w, m = window, window.layer_model
    assert w.open_path(digits_copy, wait=True)
    ws_path = tmp_path / "project.studio"
    assert w.save_workspace(ws_path)
    m.setData(m.index_of(FC1, PRUNE), 0.5)
    v1 = _measure(qtbot, w)
    assert v1.parent is None and w.workspace.variant(v1.id).name == v1.label  # the workspace's id

    # Branch from v1 through the History dock: its recipe comes back (undoable) and the next
    # variant becomes its child.
    m.clear_layers([FC1])
    w.history.select(v1.id)
    qtbot.mouseClick(w.history.btn_branch, Qt.MouseButton.LeftButton)
    assert w.session.recipe == v1.recipe and w.branch_parent == v1.id
    m.setData(m.index_of(CONV3, PRECISION_COL), "int8 static")
    v2 = _measure(qtbot, w)
    assert v2.parent == v1.id
    assert w.history.item_for(v2.id).parent() is w.history.item_for(v1.id)
    assert w.workspace.variant(v2.id).parent_id == v1.id

    # Rename in place (edit the tree item) and annotate.
    w.history.item_for(v2.id).setText(0, "int8 branch")
    assert (
        w.session.variant(v2.id).label == "int8 branch" and w.workspace.variant(v2.id).name == "int8 branch"
    )
    w.history.note_requested.emit(v1.id, "fc1 half")
    assert w.workspace.variant(v1.id).note == "fc1 half"
    assert w.history.item_for(v1.id).text(3) == "fc1 half"

    w._on_layer_selected(FC1)
    recipe_at_close = w.session.recipe
    w.close()  # flushes the autosave (recipe + selection) and releases the workspace

    from studio.gui.main_window import MainWindow

    w2 = MainWindow(work_dir=tmp_path / "work2", auto_measure=False)
    qtbot.addWidget(w2)
    w2.show()
    assert w2.open_path(ws_path)
    assert w2.session.recipe == recipe_at_close
    assert w2.layer_model.index_of(FC1, PRUNE).data() == "channels 50%"
    assert {p[0] for p in w2.plot.points()} >= {v1.id, v2.id}
    assert w2.current_layer == FC1 and w2.branch_parent == v1.id
    assert w2.table.view.currentIndex().siblingAtColumn(NAME).data(Qt.ItemDataRole.ToolTipRole) == FC1
    assert w2.history.item_for(v2.id).parent() is w2.history.item_for(v1.id)
    assert w2.history.item_for(v2.id).text(0) == "int8 branch"
    assert not w2.banner.isVisible()

    # Delete v1 (confirmed): its file goes, v2 moves up to the original.
    v1_file = w2.session.variant(v1.id).onnx_path
    assert v1_file.exists()
    monkeypatch.setattr(QMessageBox, "exec", lambda self: QMessageBox.StandardButton.Yes)
    w2.history.select(v1.id)
    assert w2.history.confirm_delete()
    assert w2.session.variant(v1.id) is None and not v1_file.exists()
    assert w2.session.variant(v2.id).parent is None
    assert [v.id for v in w2.workspace.variants()] == [v2.id]
    assert w2.history.item_for(v2.id).parent() is w2.history.item_for("original")
    monkeypatch.setattr(QMessageBox, "exec", lambda self: QMessageBox.StandardButton.No)
    w2.history.select(v2.id)
    assert not w2.history.confirm_delete() and w2.session.variant(v2.id) is not None
    w2.close()

    # The source model changes on disk: reopening says so in the banner.
    import onnx

    proto = onnx.load(str(digits_copy))
    proto.doc_string = "edited"
    onnx.save(proto, str(digits_copy))
    w3 = MainWindow(work_dir=tmp_path / "work3", auto_measure=False)
    qtbot.addWidget(w3)
    w3.show()
    assert w3.open_workspace(ws_path)
    assert w3.banner.isVisible() and "changed on disk" in w3.banner_label.text()
    w3.close()


def test_diff_graph_colouring_report_and_export(qtbot, window, digits_onnx, tmp_path):
    w, m = window, window.layer_model
    assert w.open_path(digits_onnx, wait=True)
    m.setData(m.index_of(FC1, PRUNE), 0.5)
    m.setData(m.index_of(CONV3, PRECISION_COL), "int8 static")
    v = _measure(qtbot, w)

    w.diff_view.choose("original", v.id)
    qtbot.mouseClick(w.diff_view.compare, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.diff_view.diff is not None, timeout=30_000)
    rows = {w.diff_view.table.item(r, 0).text(): r for r in range(w.diff_view.table.rowCount())}
    assert {FC1, CONV3} <= set(rows)
    assert "pruned 128 of 256" in w.diff_view.table.item(rows[FC1], 5).text()
    assert "int8" in w.diff_view.table.item(rows[CONV3], 4).text()
    w.diff_view.color_btn.click()
    assert w.graph.current_coloring().startswith("diff")
    qtbot.waitUntil(lambda: w.graph.node_fill(FC1) is not None, timeout=20_000)
    assert w.graph.node_fill(FC1) != w.graph.node_fill(FC2)  # halved vs unchanged
    # A later plan edit does not take the diff colouring away.
    m.setData(m.index_of(FC1, PRUNE), 0.25)
    w._recolor_graph()
    assert w.graph.current_coloring().startswith("diff")

    job = w.write_report(tmp_path / "report")
    _wait_job(qtbot, job)
    html = (tmp_path / "report" / "report.html").read_text()
    assert v.label in html and (tmp_path / "report" / "report.md").exists()

    dlg = w.export_dialog()
    dlg.folder.setText(str(tmp_path / "export"))
    ejob = dlg.start_export()
    _wait_job(qtbot, ejob)
    qtbot.waitUntil(lambda: dlg.result is not None)
    assert "verification: OK" in dlg.summary.toPlainText()
    assert dlg.result.onnx_path.exists() and dlg.result.onnx_path.parent == tmp_path / "export"
    dlg.close()


def test_netron_tab_through_window_is_loopback_only(qtbot, window, digits_onnx):
    from studio.gui.views import netron_view

    w = window
    assert w.open_path(digits_onnx, wait=True)
    w.tabs.setCurrentIndex(w.netron_tab)
    if w.netron is None or not w.netron.available:
        pytest.skip("QtWebEngine or netron not installed")
    nv = w.netron
    assert nv.url.startswith("http://127.0.0.1:")
    qtbot.waitUntil(lambda: nv.loaded is not None, timeout=30_000)
    assert nv.loaded
    state = {}

    def rendered():
        out = {}
        nv.run_js("document.querySelectorAll('.node').length", lambda v: out.setdefault("n", v))
        qtbot.waitUntil(lambda: "n" in out, timeout=5000)
        state["nodes"] = out["n"] or 0
        return state["nodes"] >= 11

    qtbot.waitUntil(rendered, timeout=30_000)
    nv.shutdown()  # no request can arrive after this
    seen = list(nv.seen_requests)
    assert any(u.startswith("http://127.0.0.1:") for u in seen)
    outside = [u for u in seen if not netron_view.is_loopback_url(u)]
    assert outside == list(nv.blocked_requests)  # every non-loopback request was blocked, none made


def test_sensitivity_heatmap_and_auto_compress_candidates(qtbot, window, digits_onnx):
    pytest.importorskip("studio.core.search")
    w, m = window, window.layer_model
    w.session.settings.sensitivity_settings = "channels:0.5 int8"
    w.session.settings.calib_samples = 48
    assert w.open_path(digits_onnx, wait=True)
    rows_seen = []
    job = w.analyze_sensitivity()
    job.signals.payload.connect(lambda p: rows_seen.append(p["layer"]))
    _wait_job(qtbot, job, timeout=90_000)
    hm = w.heatmap
    assert len(rows_seen) == 5 and w.sensitivity is not None  # rows arrived live, one per layer
    assert hm.table.rowCount() == 5 and "channels:0.5" in hm.keys
    c = hm.keys.index("channels:0.5")
    r = [hm.table.verticalHeaderItem(i).toolTip() for i in range(5)].index(FC2)
    assert hm.table.item(r, c).text() == "n/a"  # the output layer cannot be channel-pruned
    r1 = [hm.table.verticalHeaderItem(i).toolTip() for i in range(5)].index(FC1)
    assert hm.table.item(r1, c).data(Qt.ItemDataRole.UserRole) is not None
    # Table and graph are coloured by the measured drops.
    assert m.index_of(FC1).data(Qt.ItemDataRole.BackgroundRole) is not None
    assert "points (measured)" in m.index_of(FC1).data(Qt.ItemDataRole.ToolTipRole)
    assert w.graph.current_coloring().startswith("sensitivity")

    dlg = w.auto_compress_dialog()
    dlg.kind.setCurrentIndex(dlg.kind.findData("size"))
    dlg.ratio.setValue(2.0)
    dlg.max_evals.setValue(3)
    got = []
    qtbot.mouseClick(dlg.run_btn, Qt.MouseButton.LeftButton)
    w.auto_job.signals.payload.connect(lambda p: got.append(p.get("type")))
    _wait_job(qtbot, w.auto_job, timeout=90_000)
    assert "candidate" in got and dlg.list.topLevelItemCount() >= 1
    cands = [p for p in w.plot.points() if p[3] == "candidate"]
    assert cands, "candidates must appear on the trade-off plot"
    chosen = dlg.chosen()
    assert chosen is not None
    n = w.undo_stack.count()
    dlg.load_btn.click()
    assert w.undo_stack.count() == n + 1
    from studio.core.recipe import Recipe

    assert w.session.recipe == Recipe.model_validate(chosen["recipe"])
    w.undo_stack.undo()
    assert not w.session.recipe.layers
    dlg.close()


def test_distill_dialog_live_loss_curve(qtbot, window):
    pytest.importorskip("torch")
    pytest.importorskip("studio_distill.techniques")
    w = window
    assert not w.act_distill.isEnabled()
    pt = ASSETS / "digits_cnn.pt"
    assert w.open_model(pt, wait=True, factory="studio.demos.digits:build_model")
    assert w.act_distill.isEnabled()
    w.layer_model.setData(w.layer_model.index_of(FC1, PRUNE), 0.5)
    dlg = w.distill_dialog()
    dlg.steps.setValue(12)
    dlg.batch.setValue(32)
    dlg.run_btn.click()
    _wait_job(qtbot, w.distill_job, timeout=120_000)
    assert len(dlg.losses) >= 10 and all(x >= 0 for x in dlg.losses)
    v = w.session.variants[-1]
    assert v.recipe.defaults.finetune.technique == "distill" and v.quality() is not None
    assert json.dumps(dlg.params())  # plain data (goes into the recipe)
    dlg.close()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_interrupted_job_shows_in_jobs_panel_and_reruns_its_recipe(qtbot, window, tmp_path, digits_copy):
    import sqlite3

    from studio.core.model import load_model
    from studio.core.recipe import Recipe
    from studio.core.workspace import Workspace

    w = window
    ws_path = tmp_path / "crashed.studio"
    recipe = Recipe.loads(
        "name: before-crash\nlayers:\n  /fc1/Gemm:\n    prune: {technique: channels, params: {ratio: 0.5}}\n"
    )
    ws = Workspace.create(ws_path, load_model(digits_copy))
    jid = ws.start_job("measure", {"recipe": recipe, "label": "v7", "parent": None})
    ws.close()
    # What a kill -9 of the studio leaves behind: the row still "running", owned by a dead pid.
    con = sqlite3.connect(ws_path)
    with con:
        con.execute("UPDATE jobs SET status='running', pid=? WHERE id=?", (_dead_pid(), jid))
    con.close()

    assert w.open_path(ws_path)
    assert w.workspace.interrupted_jobs == [jid]
    assert w.banner.isVisible() and "re-run them from the jobs panel" in w.banner_label.text()
    btn = w.jobs_panel.rerun_button(jid)
    assert btn is not None and btn.isEnabled() and btn.text() == "Re-run"
    assert w.jobs_dock.isVisible()
    before = len(w.session.variants)
    with qtbot.waitSignal(w.variant_added, timeout=60_000) as sig:
        qtbot.mouseClick(btn, Qt.MouseButton.LeftButton)
    entry = sig.args[0]
    assert entry.recipe == recipe and len(w.session.variants) == before + 1
    assert not btn.isEnabled() and btn.text() == "Re-run started"
    assert w.workspace.variant(entry.id).recipe == recipe  # stored in the workspace
    qtbot.waitUntil(lambda: w.workspace.jobs()[-1].status == "finished")
    old, new = w.workspace.job(jid), w.workspace.jobs()[-1]
    assert old.status == "interrupted" and f"re-run as job {new.id}" in old.message
    assert new.variant_id == entry.id and new.params["recipe"] == recipe
