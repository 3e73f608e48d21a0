"""The studio window: layer table | graph | Netron tabs, inspector / trade-off / jobs docks.

It renders a `Session` (Qt-free state) and turns user actions into recipe changes through the
undo stack and into background jobs through the JobManager; it never calls a technique itself.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDockWidget,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QTabWidget,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from studio.core.errors import StudioError
from studio.core.measure_job import FileVariant, model_spec
from studio.core.metrics import GLYPH
from studio.core.model import TORCH_SUFFIXES
from studio.core.recipe import Recipe
from studio.gui.delegates import ElideRightDelegate, PlanDelegate, ShareBarDelegate
from studio.gui.dialogs.errors import show_error, show_exception
from studio.gui.dialogs.torch_open import needs_input_shape
from studio.gui.models.layer_table import (
    MACS,
    NAME,
    NAME_ROLE,
    NUMERIC_COLS,
    OP,
    PARAMS,
    PLAN_COL,
    SHAPE,
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
    candidate_entry,
    measure_original_job,
    prepare_model,
    subprocess_apply_job,
    subprocess_measure_job,
)
from studio.gui.views.diff_view import DiffView, diff_ratios
from studio.gui.views.history_view import HistoryView
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
NAME_MIN_WIDTH, NAME_MAX_WIDTH = 120, 320  # layer-name column: at least, and at most what it asks for
RERUN_KINDS = {"measure", "apply", "apply_and_measure", "compress"}  # jobs that re-run from a recipe
WORKSPACE_SUFFIX = ".studio"
PLAN_COLORING = "est. size after plan (× original)"
DIFF_COLORING = "diff: size B / A"


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
        # Layer names differ at the end (/conv2/conv2.0/Conv): elide the middle, keep the tail.
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
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
        self.elide_right = ElideRightDelegate(self.view)
        for c in (OP, SHAPE):
            self.view.setItemDelegateForColumn(c, self.elide_right)
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
        self.fit_columns()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._fit_name()

    def name_width_wanted(self) -> int:
        """Width that shows the longest (indented) name in full, capped at NAME_MAX_WIDTH."""
        fit = max(self.view.sizeHintForColumn(NAME), self.view.header().sectionSizeHint(NAME)) + 12
        return max(NAME_MIN_WIDTH, min(fit, NAME_MAX_WIDTH))

    def _fit_name(self) -> None:
        """Name stretches over the free width, but never below the width its longest name needs
        (up to NAME_MAX_WIDTH): on a narrow window the table scrolls sideways instead of eliding
        every name to "/co…nv"."""
        h = self.view.header()
        if self.model.columnCount() == 0:
            return
        others = sum(h.sectionSize(c) for c in range(self.model.columnCount()) if c != NAME)
        free = self.view.viewport().width() - others
        want = self.name_width_wanted()
        if free >= want:
            h.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        else:
            h.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Interactive)
            h.resizeSection(NAME, want)

    def fit_columns(self) -> None:
        """Numbers fit their contents, plan cells keep room for "channels 50%", shapes and ops are
        capped (full text in tooltips) and Name takes the rest, at least what its longest name
        needs (up to 320 px): at a ~1000 px central area every column is visible."""
        h = self.view.header()
        h.setMinimumSectionSize(36)
        for c in range(self.model.columnCount()):
            if c == NAME:
                continue
            self.view.resizeColumnToContents(c)
            w = self.view.columnWidth(c) + 3
            if c in PLAN_COL:
                w = min(max(w, 72), 96)  # "channels 50%" fits; longer texts elide, tooltip has all
            elif c == SHAPE:
                w = min(max(w, 56), 92)
            elif c == OP:
                w = min(max(w, 40), 56)
            elif c in NUMERIC_COLS or c in (PARAMS, MACS):
                w = min(max(w, 46), 84)
            self.view.setColumnWidth(c, w)
        self._fit_name()

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
    model_opened = Signal(bool)  # after an open finished: True = the model is shown

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
        self.branch_parent: str | None = None  # new variants become children of this one
        self.current_layer: str | None = None
        self.last_report = None
        self.opening = None  # the running "Open model" job
        self._open_pool = QThreadPool(self)
        self._open_pool.setMaxThreadCount(1)
        self.sensitivity = None  # last sensitivity result (Jobs ▸ Analyze)
        self.candidates: list[VariantEntry] = []  # auto-compress candidates (plot only)
        self.auto_job: Job | None = None
        self.distill_job: Job | None = None
        self._auto_dialog = None
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
        self.banner = QFrame()
        self.banner.setObjectName("banner")
        self.banner.setStyleSheet(
            "#banner { background: #fff3cd; border: 1px solid #e0c060; border-radius: 3px; }"
            "#banner QLabel { color: #5c4400; }"
        )
        self.banner_label = QLabel()
        self.banner_label.setWordWrap(True)
        close_banner = QPushButton("Dismiss")
        close_banner.clicked.connect(self.banner.hide)
        bl = QHBoxLayout(self.banner)
        bl.setContentsMargins(8, 4, 8, 4)
        bl.addWidget(self.banner_label, 1)
        bl.addWidget(close_banner)
        self.banner.hide()
        central = QWidget()
        cl = QVBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(2)
        cl.addWidget(self.banner)
        cl.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        # docks
        self.inspector = (
            InspectorView() if InspectorView is not None else _placeholder("Inspector unavailable")
        )
        self.plot = TradeoffPlot()
        self.plot.variant_clicked.connect(self.restore_variant)
        self.plot.x_axis.currentIndexChanged.connect(lambda _i: self._save_selection())
        self.jobs_panel = JobsPanel(self.jobs)
        self.inspector_dock = self._dock("Inspector", self.inspector, Qt.DockWidgetArea.RightDockWidgetArea)
        self.plot_dock = self._dock("Trade-off", self.plot, Qt.DockWidgetArea.RightDockWidgetArea)
        self.jobs_dock = self._dock("Jobs", self.jobs_panel, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.history = HistoryView()
        self.history.branch_requested.connect(self.branch_from)
        self.history.rename_requested.connect(self.rename_variant)
        self.history.note_requested.connect(self.annotate_variant)
        self.history.delete_requested.connect(self.delete_variant)
        self.history.variant_selected.connect(self._on_history_selected)
        self.history_dock = self._dock("History", self.history, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.diff_view = DiffView()
        self.diff_view.compare_requested.connect(self.compare_variants)
        self.diff_view.color_graph_requested.connect(self.color_graph_by_diff)
        self.diff_view.layer_selected.connect(self._on_layer_selected)
        self.diff_dock = self._dock("Diff", self.diff_view, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.heatmap_dock = None
        try:
            from studio.gui.views.sensitivity_view import SensitivityView

            self.heatmap = SensitivityView()
            self.heatmap.layer_selected.connect(self._on_layer_selected)
            self.heatmap.color_graph_requested.connect(self.color_by_sensitivity)
            self.heatmap_dock = self._dock(
                "Sensitivity", self.heatmap, Qt.DockWidgetArea.BottomDockWidgetArea
            )
        except ImportError:  # pragma: no cover - the window starts without it
            self.heatmap = None
        self.tabifyDockWidget(self.jobs_dock, self.history_dock)
        self.tabifyDockWidget(self.history_dock, self.diff_dock)
        if self.heatmap_dock is not None:
            self.tabifyDockWidget(self.diff_dock, self.heatmap_dock)
        self.jobs_dock.raise_()
        # The right column (inspector over plot) spans the full height; jobs sit under the tabs.
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)

        self.totals_label = QLabel("no model")
        self.statusBar().addPermanentWidget(self.totals_label)
        self._build_menus()
        self.setAcceptDrops(True)
        self.resize(1400, 860)
        # 530 px: the inspector's plots stay readable and, at 1560 px, the table's central area
        # shows every column with full digits layer names.
        self.resizeDocks([self.inspector_dock, self.plot_dock], [530, 530], Qt.Orientation.Horizontal)
        self.resizeDocks([self.inspector_dock, self.plot_dock], [500, 330], Qt.Orientation.Vertical)
        self.resizeDocks([self.jobs_dock], [210], Qt.Orientation.Vertical)
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
        if isinstance(shortcut, list):  # the first one is the one the menu shows
            a.setShortcuts([QKeySequence(k) for k in shortcut])
        elif shortcut:
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
        self.act_report = self._action(
            f, "Write &Report…", self.report_dialog, tip="HTML + Markdown report of the measured variants"
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
        self.act_clear = self._action(e, "Clear Plan of Selected Layers", self.clear_selected,
                                      QKeySequence.StandardKey.Delete, "remove the plan of the selected layers (undoable)")  # fmt: skip
        # Delete in a text field (filter box, plan editor, note) edits the text, not the plan.
        self.act_clear.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.table.view.addAction(self.act_clear)
        self.act_find = self._action(e, "&Find Layer…", self.focus_filter, QKeySequence.StandardKey.Find,
                                     "filter the layer table by name")  # fmt: skip

        v = mb.addMenu("&View")
        for d in self._docks():
            v.addAction(d.toggleViewAction())
        v.addSeparator()
        self._action(v, "Reset Layout", self.reset_layout)

        j = mb.addMenu("&Jobs")
        self.act_measure = self._action(j, "Apply && &Measure", self.apply_and_measure, ["F5", "Ctrl+M"],
                                        "compress with the current recipe, then measure quality, size and latency")  # fmt: skip
        self.act_eval = self._action(
            j, "&Evaluate", self.evaluate_selected, tip="re-measure quality of the selected variant"
        )
        self.act_bench = self._action(
            j, "&Benchmark", self.benchmark_selected, tip="re-measure latency of the selected variant"
        )
        self.act_cancel_job = self._action(j, "&Cancel Selected Job", self.cancel_selected_job, "Esc",
                                           "stop the job selected in the Jobs panel (else the newest running one)")  # fmt: skip
        j.addSeparator()
        self.act_analyze = self._action(j, "&Analyze Sensitivity", self.analyze_sensitivity,
                                        tip="per-layer quality drop for each setting: fills the Sensitivity heatmap")  # fmt: skip
        self.act_auto = self._action(j, "Auto-&compress…", self.auto_compress_dialog,
                                     tip="search a recipe that reaches a size / latency / MACs target")  # fmt: skip
        self.act_distill = self._action(j, "&Fine-tune (distill)…", self.distill_dialog,
                                        tip="knowledge-distillation fine-tune of the selected variant (PyTorch models)")  # fmt: skip
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
            self.act_analyze,
            self.act_auto,
        ):
            a.setEnabled(has)
        measured = any(not v.is_original for v in self.session.variants)
        self.act_export.setEnabled(measured)
        self.act_report.setEnabled(measured)
        torch = bool(has and getattr(self.session.handle, "torch_source", None))
        self.act_distill.setEnabled(torch)
        self.act_distill.setToolTip(
            "knowledge-distillation fine-tune (the model came from PyTorch)"
            if torch
            else "only for models opened from PyTorch (.pt/.pth): the ONNX file alone cannot be trained"
        )

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

    def _docks(self) -> list[QDockWidget]:
        docks = [self.inspector_dock, self.plot_dock, self.jobs_dock, self.history_dock, self.diff_dock]
        return docks + ([self.heatmap_dock] if self.heatmap_dock is not None else [])

    def reset_layout(self) -> None:
        self.restoreState(self._default_state)
        for d in self._docks():
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

    def open_path(self, path: Path, *, wait: bool = False) -> bool:
        """Open whatever `path` is: a model (on a worker; `wait` blocks until shown), a recipe,
        or a workspace."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == WORKSPACE_SUFFIX:
            return self.open_workspace(path)
        if suffix in RECIPE_SUFFIXES:
            return self.load_recipe(path)
        if suffix in TORCH_SUFFIXES:
            from studio.gui.dialogs.torch_open import ask_torch_options

            opts = ask_torch_options(self, path)
            if opts is None:
                self.message(f"{path.name} not opened")
                return False
            return self.open_model(path, wait=wait, factory=opts.factory, trust_pickle=opts.trust_pickle,
                                   input_shape=opts.input_shape)  # fmt: skip
        return self.open_model(path, wait=wait)

    def open_model(
        self,
        path: Path,
        *,
        wait: bool = False,
        factory: str | None = None,
        trust_pickle: bool = False,
        input_shape: tuple[int, ...] | None = None,
    ) -> bool:
        """Load a model on a worker (the window stays responsive); the table fills when the
        analysis is ready and `model_opened` fires. A bad file shows an error dialog and changes
        nothing; a PyTorch export that needs an input shape asks for one and tries again.
        `wait=True` blocks (processing events) until done and returns the outcome; otherwise
        returns True once the load started."""
        path = Path(path)
        if self.opening is not None and not self.opening.done.is_set():
            self.jobs.cancel(self.opening)
        self.message(f"opening {path.name}…", 0)
        gen = self._model_generation = self._model_generation + 1
        session = self.session
        job = self.jobs.start(
            f"Open {path.name}",
            lambda ctx: prepare_model(
                session, path, factory, trust_pickle=trust_pickle, input_shape=input_shape
            ),
            pool=self._open_pool,
        )
        self.opening = job
        outcome: dict[str, bool] = {}

        def done(prepared):
            if gen != self._model_generation:
                return  # another open superseded this one
            try:
                self.session.install(prepared)
            except Exception as e:  # noqa: BLE001 - a loader bug must not close the window
                outcome["ok"] = False
                show_exception(self, "Cannot open model", e)
                self.model_opened.emit(False)
                return
            self._close_workspace()
            self._model_loaded()
            self._add_recent(path)
            outcome["ok"] = True
            self.model_opened.emit(True)

        def failed(message: str, details: str):
            if gen != self._model_generation:
                return
            if input_shape is None and path.suffix.lower() in TORCH_SUFFIXES and needs_input_shape(message):
                from studio.gui.dialogs.torch_open import TorchOpenOptions, ask_input_shape

                opts = ask_input_shape(self, path, TorchOpenOptions(factory, trust_pickle))
                if opts is not None:  # try again with the shape; `wait` callers get that outcome
                    outcome["retry"] = True
                    outcome["ok"] = self.open_model(path, wait=wait, factory=opts.factory,
                                                    trust_pickle=opts.trust_pickle, input_shape=opts.input_shape)  # fmt: skip
                    return
            outcome["ok"] = False
            self.message(f"could not open {path.name}: {message}")
            show_error(self, "Cannot open model", message, hint=details if "Traceback" not in details else "",
                       details=details if "Traceback" in details else "")  # fmt: skip
            self.model_opened.emit(False)

        job.signals.finished.connect(done)
        job.signals.failed.connect(failed)
        job.signals.cancelled.connect(lambda: outcome.setdefault("ok", False))
        if not wait:
            return True
        from PySide6.QtCore import QEventLoop

        loop = QEventLoop()
        job.signals.ended.connect(loop.quit)  # queued after finished/failed, so `outcome` is set
        if not job.done.is_set() or "ok" not in outcome:
            loop.exec()
        return outcome.get("ok", False)

    def _model_loaded(self) -> None:
        s = self.session
        self._model_generation += 1
        self.undo_stack.clear()
        self.selected_variant = None
        self.branch_parent = None
        self.current_layer = None
        self.sensitivity = None
        self.candidates = []
        self.layer_model.heat = {}  # (no repaint: the reset below rebuilds the rows)
        self.banner.hide()
        self.jobs_panel.clear_interrupted()
        if self.heatmap is not None:
            self.heatmap.clear()
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
            # The plan colouring follows edits, but never replaces a diff / sensitivity colouring.
            if self.graph.current_coloring() in (PLAN_COLORING, "colour: none"):
                self.graph.set_node_colors(vals, PLAN_COLORING)
            else:
                self.graph.update_node_colors(vals, PLAN_COLORING)
        except Exception as e:  # noqa: BLE001 - colouring is cosmetic
            self.message(f"graph colouring failed: {e}")

    def _on_layer_selected(self, name: str) -> None:
        if self._syncing:
            return
        self.current_layer = name
        self._save_selection()
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

    def focus_filter(self) -> None:
        """Ctrl+F: show the layer table and put the cursor in its filter box."""
        self.tabs.setCurrentWidget(self.table)
        self.table.filter.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.table.filter.selectAll()

    def cancel_selected_job(self) -> bool:
        """Esc: cancel the running job selected in the Jobs panel, else the newest running one.
        An open plan editor takes Esc first (it closes the editor), so Esc never cancels by accident."""
        view = self.table.view
        if view.state() == QAbstractItemView.State.EditingState:
            view.setFocus()  # closes the editor like Esc would (its value is committed already)
            return False
        job = self.jobs_panel.selected_job()
        running = [j for j in self.jobs.running() if j is not self.opening]
        if job is None or job.done.is_set():
            job = running[-1] if running else None
        if job is None:
            self.message("no running job to cancel")
            return False
        self.jobs.cancel(job)
        self.message(f"cancelling {job.name}…")
        return True

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
        self.plot.set_variants(self.session.variants + self.candidates)
        self.history.set_variants(self.session.variants, self.selected_variant)
        self.diff_view.set_variants(self.session.variants)
        self._update_actions()

    def restore_variant(self, vid: str) -> None:
        """Plot click / history branch: the variant's recipe becomes the current recipe (one undo
        step) and new variants made from it become its children."""
        e = self.session.variant(vid)
        if e is None:
            cand = next((c for c in self.candidates if c.id == vid), None)
            if cand is not None:
                self.branch_parent = None
                self.layer_model.set_recipe(cand.recipe, f"Load {cand.label}")
                self.message(f"{cand.label} loaded into the table: {cand.recipe.summary()}")
            return
        self.selected_variant = vid
        self.branch_parent = None if e.is_original else vid
        self.history.select(vid)
        self._save_selection()
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

    def _data_paths_or_error(self):
        try:
            return self.session.data_paths()
        except StudioError as e:
            show_error(self, "Data problem", e.message, hint=e.hint or "")
            return None

    def measure_original(self) -> Job | None:
        s = self.session
        if s.handle is None:
            return None
        spec = model_spec(s.handle)
        if spec is not None:  # evaluated + benchmarked in a child process (see state.py)
            paths = self._data_paths_or_error()
            if paths is None:
                return None
            fn = functools.partial(
                subprocess_measure_job, spec=spec, data_path=paths[0], settings=copy.copy(s.settings)
            )
        else:
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

    def apply_and_measure(self, recipe: Recipe | None = None, what: str = "Apply & measure") -> Job | None:
        """Compress with the current recipe (or `recipe`), evaluate, benchmark; a new point on
        the plot, a new child of `branch_parent` in the history."""
        s = self.session
        if s.handle is None:
            self.message("open a model first")
            return None
        recipe = recipe or s.recipe
        try:
            from studio.core.pipeline import resolve_plan

            resolve_plan(s.analysis, recipe, s.registry)  # recipe errors show now, not in the job
        except StudioError as e:
            show_error(self, "The recipe cannot be applied", e.message, hint=e.hint or "")
            return None
        spec = model_spec(s.handle)
        if spec is not None:  # the whole job runs in a child process (see state.py)
            paths = self._data_paths_or_error()
            if paths is None:
                return None
            label = s.next_label()
            fn = functools.partial(
                subprocess_apply_job,
                spec=spec,
                recipe=recipe,
                data_path=paths[0],
                calib_path=paths[1],
                settings=copy.copy(s.settings),
                out_dir=self._variants_dir(),
                label=label,
                parent=self.branch_parent,
            )
            job = self._start(f"{what} {label}", fn, self._on_variant_measured)
            return self._log_job(
                job, "measure", {"recipe": recipe, "label": label, "parent": self.branch_parent}
            )
        got = self._data_or_error()
        if got is None:
            return None
        label = s.next_label()
        fn = functools.partial(
            apply_and_measure_job,
            handle=s.handle,
            recipe=recipe,
            data=got[0],
            calibration=got[1],
            settings=copy.copy(s.settings),
            out_dir=self._variants_dir(),
            label=label,
            registry=s.registry,
            parent=self.branch_parent,
        )
        job = self._start(f"{what} {label}", fn, self._on_variant_measured)
        return self._log_job(job, "measure", {"recipe": recipe, "label": label, "parent": self.branch_parent})

    def _log_job(self, job: Job, kind: str, params: dict) -> Job:
        """Record a job in the open workspace with what it needs to run again, so a crash or
        kill leaves it re-runnable (Workspace.interrupted_jobs on the next open)."""
        ws = self.workspace
        if ws is None:
            return job
        try:
            jid = ws.start_job(kind, params)
        except StudioError as e:
            self.message(f"workspace job log not updated: {e.message}")
            return job
        job.workspace_id = jid

        def end(status: str, message: str = "", result=None) -> None:
            if ws is not self.workspace or ws.closed:
                return  # closing the workspace marks its unfinished jobs itself
            vid = getattr(result, "id", None)
            vid = vid if vid in {v.id for v in ws.variants()} else None
            self._ws_call(lambda w: w.finish_job(jid, status, message, variant_id=vid))

        # Connected after _start's slots, so a finished variant is already stored (its id is the
        # workspace's) when the job is closed.
        job.signals.finished.connect(lambda r: end("finished", result=r))
        job.signals.failed.connect(lambda m, _d: end("failed", m))
        job.signals.cancelled.connect(lambda: end("cancelled", "cancelled by the user"))
        return job

    def rerun_interrupted(self, job_id: str) -> Job | None:
        """Start an interrupted workspace job again with the recipe (and parent) it was started
        with; the old log entry says which job re-ran it."""
        ws = self.workspace
        if ws is None:
            return None
        try:
            kind, params = ws.rerun_info(job_id)
            old_message = ws.job(job_id).message or "interrupted"
        except StudioError as e:
            show_error(self, "Cannot re-run the job", e.message, hint=e.hint or "")
            return None
        recipe = params.get("recipe")
        if kind not in RERUN_KINDS or not isinstance(recipe, Recipe):
            self.message(f"a {kind!r} job cannot be re-run from the window")
            return None
        parent = params.get("parent")
        saved = self.branch_parent
        self.branch_parent = parent if parent in {v.id for v in self.session.variants} else None
        try:
            job = self.apply_and_measure(recipe=recipe, what="Re-run")
        finally:
            self.branch_parent = saved
        if job is not None:
            new = getattr(job, "workspace_id", "") or job.name
            self._ws_call(
                lambda w: w.finish_job(job_id, "interrupted", f"{old_message}; re-run as job {new}")
            )
            self.message(f"re-running the interrupted job with its recipe: {recipe.summary()}")
        return job

    def _show_interrupted_jobs(self, ws) -> None:
        """Rows with a Re-run button for the jobs the last crash or kill interrupted."""
        for jid in ws.interrupted_jobs:
            try:
                rec = ws.job(jid)
                kind, params = ws.rerun_info(jid)
            except StudioError:
                continue
            recipe = params.get("recipe")
            label = params.get("label") or jid
            what = "Apply & measure" if kind in RERUN_KINDS else kind.capitalize()
            tip = rec.message or "interrupted"
            if isinstance(recipe, Recipe):
                tip += f"\nrecipe: {recipe.summary()}"
            runnable = kind in RERUN_KINDS and isinstance(recipe, Recipe)
            rerun = functools.partial(self.rerun_interrupted, jid) if runnable else None
            self.jobs_panel.add_interrupted(jid, f"{what} {label} (interrupted)", tip, rerun)
        if ws.interrupted_jobs:
            self.jobs_dock.show()
            self.jobs_dock.raise_()

    def _variants_dir(self) -> Path:
        return self.session.work_dir / "variants"

    def _on_variant_measured(self, entry: VariantEntry) -> None:
        self._store_in_workspace(entry)
        self.session.add_variant(entry)
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
        spec = model_spec(self.session.handle)
        if spec is not None:  # in a child process: ORT session creation holds the GIL
            paths = self._data_paths_or_error()
            if paths is None:
                return None
            fn = functools.partial(
                subprocess_measure_job, spec=(str(e.onnx_path), None), data_path=paths[0],
                settings=copy.copy(self.session.settings), reference=spec, bench=False,
            )  # fmt: skip
            return self._start(f"Evaluate {e.label}", fn, lambda ms: self._merge_metrics(e, ms))
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
        if e.onnx_path.suffix.lower() == ".onnx":  # in a child process, like Apply & measure
            fn = functools.partial(
                subprocess_measure_job, spec=(str(e.onnx_path), None), data_path=None, settings=settings,
                evaluate_model=False,
            )  # fmt: skip
            return self._start(f"Benchmark {e.label}", fn, lambda ms: self._merge_metrics(e, ms))
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
        """Create a workspace holding this session's variants (tree, notes, metrics, recipe being
        edited, selection); later changes autosave into it."""
        ws_mod = self._workspace_module()
        if ws_mod is None or self.session.handle is None:
            return False
        try:
            ws = ws_mod.Workspace.create(path, self.session.handle)
        except StudioError as e:
            show_error(self, "Cannot save workspace", e.message, hint=e.hint or "")
            return False
        self._close_workspace()
        self.workspace = ws
        orig = self.session.original()
        if orig and orig.metrics:
            self._ws_call(lambda w: w.add_metrics(ws_mod.ORIGINAL, orig.metrics))
        for e in list(self.session.variants):
            if not e.is_original:
                self._store_in_workspace(e)
        self._autosave_recipe()
        self._refresh_plot()
        self.message(f"workspace saved to {path}; changes are saved automatically")
        return True

    def _store_in_workspace(self, entry: VariantEntry) -> None:
        """Add a variant to the open workspace; the entry (and its children) take the
        workspace's id so history, plot and diff all name it the same way."""
        ws = self.workspace
        if ws is None or entry.variant is None:
            return
        known = {v.id for v in ws.variants()}
        parent = entry.parent if entry.parent in known else None
        entry.variant.parent = parent
        # A variant measured in a child process is already a file: link/copy it, never
        # parse + re-serialize the model here on the UI thread.
        v = entry.variant
        external = getattr(v, "external_data", False)  # (> 2 GB models: re-saved from the proto)
        file = v.path if isinstance(v, FileVariant) and v.path.exists() and not external else None
        try:
            vid = ws.add_variant(
                entry.variant, entry.label, metrics=entry.metrics, parent=parent, note=entry.note, file=file
            )
        except StudioError as e:
            self.message(f"workspace not updated: {e.message}")
            return
        old = entry.id
        entry.id = vid
        entry.onnx_path = ws.dir / f"{vid}.onnx"
        entry.variant.provenance["id"] = vid
        for v in self.session.variants:
            if v.parent == old:
                v.parent = vid
        if self.branch_parent == old:
            self.branch_parent = vid
        if self.selected_variant == old:
            self.selected_variant = vid

    def open_workspace_dialog(self) -> None:
        ws_mod = self._workspace_module()
        if ws_mod is None:
            return self.load_recipe_dialog()
        path, _ = QFileDialog.getOpenFileName(self, "Open workspace", "", "Workspaces (*.studio)")
        if path:
            self.open_workspace(Path(path))

    def open_workspace(self, path: Path) -> bool:
        """Reopen a workspace: source model, variants tree + metrics (plot points), the recipe
        being edited, the selected layer and variant. A source that changed on disk since the
        workspace was made is said in a banner."""
        ws_mod = self._workspace_module()
        if ws_mod is None:
            self.message("workspaces are not available in this build")
            return False
        path = Path(path)
        try:
            ws = ws_mod.Workspace.open(path)
        except StudioError as e:
            show_error(self, "Cannot open workspace", e.message, hint=e.hint or "")
            return False
        try:
            handle = ws.load_source()
            self.session.open_handle(handle)
            entries = []
            for rec in ws.variants():
                if rec.missing:
                    continue
                entries.append(
                    VariantEntry(rec.id, rec.name, rec.recipe, list(rec.metrics), rec.path,
                                 warnings=list(rec.warnings), parent=rec.parent_id, note=rec.note)
                )  # fmt: skip
            orig_metrics = ws.metrics(ws_mod.ORIGINAL)
            recipe = ws.current_recipe()
            sel = ws.get_state("selection", {}) or {}
        except StudioError as e:
            ws.close()
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
        self.session._counter = len(entries)
        if recipe is not None:
            self.layer_model.apply_recipe(recipe)
        ids = {e.id for e in self.session.variants}
        self.selected_variant = sel.get("variant") if sel.get("variant") in ids else None
        self.branch_parent = sel.get("branch_parent") if sel.get("branch_parent") in ids else None
        if isinstance(sel.get("plot_x"), str):
            i = self.plot.x_axis.findData(sel["plot_x"])
            if i >= 0:
                self.plot.x_axis.setCurrentIndex(i)
        self._refresh_plot()
        self._show_interrupted_jobs(ws)
        if sel.get("layer") and self.session.layer(sel["layer"]) is not None:
            self._on_layer_selected(sel["layer"])
        notes = []
        if ws.source_changed:
            notes.append(
                f"The source model {ws.source_path.name} changed on disk since this workspace was made: "
                "stored variants were made from the old file; new ones use the file as it is now."
            )
        notes += [m for m in ws.messages if "changed on disk" not in m]
        if notes:
            self.show_banner(" ".join(notes))
        self.message(f"workspace {path.name}: {len(entries)} variant(s)" + (f"; {notes[0]}" if notes else ""))
        self._add_recent(path)
        self.model_opened.emit(True)
        return True

    def show_banner(self, text: str) -> None:
        """A dismissable notice above the tabs (things the user must know, but not a dialog)."""
        self.banner_label.setText(text)
        self.banner.show()

    def _ws_call(self, fn) -> None:
        try:
            fn(self.workspace)
        except StudioError as e:
            self.message(f"workspace not updated: {e.message}")

    def _autosave_recipe(self) -> None:
        if self.workspace is not None:
            self._ws_call(lambda ws: ws.set_current_recipe(self.session.recipe))
            self._ws_call(lambda ws: ws.set_state("selection", self.selection_state()))

    def selection_state(self) -> dict:
        """What a reopened workspace restores besides recipe and variants."""
        return {
            "layer": self.current_layer,
            "variant": self.selected_variant,
            "branch_parent": self.branch_parent,
            "plot_x": self.plot.x_axis.currentData(),
        }

    def _save_selection(self) -> None:
        if self.workspace is not None:
            self._autosave_timer.start()

    def _close_workspace(self) -> None:
        if self.workspace is not None:
            try:
                self._autosave_timer.stop()
                self._autosave_recipe()
                self.workspace.close()
            finally:
                self.workspace = None

    # ------------------------------------------------------------------ history

    def branch_from(self, vid: str) -> None:
        """Load a variant's recipe into the table (undoable); new variants become its children."""
        self.restore_variant(vid)

    def _on_history_selected(self, vid: str) -> None:
        self.selected_variant = vid
        self._save_selection()

    def rename_variant(self, vid: str, name: str) -> None:
        e = self.session.variant(vid)
        if e is None or e.is_original or not name.strip():
            return
        e.label = name.strip()
        if self.workspace is not None:
            self._ws_call(lambda ws: ws.rename(vid, e.label))
        self._refresh_plot()

    def annotate_variant(self, vid: str, note: str) -> None:
        e = self.session.variant(vid)
        if e is None or e.is_original:
            return
        e.note = note
        if self.workspace is not None:
            self._ws_call(lambda ws: ws.annotate(vid, note))
        self._refresh_plot()

    def delete_variant(self, vid: str) -> None:
        """Remove a variant and its file (children move up to its parent). The view confirmed."""
        e = self.session.variant(vid)
        if e is None or e.is_original:
            return
        if self.workspace is not None and vid in {v.id for v in self.workspace.variants()}:
            self._ws_call(lambda ws: ws.delete(vid))
        elif e.onnx_path is not None and e.onnx_path.parent == self._variants_dir():
            e.onnx_path.unlink(missing_ok=True)
        self.session.remove_variant(vid)
        if self.selected_variant == vid:
            self.selected_variant = None
        if self.branch_parent == vid:
            self.branch_parent = e.parent
        self._refresh_plot()
        self.message(f"deleted {e.label}")

    # ------------------------------------------------------------------ diff

    def _proto_of(self, e: VariantEntry):
        """The ONNX model of a plot entry (loaded from its file when not in memory)."""
        if e.is_original:
            return self.session.handle.proto
        if e.variant is not None:
            return e.variant.proto
        from studio.core.model import load_onnx_file

        return load_onnx_file(e.onnx_path)

    def compare_variants(self, a: str, b: str) -> Job | None:
        """Diff two models (original or variants) on a worker; fills the Diff dock."""
        ea, eb = self.session.variant(a), self.session.variant(b)
        if ea is None or eb is None or self.session.handle is None:
            return None

        def fn(ctx):
            from studio.core.diff import diff_models

            ctx.report(0.1, "loading models")
            pa, pb = self._proto_of(ea), self._proto_of(eb)
            ctx.report(0.3, "comparing layers")
            return diff_models(pa, pb)

        self.diff_view.choose(a, b)

        def done(diff):
            self.diff_view.set_diff(diff, ea.label, eb.label)
            self.diff_dock.show()
            self.diff_dock.raise_()

        return self._start(f"Diff {ea.label} vs {eb.label}", fn, done)

    def color_graph_by_diff(self) -> None:
        diff = self.diff_view.diff
        if diff is None or GraphView is None:
            return
        self.graph.set_node_colors(diff_ratios(diff), DIFF_COLORING)
        self.tabs.setCurrentWidget(self.graph)

    # ------------------------------------------------------------------ report

    def report_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Write report into folder", str(Path.home()))
        if folder:
            self.write_report(Path(folder))

    def write_report(self, folder: Path) -> Job | None:
        """report.html + report.md of every measured variant (the selected one described in
        detail), written on a worker by `studio.core.report.write_report`."""
        s = self.session
        entries = [e for e in s.variants if not e.is_original]
        if s.handle is None or not entries:
            self.message("measure at least one variant before writing a report")
            return None
        ids = [e.id for e in entries]
        primary = ids.index(self.selected_variant) if self.selected_variant in ids else len(ids) - 1
        orig = s.original()
        handle = s.handle

        def fn(ctx):
            from studio.core.pipeline import Variant
            from studio.core.report import write_report

            pairs = []
            for i, e in enumerate(entries):
                ctx.report(0.5 * i / len(entries), f"loading {e.label}")
                v = (
                    copy.copy(e.variant)
                    if e.variant is not None
                    else Variant(self._proto_of(e), e.recipe, {"id": e.id}, parent=e.parent)
                )
                v.name = e.label  # the report labels variants by `name` when they have one
                pairs.append((v, list(e.metrics)))
            ctx.report(0.6, "writing the report")
            return write_report(folder, original=handle, variants=pairs,
                                original_metrics=list(orig.metrics) if orig else [], primary=primary)  # fmt: skip

        def done(paths):
            self.last_report = paths
            self.message(f"report written: {paths[0]} and {paths[1].name}")

        return self._start("Write report", fn, done)

    # ------------------------------------------------------------------ sensitivity / search / distill

    def analyze_sensitivity(self) -> Job | None:
        """Measure every layer × setting drop on calibration samples; fills the heatmap live."""
        s = self.session
        if s.handle is None:
            return None
        try:
            from studio.core import sensitivity
        except ImportError:
            self.message("sensitivity analysis is not available in this build")
            return None
        try:
            calib = s.calibration_dataset()
        except StudioError as e:
            show_error(self, "Data problem", e.message, hint=e.hint or "")
            return None
        try:
            text = s.settings.sensitivity_settings
            settings = (
                sensitivity.parse_settings(text)
                if text
                else sensitivity.default_settings(has_calibration=True)
            )
        except StudioError as e:
            show_error(self, "Bad sensitivity settings", e.message, hint=e.hint or "")
            return None
        handle = s.handle
        if self.heatmap is not None:
            self.heatmap.start([la.name for la in s.analysis.layers], [x.key for x in settings])
            self.heatmap_dock.show()
            self.heatmap_dock.raise_()

        def fn(ctx):
            return sensitivity.sweep(handle, calib, settings=settings, ctx=ctx)

        def done(table):
            self.sensitivity = table
            if self.heatmap is not None:
                self.heatmap.set_table(table)
            self.color_by_sensitivity("")
            self.message(
                f"sensitivity measured: {len(table.layers)} layers on {table.n_samples} samples ({table.kind})"
            )

        job = self._start("Analyze sensitivity", fn, done)
        if self.heatmap is not None:
            job.signals.payload.connect(self._on_sensitivity_payload)
        return job

    def _on_sensitivity_payload(self, payload) -> None:
        if (
            isinstance(payload, dict)
            and payload.get("type") == "sensitivity_row"
            and self.heatmap is not None
        ):
            self.heatmap.add_row(payload)

    def color_by_sensitivity(self, key: str = "") -> None:
        """Graph + layer table coloured by each layer's drop for `key` (worst over settings if "")."""
        if self.heatmap is None:
            return
        vals = self.heatmap.layer_values(key)
        if not vals:
            return
        label = f"sensitivity: {key or 'worst'} drop"
        self.layer_model.set_heat(vals, label, self.heatmap.scale)
        if GraphView is not None:
            self.graph.set_node_colors(vals, label)

    def auto_compress_dialog(self):
        """Non-modal dialog: target + max drop; the search runs as a job, candidates go live on
        the trade-off plot, "Load into table" applies a candidate's recipe (undoable)."""
        from studio.gui.dialogs.auto_compress import AutoCompressDialog

        if self.session.handle is None:
            return None
        dlg = getattr(self, "_auto_dialog", None)
        if dlg is None:
            dlg = AutoCompressDialog(self)
            dlg.run_requested.connect(self.run_auto_compress)
            dlg.cancel_requested.connect(
                lambda: self.auto_job is not None and self.jobs.cancel(self.auto_job)
            )
            dlg.load_requested.connect(self.load_candidate)
            self._auto_dialog = dlg
        dlg.show()
        dlg.raise_()
        return dlg

    def run_auto_compress(self, target: str, max_drop: float, max_evals: int) -> Job | None:
        s = self.session
        try:
            from studio.core import search
        except ImportError:
            self.message("auto-compress is not available in this build")
            return None
        try:
            targets = [search.parse_target(target)]
            calib = s.calibration_dataset()
            heldout = s.eval_dataset() if (s.eval_data or s.calib_data) else None
        except StudioError as e:
            show_error(self, "Cannot start the search", e.message, hint=e.hint or "")
            return None
        handle, table, dlg = s.handle, self.sensitivity, self._auto_dialog
        repeats = max(self.session.settings.bench_runs, 3)

        def fn(ctx):
            return search.auto_compress(handle, calib, targets, max_drop=max_drop, heldout=heldout, table=table,
                                        max_evals=max_evals, latency_repeats=repeats, ctx=ctx)  # fmt: skip

        self.candidates = []
        self._refresh_plot()
        dlg.set_running(True)
        job = self._start(f"Auto-compress {target}", fn, self._on_search_done)
        self.auto_job = job
        job.signals.payload.connect(self._on_search_payload)
        job.signals.progress.connect(dlg.set_progress)
        job.signals.failed.connect(lambda *_a: dlg.finished(None))
        job.signals.cancelled.connect(lambda: dlg.finished(None))
        return job

    def _on_search_payload(self, payload) -> None:
        if not isinstance(payload, dict):
            return
        if payload.get("type") == "sensitivity_row" and self.heatmap is not None:
            if not self.heatmap.keys:
                self.heatmap.start([la.name for la in self.session.analysis.layers], [])
            self.heatmap.add_row(payload)
        elif payload.get("type") == "candidate":
            cand = payload["candidate"]
            self._auto_dialog.add_candidate(cand)
            entry = candidate_entry(cand)
            if entry is not None:
                self.candidates = [c for c in self.candidates if c.id != entry.id] + [entry]
                self._refresh_plot()

    def _on_search_done(self, result) -> None:
        if result.table is not None:
            self.sensitivity = result.table
            if self.heatmap is not None:
                self.heatmap.set_table(result.table)
        self._auto_dialog.finished(result)
        self.message(result.message)

    def load_candidate(self, cand: dict) -> None:
        """Put a search candidate's recipe into the table (one undo step)."""
        recipe = Recipe.model_validate(cand["recipe"])
        self.branch_parent = None
        self.layer_model.set_recipe(recipe, f"Load auto-compress candidate {cand['id']}")
        self.message(f"candidate {cand['id']} loaded into the table: {recipe.summary()}")

    def distill_dialog(self):
        """Fine-tune (distill) the current recipe against the original PyTorch model."""
        from studio.gui.dialogs.distill_dialog import DistillDialog

        s = self.session
        if s.handle is None or not getattr(s.handle, "torch_source", None):
            self.message("fine-tuning needs a model opened from PyTorch (.pt/.pth)")
            return None
        dlg = DistillDialog(self, s.recipe.summary())
        dlg.run_requested.connect(lambda params, d=dlg: self.run_distill(params, d))
        dlg.cancel_requested.connect(
            lambda: self.distill_job is not None and self.jobs.cancel(self.distill_job)
        )
        self._distill_dialog = dlg
        dlg.show()
        return dlg

    def run_distill(self, params: dict, dlg=None) -> Job | None:
        """Apply & measure the current recipe plus a whole-model `finetune: distill` step."""
        from studio.core.recipe import Step

        s = self.session
        finetune = Step(technique="distill", params=dict(params))
        recipe = s.recipe.model_copy(
            update={"defaults": s.recipe.defaults.model_copy(update={"finetune": finetune})}
        )
        job = self.apply_and_measure(recipe=recipe, what="Fine-tune")
        self.distill_job = job
        if job is not None and dlg is not None:
            dlg.set_running(True)
            job.signals.payload.connect(dlg.add_point)
            job.signals.progress.connect(dlg.set_progress)
            job.signals.finished.connect(lambda e: dlg.finished(f"done: {e.label}"))
            job.signals.failed.connect(lambda m, _d: dlg.finished(f"failed: {m}"))
            job.signals.cancelled.connect(lambda: dlg.finished("cancelled"))
        return job

    # ------------------------------------------------------------------ export

    @staticmethod
    def _file_variant(ws, e: VariantEntry) -> FileVariant:
        rec = ws.variant(e.id)
        prov = {**dict(rec.provenance), "id": rec.id}
        return FileVariant(rec.path, rec.recipe, prov, rec.parent_id, rec.warnings, rec.metrics)

    def export_dialog(self):
        from studio.gui.dialogs.export_dialog import ExportDialog

        if self.workspace is not None:
            # Stored variants stay in their files (FileVariant): the export job parses the model
            # on its worker, not here on the UI thread.
            for e in self.session.variants:
                if not e.is_original and e.variant is None and e.onnx_path is not None:
                    self._ws_call(lambda ws, e=e: setattr(e, "variant", self._file_variant(ws, e)))
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

    def about(self):
        """Version, loaded techniques + plugin load errors, settings / cache paths (non-blocking)."""
        from studio.gui.dialogs.about import AboutDialog, about_html

        text = about_html(self.session.registry, self._settings().fileName(), self.session.work_dir)
        dlg = AboutDialog(self, text)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.open()
        return dlg

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
