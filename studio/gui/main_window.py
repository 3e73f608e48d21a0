"""The studio window: layer table | graph | Netron tabs, inspector / trade-off / jobs docks.

It renders a `Session` (Qt-free state) and turns user actions into recipe changes through the
undo stack and into background jobs through the JobManager; it never calls a technique itself.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QTabWidget,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from studio import __version__
from studio.core.errors import StudioError
from studio.core.metrics import GLYPH
from studio.core.recipe import Recipe
from studio.gui.delegates import PlanDelegate, ShareBarDelegate
from studio.gui.dialogs.errors import show_error, show_exception
from studio.gui.models.layer_table import (
    NAME,
    NAME_ROLE,
    PLAN_COL,
    SIZE,
    SORT_ROLE,
    LayerTableModel,
    fmt_bytes,
    fmt_count,
)
from studio.gui.state import (
    MODEL_SUFFIXES,
    RECIPE_SUFFIXES,
    Session,
    VariantEntry,
    apply_and_measure_job,
    bench_model,
    measure_original_job,
)
from studio.gui.views.jobs_panel import JobsPanel
from studio.gui.views.tradeoff_plot import TradeoffPlot
from studio.gui.workers import Job, JobManager

try:  # written concurrently by the views engineer; the window starts without them
    from studio.gui.views.graph_view import GraphView
except ImportError:  # pragma: no cover
    GraphView = None
try:
    from studio.gui.views.inspector import InspectorView
except ImportError:  # pragma: no cover
    InspectorView = None

MAX_RECENT = 10
WORKSPACE_SUFFIX = ".studio"


def _placeholder(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
    lab.setWordWrap(True)
    return lab


class LayerFilterProxy(QSortFilterProxyModel):
    """Sorts by SORT_ROLE and filters on the full layer name; a matching group shows its layers."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterRole(NAME_ROLE)
        self.setFilterKeyColumn(NAME)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setRecursiveFilteringEnabled(True)
        self.setAutoAcceptChildRows(True)

    def lessThan(self, left, right):  # noqa: N802 - Qt API
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if isinstance(a, int | float) and isinstance(b, int | float):
            return a < b
        return str(a) < str(b)


class LayerTableWidget(QWidget):
    """Filter box + grouped, sortable layer tree with in-place plan editors."""

    current_layer_changed = Signal(str)

    def __init__(self, model: LayerTableModel, parent=None):
        super().__init__(parent)
        self.model = model
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter layers by name…")
        self.filter.setClearButtonEnabled(True)
        self.group_box = QCheckBox("Group by name")
        self.group_box.setChecked(True)
        self.group_box.setToolTip("fold layers by their name hierarchy, with subtotal rows")
        self.proxy = LayerFilterProxy(self)
        self.proxy.setSourceModel(model)
        self.view = QTreeView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # model order until a header click
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.SelectedClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
        )
        self.bar_delegate = ShareBarDelegate(self.view)
        self.plan_delegate = PlanDelegate(model.session, self.view, commit=self.commit_edit)
        self.view.setItemDelegateForColumn(SIZE, self.bar_delegate)
        for c in PLAN_COL:
            self.view.setItemDelegateForColumn(c, self.plan_delegate)
        h = self.view.header()
        h.setStretchLastSection(False)
        h.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        h.setDefaultSectionSize(92)
        h.resizeSection(NAME, 260)
        self.filter.textChanged.connect(self._filter_changed)
        self.group_box.toggled.connect(self._group_toggled)
        self.view.selectionModel().currentRowChanged.connect(self._current_changed)
        model.modelReset.connect(self._after_reset)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.group_box)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.view, 1)
        self._pending_snapshot: list[str] | None = None

    def _filter_changed(self, text: str) -> None:
        self.proxy.setFilterFixedString(text)
        self.view.expandAll()

    def _group_toggled(self, on: bool) -> None:
        self.model.set_grouped(on)

    def _after_reset(self) -> None:
        self.view.expandAll()
        for c in range(self.model.columnCount()):
            self.view.resizeColumnToContents(c)
            w = self.view.columnWidth(c) + 8
            lo = 104 if c in PLAN_COL else 56  # plan cells grow when edited ("channels 50%")
            self.view.setColumnWidth(c, min(max(w, lo), 320 if c == NAME else 150))

    def _current_changed(self, cur: QModelIndex, _prev: QModelIndex) -> None:
        src = self.proxy.mapToSource(cur)
        la = self.model.layer_at(src)
        if la is not None:
            self.current_layer_changed.emit(la.name)

    def selected_layer_names(self) -> list[str]:
        """Layers of every selected row (a selected group stands for all its layers)."""
        names: list[str] = []
        for idx in self.view.selectionModel().selectedRows(NAME):
            for la in self.model.node(self.proxy.mapToSource(idx)).layers():
                if la.name not in names:
                    names.append(la.name)
        return names

    def commit_edit(self, index: QModelIndex, value) -> None:
        """Delegate commit: the edit applies to every selected row when the edited row is one of
        them (one undo step); otherwise only to the edited row."""
        src = self.proxy.mapToSource(index)
        own = [la.name for la in self.model.node(src).layers()]
        selected = self.selected_layer_names()
        names = selected if set(own) <= set(selected) and len(selected) > len(own) else own
        self.model.edit_layers(names, src.column(), value)

    def select_layer(self, name: str) -> None:
        src = self.model.index_of(name)
        if not src.isValid():
            return
        idx = self.proxy.mapFromSource(src)
        if idx.isValid() and self.view.currentIndex().siblingAtColumn(NAME) != idx:
            self.view.setCurrentIndex(idx)
            self.view.scrollTo(idx)


