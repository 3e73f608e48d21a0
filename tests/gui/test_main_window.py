"""Main window on the real digits model: table edits + estimates, undo/redo, Apply & measure,
trade-off plot click, cancel, drag-and-drop and error dialogs. Real ORT runs, small samples."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox  # noqa: E402

from studio.core.recipe import LayerPlan, Recipe, Step  # noqa: E402
from studio.gui.models.layer_table import EST_SIZE, PRECISION_COL, PRUNE, RANK  # noqa: E402

FC1, FC2, CONV3 = "/fc1/Gemm", "/fc2/Gemm", "/conv3/conv3.0/Conv"


@pytest.fixture
def opened(window, digits_onnx):
    assert window.open_path(digits_onnx, wait=True)
    return window


def _est_size(w, name):
    return w.layer_model.index_of(name, EST_SIZE).data(Qt.ItemDataRole.DisplayRole)


def _measure(qtbot, w, timeout=40_000):
    job = w.apply_and_measure()
    assert job is not None
    qtbot.waitUntil(lambda: job.done.is_set(), timeout=timeout)
    qtbot.waitUntil(lambda: job.state != "finished" or any(v.id == job.result.id for v in w.session.variants))
    return job


def test_open_shows_layers_and_totals(opened):
    m = opened.layer_model
    names = {m.index(r, 0).data(Qt.ItemDataRole.ToolTipRole) for r in range(m.rowCount())}
    assert names == {la.name for la in opened.session.analysis.layers}
    assert "params" in opened.totals_label.text() and "est." not in opened.totals_label.text()
    assert opened.recent_files()[0].endswith("digits_cnn.onnx")


def test_plan_edits_estimates_undo_redo_and_merge(opened):
    w, m = opened, opened.layer_model
    before_fc1, before_conv3 = _est_size(w, FC1), _est_size(w, CONV3)
    assert m.setData(m.index_of(FC1, PRUNE), 0.5)
    assert m.setData(m.index_of(CONV3, PRECISION_COL), "int8 static")
    assert w.session.recipe.layers[FC1].prune == Step(technique="channels", params={"ratio": 0.5})
    assert w.session.recipe.layers[CONV3].quantize.technique == "int8_static"
    assert _est_size(w, FC1) != before_fc1 and _est_size(w, CONV3) != before_conv3
    est = m.index_of(FC1, EST_SIZE)
    assert est.data(Qt.ItemDataRole.FontRole).italic()
    assert "estimated by formula" in est.data(Qt.ItemDataRole.ToolTipRole)
    assert "est." in w.totals_label.text()
    assert w.undo_stack.count() == 2

    w.undo_stack.undo()
    assert CONV3 not in w.session.recipe.layers and _est_size(w, CONV3) == before_conv3
    w.undo_stack.redo()
    assert w.session.recipe.layers[CONV3].quantize.technique == "int8_static"

    # Repeated edits of one cell (a spin box drag) merge into one undo step.
    n = w.undo_stack.count()
    for r in (0.3, 0.4, 0.6):
        m.setData(m.index_of(FC1, PRUNE), r)
    assert w.undo_stack.count() == n + 1
    assert w.session.recipe.layers[FC1].prune.params["ratio"] == 0.6
    w.undo_stack.undo()
    assert w.session.recipe.layers[FC1].prune.params["ratio"] == 0.5
    # Clearing a cell removes the stage; the layer drops out of the recipe entirely.
    m.setData(m.index_of(FC1, PRUNE), None)
    assert FC1 not in w.session.recipe.layers


def test_delegate_editor_applies_to_all_selected_rows(opened, qtbot):
    w = opened
    view, proxy, m = w.table.view, w.table.proxy, w.layer_model
    sel = view.selectionModel()
    from PySide6.QtCore import QItemSelectionModel

    for name in (FC1, CONV3):
        sel.select(
            proxy.mapFromSource(m.index_of(name)),
            QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows,
        )
    idx = proxy.mapFromSource(m.index_of(FC1, PRUNE))
    view.edit(idx)
    editor = view.indexWidget(idx)
    assert isinstance(editor, QDoubleSpinBox)
    editor.setValue(25)  # percent; commits live
    assert w.session.recipe.layers[FC1].prune.params["ratio"] == 0.25
    assert w.session.recipe.layers[CONV3].prune.params["ratio"] == 0.25
    assert w.undo_stack.count() == 1
    w.table.plan_delegate.closeEditor.emit(editor)
    w.undo_stack.undo()
    assert not w.session.recipe.layers

    # The precision editor lists only what a Conv layer can take; the reason is the tooltip.
    cidx = proxy.mapFromSource(m.index_of(CONV3, PRECISION_COL))
    view.setCurrentIndex(cidx)
    view.edit(cidx)
    combo = view.indexWidget(cidx)
    assert isinstance(combo, QComboBox)
    item = combo.model().item(combo.findText("int8 dynamic"))
    assert not item.isEnabled() and "Conv" in item.toolTip()
    assert combo.model().item(combo.findText("int8 static")).isEnabled()


def test_unsupported_cell_is_greyed_with_reason(opened):
    w, m = opened, opened.layer_model
    # Channel pruning of the output layer would remove classes: the graph check greys it.
    fc2 = m.index_of(FC2, PRUNE)
    assert not (m.flags(fc2) & Qt.ItemFlag.ItemIsEditable)
    assert "output layer: pruning its neurons would remove model outputs" in fc2.data(
        Qt.ItemDataRole.ToolTipRole
    )
    assert fc2.data(Qt.ItemDataRole.BackgroundRole) is not None
    assert not m.edit_layers([FC2], PRUNE, 0.5) and FC2 not in w.session.recipe.layers
    assert m.flags(m.index_of(FC1, PRUNE)) & Qt.ItemFlag.ItemIsEditable
    # A default SVD step reaches Conv layers too: their Rank cell shows why it does not apply.
    m.set_recipe(Recipe(defaults=LayerPlan(decompose=Step(technique="svd", params={"rank_ratio": 0.5}))))
    conv = m.index_of(CONV3, RANK)
    assert not (m.flags(conv) & Qt.ItemFlag.ItemIsEditable)
    assert "SVD handles Gemm and MatMul" in conv.data(Qt.ItemDataRole.ToolTipRole)
    assert conv.data(Qt.ItemDataRole.ForegroundRole) is not None
    assert m.flags(m.index_of(FC1, RANK)) & Qt.ItemFlag.ItemIsEditable
    # Estimates only count the layers the step applies to.
    assert _est_size(w, CONV3) == m.index_of(CONV3, 5).data()
    assert _est_size(w, FC1) != m.index_of(FC1, 5).data()


def test_apply_measure_plot_click_restores_recipe(opened, qtbot, tmp_path):
    w, m = opened, opened.layer_model
    m.setData(m.index_of(FC1, PRUNE), 0.5)
    m.setData(m.index_of(CONV3, PRECISION_COL), "int8 static")
    measured_recipe = w.session.recipe
    job = _measure(qtbot, w)
    assert job.state == "finished", job.error
    entry = w.session.variant(job.result.id)
    assert entry.onnx_path.exists() and entry.onnx_path.parent == tmp_path / "work" / "variants"
    q = entry.quality()
    assert q.name == "top1" and q.kind == "measured" and q.n_samples == 120
    size = entry.size()
    orig_size = w.session.original().size()
    assert size.kind == "measured" and size.value < orig_size.value
    assert entry.latency().kind == "measured"
    pts = {p[0]: p for p in w.plot.points()}
    assert pts[entry.id][3] == "measured"

    # Change the plan, then click the point: its recipe comes back through the undo stack.
    m.clear_layers([FC1, CONV3])
    assert not w.session.recipe.layers
    item, spot = w.plot.spot(entry.id)
    assert spot is not None
    with qtbot.waitSignal(w.plot.variant_clicked, timeout=2000):
        w.plot._on_points_clicked(item, [spot])
    assert w.session.recipe == measured_recipe
    assert m.index_of(FC1, PRUNE).data() == "channels 50%"
    w.undo_stack.undo()
    assert not w.session.recipe.layers
    w.undo_stack.redo()
    assert w.session.recipe == measured_recipe


def test_cancel_running_job_leaves_no_files(opened, qtbot, tmp_path):
    w = opened
    w.layer_model.setData(w.layer_model.index_of(FC1, PRUNE), 0.5)
    w.session.settings.bench_runs = 1_000_000  # long enough to cancel mid-benchmark
    before = list(w.session.variants)
    job = w.apply_and_measure()
    qtbot.waitUntil(lambda: job.fraction > 0.72, timeout=30_000)
    button = w.jobs_panel.button_for(job)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: job.done.is_set(), timeout=10_000)
    assert job.state == "cancelled"
    qtbot.waitUntil(lambda: not button.isEnabled())
    assert w.session.variants == before
    vdir = tmp_path / "work" / "variants"
    assert not vdir.exists() or list(vdir.iterdir()) == []


def test_closing_window_cancels_job(qtbot, tmp_path, error_dialogs, digits_onnx):
    from studio.gui.main_window import MainWindow

    w = MainWindow(work_dir=tmp_path / "w2", auto_measure=False)
    qtbot.addWidget(w)
    assert w.open_path(digits_onnx, wait=True)
    w.session.settings.bench_runs = 1_000_000
    w.session.settings.eval_samples = 64
    job = w.apply_and_measure()
    qtbot.waitUntil(lambda: job.state == "running", timeout=10_000)
    w.close()
    assert job.done.is_set() and job.state == "cancelled"
    assert w.jobs.pool.activeThreadCount() == 0
    assert not any((tmp_path / "w2").rglob("*.onnx*"))


def test_job_failure_shows_error_dialog_and_window_survives(opened, qtbot, error_dialogs):
    w = opened
    w.session.settings.bench_runs = 0  # the benchmark refuses this inside the worker
    job = w.apply_and_measure()
    qtbot.waitUntil(lambda: job.done.is_set(), timeout=30_000)
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    assert job.state == "failed"
    assert "repeats must be >= 1" in error_dialogs[0].text()
    assert error_dialogs[0].detailedText()  # the traceback is one click away
    assert w.isVisible() and w.session.handle is not None


def _drop(w, path: Path):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    ev = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)  # fmt: skip
    w.dropEvent(ev)


def test_drop_non_model_file_and_corrupt_model(opened, qtbot, tmp_path, error_dialogs, digits_onnx):
    w = opened
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _drop(w, txt)
    assert "not a model file" in w.last_message and "notes.txt" in w.last_message
    assert w.session.handle.source_path == Path(digits_onnx) and not error_dialogs

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(Path(digits_onnx).read_bytes()[:500])
    with qtbot.waitSignal(w.model_opened, timeout=20_000) as sig:
        _drop(w, bad)  # models load on a worker; the error dialog comes when it fails
    assert sig.args == [False]
    assert len(error_dialogs) == 1
    assert "broken.onnx" in error_dialogs[0].text() and "not a valid ONNX" in error_dialogs[0].text()
    assert w.session.handle.source_path == Path(digits_onnx)  # the open model stays
    assert w.layer_model.rowCount() == 5


def test_layout_persisted_in_temp_settings(qtbot, tmp_path, isolated_settings, error_dialogs):
    from studio.gui.main_window import MainWindow

    w = MainWindow(work_dir=tmp_path / "w3", auto_measure=False)
    qtbot.addWidget(w)
    w.show()
    w.plot_dock.hide()
    w.close()
    files = list(Path(isolated_settings).rglob("*.ini"))
    assert files and "ParetoStudio" in str(files[0])
    w2 = MainWindow(work_dir=tmp_path / "w4", auto_measure=False)
    qtbot.addWidget(w2)
    w2.show()
    assert not w2.plot_dock.isVisible() and w2.inspector_dock.isVisible()
    w2.reset_layout()
    assert w2.plot_dock.isVisible()
    w2.close()
