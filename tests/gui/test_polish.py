"""Layer-name column sizing and eliding, keyboard shortcuts (F5, Esc, Ctrl+F, Delete) and the
About dialog, on the real digits model."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

pytestmark = pytest.mark.gui
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QKeySequence  # noqa: E402
from PySide6.QtWidgets import QApplication, QHeaderView  # noqa: E402

from studio.gui.models.layer_table import NAME, PRECISION_COL, PRUNE  # noqa: E402

FC1, FC2 = "/fc1/Gemm", "/fc2/Gemm"


@pytest.fixture
def opened(window, digits_onnx):
    assert window.open_path(digits_onnx, wait=True)
    return window


def test_name_column_fits_longest_name_and_elides_in_the_middle(qtbot, opened):
    w, table = opened, opened.table
    view, h = table.view, table.view.header()
    assert view.textElideMode() == Qt.TextElideMode.ElideMiddle
    longest = max(view.fontMetrics().horizontalAdvance(la.name) for la in w.session.analysis.layers)
    want = table.name_width_wanted()
    assert min(longest, 320) <= want <= 320
    # Narrow window: Name keeps its width and the table scrolls sideways instead.
    w.resize(900, 700)
    qtbot.waitUntil(lambda: view.columnWidth(NAME) >= want)
    assert h.sectionResizeMode(NAME) == QHeaderView.ResizeMode.Interactive
    assert view.horizontalScrollBar().maximum() > 0
    # Wide window: Name takes the free space (more than it needs).
    w.inspector_dock.hide()
    w.plot_dock.hide()
    w.resize(2400, 800)
    qtbot.waitUntil(lambda: h.sectionResizeMode(NAME) == QHeaderView.ResizeMode.Stretch)
    qtbot.waitUntil(lambda: view.columnWidth(NAME) > want)


def test_menus_show_the_shortcuts(opened):
    w = opened
    assert (
        w.act_measure.shortcut() == QKeySequence("F5") and QKeySequence("Ctrl+M") in w.act_measure.shortcuts()
    )
    assert w.act_find.shortcut() == QKeySequence(QKeySequence.StandardKey.Find)
    assert w.act_clear.shortcut() == QKeySequence(QKeySequence.StandardKey.Delete)
    assert w.act_cancel_job.shortcut() == QKeySequence("Esc")
    menus = {a.text().replace("&", ""): a.menu() for a in w.menuBar().actions()}
    assert w.act_measure in menus["Jobs"].actions() and w.act_cancel_job in menus["Jobs"].actions()
    assert w.act_find in menus["Edit"].actions() and w.act_clear in menus["Edit"].actions()


def test_ctrl_f_and_delete_clear_the_selected_plan_undoably(qtbot, opened):
    w, m, view = opened, opened.layer_model, opened.table.view
    w.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is w)
    w.tabs.setCurrentIndex(1)  # Ctrl+F brings the table back
    qtbot.keyClick(w, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert w.tabs.currentWidget() is w.table and w.table.filter.hasFocus()
    m.setData(m.index_of(FC1, PRUNE), 0.5)
    m.setData(m.index_of(FC2, PRECISION_COL), "int8 dynamic")
    # Delete typed in the filter box edits the text, it does not clear a plan.
    w.table.filter.setText("fc")
    w.table.filter.setCursorPosition(0)
    qtbot.keyClick(w.table.filter, Qt.Key.Key_Delete)
    assert w.table.filter.text() == "c" and set(w.session.recipe.layers) == {FC1, FC2}
    w.table.filter.clear()
    w.table.select_layer(FC1)
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Delete)
    assert set(w.session.recipe.layers) == {FC2}
    assert m.index_of(FC1, PRUNE).data() == ""
    w.undo_stack.undo()
    assert set(w.session.recipe.layers) == {FC1, FC2} and m.index_of(FC1, PRUNE).data() == "channels 50%"


def test_f5_measures_and_esc_cancels_the_running_job(qtbot, opened):
    w = opened
    w.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is w)
    w.layer_model.setData(w.layer_model.index_of(FC1, PRUNE), 0.5)
    n = len(w.jobs.jobs)
    w.table.view.setFocus()
    qtbot.keyClick(w.table.view, Qt.Key.Key_F5)
    assert len(w.jobs.jobs) == n + 1
    job = w.jobs.jobs[-1]
    assert job.name.startswith("Apply & measure")
    # Esc in an open plan editor closes the editor; it does not cancel the job.
    idx = w.table.proxy.mapFromSource(w.layer_model.index_of(FC1, PRUNE))
    w.table.view.setCurrentIndex(idx)
    w.table.view.edit(idx)
    editor = QApplication.focusWidget()
    assert w.table.view.isAncestorOf(editor)
    qtbot.keyClick(editor, Qt.Key.Key_Escape)
    assert (
        not w.table.view.isAncestorOf(QApplication.focusWidget())
        or QApplication.focusWidget() is w.table.view
    )
    assert not job.ctx.cancelled
    # Select its row in the Jobs panel, then Esc.
    w.jobs_panel.tree.setCurrentItem(w.jobs_panel.tree.topLevelItem(0))
    assert w.jobs_panel.selected_job() is job
    qtbot.keyClick(w.table.view, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: job.done.is_set(), timeout=30_000)
    assert job.state == "cancelled" and len(w.session.variants) == 1
    assert not w.cancel_selected_job() and w.last_message == "no running job to cancel"


def test_about_lists_techniques_plugin_errors_and_paths(qtbot, opened):
    from studio.gui.dialogs.about import about_html
    from studio.plugin_api.registry import Registry

    dlg = opened.about()
    text = dlg.browser.toPlainText()
    from studio import __version__

    assert __version__ in text and "channels" in text and "int8_static" in text
    assert opened._settings().fileName() in text and "pareto-studio" in text
    assert str(opened.session.work_dir) in text
    dlg.close()
    broken = Registry(
        [
            EntryPoint("svd", "studio_decomposition.techniques:SVD", "studio.techniques"),
            EntryPoint("broken", "no_such_plugin_module:Thing", "studio.techniques"),
        ]
    )
    html = about_html(broken, "settings.ini", None)
    assert "1 loaded of 2" in html and "<code>svd</code>" in html
    assert "failed to load" in html and "ModuleNotFoundError" in html and "no_such_plugin_module" in html


def test_history_variant_column_shows_the_whole_label(opened):
    tree = opened.history.tree
    label = tree.topLevelItem(0).text(0)
    assert label == "original (digits_cnn.onnx)"
    assert tree.columnWidth(0) >= tree.sizeHintForColumn(0) > tree.fontMetrics().horizontalAdvance("original")