class MainWindow(QMainWindow):
    """Pareto Studio's main window."""

    variant_added = Signal(object)

    def __init__(
        self, *, work_dir: Path | None = None, session: Session | None = None, auto_measure: bool = True
    ):
        super().__init__()
        self.setWindowTitle("Pareto Studio")
        self.session = session or Session(work_dir=work_dir)
        self.auto_measure = auto_measure
        self.workspace = None
        self.last_message = ""
        self.selected_variant: str | None = None
        self._model_generation = 0
        self._syncing = False
        self.undo_stack = QUndoStack(self)
        self.jobs = JobManager(self)
        self.layer_model = LayerTableModel(self.session, self.undo_stack, self)
        self.layer_model.recipe_changed.connect(self._on_recipe_changed)

        # central tabs
        self.tabs = QTabWidget()
        self.table = LayerTableWidget(self.layer_model)
        self.table.current_layer_changed.connect(self._on_layer_selected)
        self.tabs.addTab(self.table, "Layers")
        if GraphView is not None:
            self.graph = GraphView()
            self.graph.layer_selected.connect(self._on_layer_selected)
        else:
            self.graph = _placeholder("Graph view is not available in this build.")
        self.tabs.addTab(self.graph, "Graph")
        self.netron = None
        self._netron_holder = QWidget()
        QVBoxLayout(self._netron_holder).setContentsMargins(0, 0, 0, 0)
        self._netron_holder.layout().addWidget(_placeholder("Netron starts when this tab is first shown."))
        self.netron_tab = self.tabs.addTab(self._netron_holder, "Netron")
        self.tabs.currentChanged.connect(self._tab_changed)
        self.setCentralWidget(self.tabs)

        # docks
        self.inspector = (
            InspectorView() if InspectorView is not None else _placeholder("Inspector unavailable")
        )
        self.plot = TradeoffPlot()
        self.plot.variant_clicked.connect(self.restore_variant)
        self.jobs_panel = JobsPanel(self.jobs)
        self.inspector_dock = self._dock("Inspector", self.inspector, Qt.DockWidgetArea.RightDockWidgetArea)
        self.plot_dock = self._dock("Trade-off", self.plot, Qt.DockWidgetArea.RightDockWidgetArea)
        self.jobs_dock = self._dock("Jobs", self.jobs_panel, Qt.DockWidgetArea.BottomDockWidgetArea)
        # The right column (inspector over plot) spans the full height; jobs sit under the tabs.
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)

        self.totals_label = QLabel("no model")
        self.statusBar().addPermanentWidget(self.totals_label)
        self._build_menus()
        self.setAcceptDrops(True)
        self.resize(1400, 860)
        self.resizeDocks([self.inspector_dock, self.plot_dock], [560, 560], Qt.Orientation.Horizontal)
        self.resizeDocks([self.inspector_dock, self.plot_dock], [430, 370], Qt.Orientation.Vertical)
        self.resizeDocks([self.jobs_dock], [150], Qt.Orientation.Vertical)
        self._default_state = self.saveState()
        self._restore_settings()
        # Graph colouring and workspace autosave follow the recipe, debounced.
        self._recolor_timer = QTimer(self, singleShot=True, interval=150, timeout=self._recolor_graph)
        self._autosave_timer = QTimer(self, singleShot=True, interval=500, timeout=self._autosave_recipe)
        self._update_actions()

    # ------------------------------------------------------------------ construction

    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        d = QDockWidget(title, self)
        d.setObjectName(f"dock_{title.lower().replace('-', '_')}")
        d.setWidget(widget)
        self.addDockWidget(area, d)
        return d

    def _action(self, menu, text, slot, shortcut=None, tip="") -> QAction:
        a = QAction(text, self)
        if shortcut:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setStatusTip(tip)
        a.triggered.connect(lambda _checked=False: slot())
        menu.addAction(a)
        return a

    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self.act_open = self._action(
            f, "&Open…", self.open_dialog, QKeySequence.StandardKey.Open, "open an ONNX or PyTorch model"
        )
        self.recent_menu = f.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        f.addSeparator()
        self._action(f, "Open &Workspace…", self.open_workspace_dialog)
        self.act_save_ws = self._action(f, "&Save Workspace…", self.save_workspace_dialog)
        self._action(f, "Load Recipe…", self.load_recipe_dialog)
        self.act_save_recipe = self._action(f, "Save Recipe…", self.save_recipe_dialog)
        f.addSeparator()
        self.act_export = self._action(
            f, "&Export…", self.export_dialog, "Ctrl+E", "export a measured variant"
        )
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        e = mb.addMenu("&Edit")
        self.act_undo = self.undo_stack.createUndoAction(self, "&Undo")
        self.act_undo.setShortcut(QKeySequence("Ctrl+Z"))
        self.act_redo = self.undo_stack.createRedoAction(self, "&Redo")
        self.act_redo.setShortcut(QKeySequence("Ctrl+Shift+Z"))
        e.addAction(self.act_undo)
        e.addAction(self.act_redo)
        e.addSeparator()
        self.act_clear = self._action(e, "Clear Plan of Selected Layers", self.clear_selected, "Del")

        v = mb.addMenu("&View")
        for d in (self.inspector_dock, self.plot_dock, self.jobs_dock):
            v.addAction(d.toggleViewAction())
        v.addSeparator()
        self._action(v, "Reset Layout", self.reset_layout)

        j = mb.addMenu("&Jobs")
        self.act_measure = self._action(j, "Apply && &Measure", self.apply_and_measure, "Ctrl+M",
                                        "compress with the current recipe, then measure quality, size and latency")  # fmt: skip
        self.act_eval = self._action(
            j, "&Evaluate", self.evaluate_selected, tip="re-measure quality of the selected variant"
        )
        self.act_bench = self._action(
            j, "&Benchmark", self.benchmark_selected, tip="re-measure latency of the selected variant"
        )
        j.addSeparator()
        self._action(j, "Evaluation Data…", self.choose_eval_data)
        self._action(j, "Calibration Data…", self.choose_calib_data)

        h = mb.addMenu("&Help")
        self._action(h, "&About", self.about)

    def _update_actions(self) -> None:
        has = self.session.handle is not None
        for a in (
            self.act_measure,
            self.act_eval,
            self.act_bench,
            self.act_save_ws,
            self.act_save_recipe,
            self.act_clear,
        ):
            a.setEnabled(has)
        self.act_export.setEnabled(any(not v.is_original for v in self.session.variants))

    # ------------------------------------------------------------------ settings

    def _settings(self):
        from studio.gui.app import settings

        return settings()

    def _restore_settings(self) -> None:
        s = self._settings()
        geo = s.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        state = s.value("window/state")
        if state is not None:
            self.restoreState(state)

    def _save_settings(self) -> None:
        s = self._settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.sync()

    def reset_layout(self) -> None:
        self.restoreState(self._default_state)
        for d in (self.inspector_dock, self.plot_dock, self.jobs_dock):
            d.show()

    def recent_files(self) -> list[str]:
        v = self._settings().value("recent/files", [])
        return [v] if isinstance(v, str) else list(v or [])

    def _add_recent(self, path: Path) -> None:
        items = [str(path)] + [p for p in self.recent_files() if p != str(path)]
        s = self._settings()
        s.setValue("recent/files", items[:MAX_RECENT])
        s.sync()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        if not files:
            self.recent_menu.addAction("(none)").setEnabled(False)
        for p in files:
            a = self.recent_menu.addAction(p)
            a.triggered.connect(functools.partial(self.open_path, Path(p)))

    # ------------------------------------------------------------------ messages

    def message(self, text: str, ms: int = 8000) -> None:
        self.last_message = text
        self.statusBar().showMessage(text, ms)

    # ------------------------------------------------------------------ opening

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model", str(Path.cwd()), "Models (*.onnx *.pt *.pth *.torchscript);;All files (*)"
        )
        if path:
            self.open_path(Path(path))

    def open_path(self, path: Path) -> bool:
        """Open whatever `path` is: a model, a recipe, or a workspace."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == WORKSPACE_SUFFIX:
            return self.open_workspace(path)
        if suffix in RECIPE_SUFFIXES:
            return self.load_recipe(path)
        return self.open_model(path)

    def open_model(self, path: Path) -> bool:
        """Load a model into the window; a bad file shows an error dialog and changes nothing."""
        path = Path(path)
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            self.session.open(path)
        except StudioError as e:
            QGuiApplication.restoreOverrideCursor()
            self.message(f"could not open {path.name}: {e.message}")
            show_error(self, "Cannot open model", e.message, hint=e.hint or "")
            return False
        except Exception as e:  # noqa: BLE001 - a loader bug must not close the window
            QGuiApplication.restoreOverrideCursor()
            show_exception(self, "Cannot open model", e)
            return False
        QGuiApplication.restoreOverrideCursor()
        self._close_workspace()
        self._model_loaded()
        self._add_recent(path)
        return True

    def _model_loaded(self) -> None:
        s = self.session
        self._model_generation += 1
        self.undo_stack.clear()
        self.selected_variant = None
        self.layer_model.reset()
        if GraphView is not None:
            self.graph.set_model(s.handle.proto, s.analysis)
        if self.netron is not None and s.handle.onnx_path:
            self.netron.show_model(s.handle.onnx_path)
        if InspectorView is not None:
            self.inspector.show_layer(None, s.handle.proto, None)
        self.plot.set_original_weight_bytes(float(s.analysis.total_weight_bytes))
        self.plot.set_plan_estimate(None)
        self._refresh_plot()
        self._update_status()
        self._update_actions()
        name = s.handle.source_path.name if s.handle.source_path else s.handle.name
        self.setWindowTitle(f"{name} — Pareto Studio")
        data = s.eval_data or s.calib_data
        what = (
            f"evaluation data {data.name}"
            if data
            else "no data found beside the model (fidelity on random inputs)"
        )
        warn = f"; {len(s.analysis.warnings)} warning(s)" if s.analysis.warnings else ""
        self.message(f"opened {name}: {len(s.analysis.layers)} weighted layers; {what}{warn}")
        if self.auto_measure:
            self.measure_original()

    # ------------------------------------------------------------------ drag and drop

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        urls = [u for u in event.mimeData().urls() if u.isLocalFile()]
        if not urls:
            self.message("only local files can be dropped here")
            return
        path = Path(urls[0].toLocalFile())
        suffix = path.suffix.lower()
        if suffix in MODEL_SUFFIXES or suffix in RECIPE_SUFFIXES or suffix == WORKSPACE_SUFFIX:
            event.acceptProposedAction()
            self.open_path(path)
        else:
            self.message(
                f"{path.name} is not a model file: drop an .onnx or PyTorch (.pt/.pth) model, "
                f"a recipe (.yaml/.toml) or a workspace (.studio)"
            )

    # ------------------------------------------------------------------ recipe & selection

    def _on_recipe_changed(self) -> None:
        self._update_status()
        self._recolor_timer.start()
        if self.workspace is not None:
            self._autosave_timer.start()
        cur = self.table.view.currentIndex()
        la = self.layer_model.layer_at(self.table.proxy.mapToSource(cur)) if cur.isValid() else None
        if la is not None and InspectorView is not None:
            self.inspector.show_layer(la, self.session.handle.proto, self.session.effective_plan(la.name))

    def _recolor_graph(self) -> None:
        """Debounced after edits: plan line on the plot and graph colours (both repaint slowly)."""
        s = self.session
        if s.estimates is None:
            return
        planned = bool(s.recipe.layers) or not s.recipe.defaults.is_empty()
        self.plot.set_plan_estimate(float(s.estimates.totals()[2]) if planned else None)
        if GraphView is None:
            return
        vals = {
            la.name: s.estimates.per_layer[la.name].weight_bytes / max(la.weight_bytes, 1)
            for la in s.analysis.layers
        }
        try:
            self.graph.set_node_colors(vals, "est. size after plan (× original)")
        except Exception as e:  # noqa: BLE001 - colouring is cosmetic
            self.message(f"graph colouring failed: {e}")

    def _on_layer_selected(self, name: str) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            s = self.session
            la = s.layer(name)
            self.table.select_layer(name)
            if GraphView is not None:
                self.graph.select_layer(name)
            if InspectorView is not None and la is not None:
                self.inspector.show_layer(la, s.handle.proto, s.effective_plan(name))
        finally:
            self._syncing = False

    def clear_selected(self) -> None:
        names = self.table.selected_layer_names()
        if names:
            self.layer_model.clear_layers(names)

    def _update_status(self) -> None:
        s = self.session
        if s.analysis is None:
            self.totals_label.setText("no model")
            return
        a = s.analysis
        text = (
            f"{len(a.layers)} layers · {fmt_count(a.total_params)} params · {fmt_bytes(a.total_weight_bytes)} weights"
            f" · {fmt_count(a.total_macs)} MACs/sample"
        )
        planned = sum(1 for p in s.estimates.plans.values() if p is not None)
        if planned:
            p, m, b = s.estimates.totals()
            ratio = a.total_weight_bytes / max(b, 1)
            text += (
                f"   |   plan on {planned} layer(s): est. {fmt_bytes(b)} ({ratio:.2f}× smaller), "
                f"est. {fmt_count(m)} MACs {GLYPH['estimated']}"
            )
        self.totals_label.setText(text)
        self.totals_label.setToolTip(
            "model totals from the graph; values marked est. are estimated by formula"
        )

    # ------------------------------------------------------------------ variants

    def _refresh_plot(self) -> None:
        self.plot.set_variants(self.session.variants)
        self._update_actions()

    def restore_variant(self, vid: str) -> None:
        """Plot click: the variant's recipe becomes the current recipe (one undo step)."""
        e = self.session.variant(vid)
        if e is None:
            return
        self.selected_variant = vid
        self.layer_model.set_recipe(e.recipe, f"Restore recipe of {e.label}")
        q = e.quality()
        self.message(
            f"restored the recipe of {e.label}" + (f" ({q.name} {q.value:.4f}, {q.kind})" if q else "")
        )

    # ------------------------------------------------------------------ jobs

    def _start(self, name: str, fn, on_done) -> Job:
        gen = self._model_generation

        def done(result):
            if gen == self._model_generation:  # a result for a model no longer open is dropped
                on_done(result)

        job = self.jobs.start(name, fn)
        job.signals.finished.connect(done)
        job.signals.failed.connect(lambda m, d, n=name: self._job_failed(n, m, d))
        job.signals.cancelled.connect(lambda n=name: self.message(f"{n}: cancelled"))
        self.jobs_dock.show()
        return job

    def _job_failed(self, name: str, message: str, details: str) -> None:
        self.message(f"{name} failed: {message}")
        show_error(self, f"{name} failed", message, details=details)

    def _data_or_error(self):
        try:
            return self.session.eval_dataset(), self.session.calibration()
        except StudioError as e:
            show_error(self, "Data problem", e.message, hint=e.hint or "")
            return None

    def measure_original(self) -> Job | None:
        s = self.session
        if s.handle is None:
            return None
        got = self._data_or_error()
        if got is None:
            return None
        fn = functools.partial(
            measure_original_job, handle=s.handle, data=got[0], settings=copy.copy(s.settings)
        )

        def done(metrics):
            orig = s.original()
            keep = [m for m in orig.metrics if m.name in ("size_bytes", "zipped_bytes")]
            orig.metrics = keep + [m for m in metrics if m.name not in ("size_bytes", "zipped_bytes")]
            if self.workspace is not None:
                self._ws_call(lambda ws: ws.add_metrics("original", orig.metrics))
            self._refresh_plot()

        return self._start("Measure original", fn, done)

    def apply_and_measure(self) -> Job | None:
        """Compress with the current recipe, evaluate, benchmark; a new point on the plot."""
        s = self.session
        if s.handle is None:
            self.message("open a model first")
            return None
        try:
            from studio.core.pipeline import resolve_plan

            resolve_plan(s.analysis, s.recipe, s.registry)  # recipe errors show now, not in the job
        except StudioError as e:
            show_error(self, "The recipe cannot be applied", e.message, hint=e.hint or "")
            return None
        got = self._data_or_error()
        if got is None:
            return None
        label = s.next_label()
        fn = functools.partial(
            apply_and_measure_job,
            handle=s.handle,
            recipe=s.recipe,
            data=got[0],
            calibration=got[1],
            settings=copy.copy(s.settings),
            out_dir=self._variants_dir(),
            label=label,
            registry=s.registry,
        )
        return self._start(f"Apply & measure {label}", fn, self._on_variant_measured)

    def _variants_dir(self) -> Path:
        return self.session.work_dir / "variants"

    def _on_variant_measured(self, entry: VariantEntry) -> None:
        self.session.add_variant(entry)
        if self.workspace is not None and entry.variant is not None:
            self._ws_call(lambda ws: ws.add_variant(entry.variant, entry.label))
        self._refresh_plot()
        q, size = entry.quality(), entry.size()
        parts = [f"{entry.label} measured"]
        if q:
            parts.append(f"{q.name} {q.value:.4f} ({q.kind} on {q.n_samples})")
        if size:
            parts.append(f"{fmt_bytes(size.value)} on disk")
        self.message(", ".join(parts))
        self.variant_added.emit(entry)

    def _selected_entry(self) -> VariantEntry | None:
        return self.session.variant(self.selected_variant or "") or self.session.original()

    def evaluate_selected(self) -> Job | None:
        e = self._selected_entry()
        if e is None or e.onnx_path is None:
            return self.measure_original() if e is not None and e.is_original else None
        got = self._data_or_error()
        if got is None:
            return None
        data, s = got[0], self.session
        ref = s.handle.proto if data.labels is None else None

        def fn(ctx):
            from studio.core.evaluate import evaluate

            return evaluate(e.onnx_path, data, reference=ref, threads=s.settings.threads, ctx=ctx)

        return self._start(f"Evaluate {e.label}", fn, lambda ms: self._merge_metrics(e, ms))

    def benchmark_selected(self) -> Job | None:
        e = self._selected_entry()
        if e is None or e.onnx_path is None:
            self.message("the selected model has no ONNX file to benchmark")
            return None
        settings = copy.copy(self.session.settings)
        return self._start(
            f"Benchmark {e.label}",
            lambda ctx: bench_model(e.onnx_path, settings, ctx),
            lambda ms: self._merge_metrics(e, ms),
        )

    def _merge_metrics(self, e: VariantEntry, metrics) -> None:
        names = {m.name for m in metrics}
        e.metrics = [m for m in e.metrics if m.name not in names] + list(metrics)
        self._refresh_plot()

    def choose_eval_data(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Evaluation data", "", "NumPy archives (*.npz);;All files (*)"
        )
        if path:
            self.session.eval_data = Path(path)
            self.message(f"evaluation data: {path}")

    def choose_calib_data(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Calibration data", "", "NumPy archives (*.npz);;All files (*)"
        )
        if path:
            self.session.calib_data = Path(path)
            self.message(f"calibration data: {path}")

    # ------------------------------------------------------------------ recipes / workspace

    def load_recipe_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load recipe", "", "Recipes (*.yaml *.yml *.toml *.json)")
        if path:
            self.load_recipe(Path(path))

    def load_recipe(self, path: Path) -> bool:
        if self.session.handle is None:
            self.message("open a model before loading a recipe")
            return False
        try:
            recipe = Recipe.load(path)
            recipe.resolve([la.name for la in self.session.analysis.layers])
        except StudioError as e:
            show_error(self, "Cannot load recipe", e.message, hint=e.hint or "")
            return False
        self.layer_model.set_recipe(recipe, f"Load recipe {Path(path).name}")
        self.message(f"recipe loaded from {path}")
        return True

    def save_recipe_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save recipe", "recipe.yaml", "Recipes (*.yaml *.toml *.json)"
        )
        if path:
            self.session.recipe.save(path)
            self.message(f"recipe saved to {path}")

    def _workspace_module(self):
        try:
            from studio.core import workspace
        except ImportError:
            return None
        return workspace

    def save_workspace_dialog(self) -> None:
        ws_mod = self._workspace_module()
        if ws_mod is None:  # build without workspaces: the recipe is the project file
            return self.save_recipe_dialog()
        path, _ = QFileDialog.getSaveFileName(
            self, "Save workspace", "project.studio", "Workspaces (*.studio)"
        )
        if path:
            self.save_workspace(Path(path))

    def save_workspace(self, path: Path) -> bool:
        """Create a workspace holding this session's variants; later changes autosave into it."""
        ws_mod = self._workspace_module()
        if ws_mod is None or self.session.handle is None:
            return False
        try:
            ws = ws_mod.Workspace.create(path, self.session.handle)
            orig = self.session.original()
            if orig and orig.metrics:
                ws.add_metrics(ws_mod.ORIGINAL, orig.metrics)
            for e in self.session.variants:
                if not e.is_original and e.variant is not None:
                    ws.add_variant(e.variant, e.label)
            ws.set_current_recipe(self.session.recipe)
        except StudioError as e:
            show_error(self, "Cannot save workspace", e.message, hint=e.hint or "")
            return False
        self._close_workspace()
        self.workspace = ws
        self.message(f"workspace saved to {path}; changes are saved automatically")
        return True

    def open_workspace_dialog(self) -> None:
        ws_mod = self._workspace_module()
        if ws_mod is None:
            return self.load_recipe_dialog()
        path, _ = QFileDialog.getOpenFileName(self, "Open workspace", "", "Workspaces (*.studio)")
        if path:
            self.open_workspace(Path(path))

    def open_workspace(self, path: Path) -> bool:
        ws_mod = self._workspace_module()
        if ws_mod is None:
            self.message("workspaces are not available in this build")
            return False
        ws = None
        try:
            ws = ws_mod.Workspace.open(path)
            handle = ws.load_source()
            self.session.open_handle(handle)
            entries = []
            for rec in ws.variants():
                if rec.missing:
                    continue
                entries.append(VariantEntry(rec.id, rec.name, rec.recipe, list(rec.metrics), rec.path))
            orig_metrics = ws.metrics(ws_mod.ORIGINAL)
            recipe = ws.current_recipe()
        except StudioError as e:
            if ws is not None:
                ws.close()  # release the writer lock, or the user could not reopen it
            show_error(self, "Cannot open workspace", e.message, hint=e.hint or "")
            return False
        self._close_workspace()
        self.workspace = ws
        auto, self.auto_measure = self.auto_measure, not orig_metrics
        try:
            self._model_loaded()
        finally:
            self.auto_measure = auto
        orig = self.session.original()
        if orig_metrics:
            orig.metrics = orig_metrics
        self.session.variants.extend(entries)
        if recipe is not None:
            self.layer_model.apply_recipe(recipe)
        self._refresh_plot()
        msgs = "; ".join(ws.messages)
        self.message(f"workspace {path.name}: {len(entries)} variant(s)" + (f"; {msgs}" if msgs else ""))
        return True

    def _ws_call(self, fn) -> None:
        try:
            fn(self.workspace)
        except StudioError as e:
            self.message(f"workspace not updated: {e.message}")

    def _autosave_recipe(self) -> None:
        if self.workspace is not None:
            self._ws_call(lambda ws: ws.set_current_recipe(self.session.recipe))

    def _close_workspace(self) -> None:
        if self.workspace is not None:
            try:
                self.workspace.close()
            finally:
                self.workspace = None

    # ------------------------------------------------------------------ export

    def export_dialog(self):
        from studio.gui.dialogs.export_dialog import ExportDialog

        if self.workspace is not None:
            for e in self.session.variants:
                if not e.is_original and e.variant is None:
                    self._ws_call(lambda ws, e=e: setattr(e, "variant", ws.load_variant(e.id)))
        dlg = ExportDialog(self.session, self.jobs, self, selected=self.selected_variant)
        dlg.open()
        return dlg

    # ------------------------------------------------------------------ netron / about / close

    def _tab_changed(self, index: int) -> None:
        if index == self.netron_tab and self.netron is None:
            self._create_netron()

    def _create_netron(self) -> None:
        try:
            from studio.gui.views.netron_view import NetronView

            self.netron = NetronView()
        except Exception as e:  # noqa: BLE001 - QtWebEngine or netron may be missing
            lay = self._netron_holder.layout()
            lay.itemAt(0).widget().setText(f"Netron is not available: {type(e).__name__}: {e}")
            return
        lay = self._netron_holder.layout()
        old = lay.itemAt(0).widget()
        lay.replaceWidget(old, self.netron)
        old.deleteLater()
        if self.session.handle is not None and self.session.handle.onnx_path:
            self.netron.show_model(self.session.handle.onnx_path)

    def about(self) -> None:
        QMessageBox.about(
            self,
            "About Pareto Studio",
            f"<b>Pareto Studio</b> {__version__}<br>Compress ONNX models layer by layer, measure the "
            f"trade-offs, export verified models.<br><br>{GLYPH['measured']} measured · "
            f"{GLYPH['estimated']} estimated by formula · {GLYPH['fidelity']} fidelity vs the original",
        )

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Cancel running jobs and wait for them (bounded), then persist the layout."""
        self._save_settings()
        stopped = self.jobs.shutdown(timeout_ms=15_000)
        if not stopped:
            self.message("some jobs did not stop in time")
        if self.netron is not None:
            try:
                self.netron.shutdown()
            except Exception:  # noqa: BLE001, S110 - shutting down anyway
                pass
        self._close_workspace()
        super().closeEvent(event)
