"""Native graph view: the ONNX graph laid out top-to-bottom, with foldable name groups, colour
by a per-layer metric, and selection synced with the rest of the window.

The layout runs on a QThreadPool worker (pure functions in ``graph_layout``); only building the
QGraphicsItems happens on the UI thread.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, QRectF, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QLinearGradient, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from studio.core.graph import ModelAnalysis
from studio.gui.views.graph_layout import (
    NODE_H,
    DisplayGraph,
    GraphSpec,
    Layout,
    collapse_group,
    default_collapsed,
    expand_group,
    layout_model,
)

# Built-in colourings: label -> LayerInfo attribute (summed over a folded group).
BUILTIN_METRICS = {"params": "params", "MACs": "macs", "weight size": "weight_bytes"}
NO_COLOUR = "colour: none"
OP_FILL = QColor("#f4f5f7")
LAYER_FILL = QColor("#dfe9f7")
GROUP_FILL = QColor("#ece6f5")
IO_FILL = QColor("#e3f1e3")
SELECT_PEN = QColor("#d62728")  # red: not in viridis, so it stands out on any fill
EDGE_COLOR = QColor("#8a8f98")


class _NodeItem(QGraphicsItem):
    """One box: op type (bold) over a short name; painted directly (cheap for ~1000 items)."""

    def __init__(self, index: int, label: str, sublabel: str, kind: str, width: float, is_layer: bool):
        super().__init__()
        self.index = index
        self.label = label
        self.sublabel = sublabel
        self.kind = kind
        self.is_layer = is_layer
        self.rect = QRectF(-width / 2, -NODE_H / 2, width, NODE_H)
        self.fill: QColor | None = None  # metric colour; None = default by kind
        self.selected = False
        self.setAcceptHoverEvents(True)
        self.setCursor(Qt.PointingHandCursor if is_layer or kind == "group" else Qt.ArrowCursor)

    def boundingRect(self) -> QRectF:  # noqa: N802 (Qt override)
        return self.rect.adjusted(-3, -3, 3, 3)

    def base_fill(self) -> QColor:
        if self.fill is not None:
            return self.fill
        return {"group": GROUP_FILL, "input": IO_FILL, "output": IO_FILL}.get(
            self.kind, LAYER_FILL if self.is_layer else OP_FILL
        )

    def paint(self, painter: QPainter, option, widget=None) -> None:
        fill = self.base_fill()
        pen = QPen(SELECT_PEN if self.selected else QColor("#5b6270"), 3.5 if self.selected else 1.0)
        if self.kind == "group" and not self.selected:
            pen.setStyle(Qt.DashLine)
        painter.setPen(pen)
        painter.setBrush(QBrush(fill))
        painter.drawRoundedRect(self.rect, 6, 6)
        # dark fills need light text
        light = fill.lightnessF() < 0.5
        painter.setPen(QColor("#ffffff") if light else QColor("#1d2330"))
        f = painter.font()
        f.setPointSizeF(8.5)
        f.setBold(True)
        painter.setFont(f)
        top = QRectF(self.rect.left(), self.rect.top() + 2, self.rect.width(), NODE_H / 2)
        painter.drawText(top, Qt.AlignCenter, self.label)
        f.setBold(False)
        f.setPointSizeF(7.5)
        painter.setFont(f)
        painter.setPen(QColor("#e8e8e8") if light else QColor("#4a5160"))
        bottom = QRectF(self.rect.left(), self.rect.center().y() - 1, self.rect.width(), NODE_H / 2)
        painter.drawText(bottom, Qt.AlignCenter, self.sublabel)


class _Canvas(QGraphicsView):
    """Wheel zooms about the cursor, drag pans; clicks are reported as node indices."""

    node_clicked = Signal(int)
    node_double_clicked = Signal(int)
    node_context = Signal(int, QPointF)

    def __init__(self, scene: QGraphicsScene, parent=None):
        super().__init__(scene, parent)
        self.setRenderHints(QPainter.Antialiasing | QPainter.TextAntialiasing)
        self.setDragMode(QGraphicsView.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setViewportUpdateMode(QGraphicsView.SmartViewportUpdate)
        self.setBackgroundBrush(QColor("#ffffff"))

    def wheelEvent(self, event) -> None:  # noqa: N802
        factor = 1.0015 ** event.angleDelta().y()
        scale = self.transform().m11()
        if 0.03 < scale * factor < 6:
            self.scale(factor, factor)

    def _node_at(self, pos) -> int | None:
        for it in self.items(pos):
            if isinstance(it, _NodeItem):
                return it.index
        return None

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.LeftButton:
            k = self._node_at(event.position().toPoint())
            if k is not None:
                self.node_clicked.emit(k)
        super().mousePressEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        k = self._node_at(event.position().toPoint())
        if k is not None:
            self.node_double_clicked.emit(k)
            return
        super().mouseDoubleClickEvent(event)

    def contextMenuEvent(self, event) -> None:  # noqa: N802
        k = self._node_at(event.pos())
        if k is not None:
            self.node_context.emit(k, QPointF(event.globalPos()))


class _ColorBar(QWidget):
    """Legend: gradient from the lowest to the highest value, with the metric's name."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = ""
        self.lo = self.hi = 0.0
        self.log = False
        self.stops: list[tuple[float, QColor]] = []
        self.setMinimumWidth(260)
        self.setFixedHeight(26)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def set_scale(self, label: str, lo: float, hi: float, log: bool, stops) -> None:
        self.label, self.lo, self.hi, self.log, self.stops = label, lo, hi, log, stops
        self.setVisible(bool(label))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        if not self.label:
            return
        p = QPainter(self)
        fm = QFontMetricsF(self.font())
        lo_t, hi_t = _fmt(self.lo), _fmt(self.hi)
        name = f"{self.label}{' (log)' if self.log else ''}:"
        x = 2.0
        p.setPen(QColor("#333"))
        p.drawText(QPointF(x, 17), name)
        x += fm.horizontalAdvance(name) + 6
        p.drawText(QPointF(x, 17), lo_t)
        x += fm.horizontalAdvance(lo_t) + 4
        bar_w = max(40.0, self.width() - x - fm.horizontalAdvance(hi_t) - 8)
        grad = QLinearGradient(x, 0, x + bar_w, 0)
        for t, c in self.stops:
            grad.setColorAt(t, c)
        p.setBrush(QBrush(grad))
        p.setPen(QColor("#999"))
        p.drawRect(QRectF(x, 6, bar_w, 14))
        p.setPen(QColor("#333"))
        p.drawText(QPointF(x + bar_w + 4, 17), hi_t)
        p.end()


def _fmt(v: float) -> str:
    a = abs(v)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


class _LayoutSignals(QObject):
    done = Signal(int, object)  # generation, (DisplayGraph, Layout) or Exception


class _LayoutJob(QRunnable):
    def __init__(
        self, generation: int, spec: GraphSpec, collapsed: set, char_w: float, signals: _LayoutSignals
    ):
        super().__init__()
        self.generation, self.spec, self.collapsed, self.char_w, self.signals = (
            generation, spec, set(collapsed), char_w, signals,
        )  # fmt: skip

    def run(self) -> None:
        try:
            result: object = layout_model(self.spec, self.collapsed, char_w=self.char_w)
        except Exception as e:  # a layout bug must not kill the worker thread silently
            result = e
        try:
            self.signals.done.emit(self.generation, result)
        except RuntimeError:
            pass  # the view was deleted while we worked


class GraphView(QWidget):
    """The model's graph. ``set_model`` lays it out off the UI thread; ``layer_selected`` fires
    when the user clicks a weighted node; ``select_layer`` centres and highlights one."""

    layer_selected = Signal(str)
    layout_finished = Signal()  # the scene shows the latest layout (tests and busy indicators)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = QGraphicsScene(self)
        self._canvas = _Canvas(self._scene, self)
        self._canvas.node_clicked.connect(self._on_click)
        self._canvas.node_double_clicked.connect(self._on_double_click)
        self._canvas.node_context.connect(self._on_context)
        self._signals = _LayoutSignals(self)
        self._signals.done.connect(self._on_layout_done)
        # own pool: long jobs on the global pool must not delay a relayout
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._generation = 0
        self._spec: GraphSpec | None = None
        self._analysis: ModelAnalysis | None = None
        self._collapsed: set[tuple[str, ...]] = set()
        self._display: DisplayGraph | None = None
        self._layout: Layout | None = None
        self._items: list[_NodeItem] = []
        self._edge_items: list[QGraphicsPathItem] = []
        self._selected_layer: str | None = None
        self._custom: dict[str, tuple[dict[str, float], str]] = {}  # label -> (values, aggregate)
        self._values: dict[str, float] = {}
        self._aggregate = "sum"
        self._metric_label = ""
        self._fit_pending = True
        self.busy = False

        self._combo = QComboBox()
        self._combo.addItems([NO_COLOUR, *BUILTIN_METRICS])
        self._combo.setToolTip("Colour weighted layers by a metric (folded groups show their sum)")
        self._combo.currentTextChanged.connect(self._on_metric_chosen)
        fit = QPushButton("Fit")
        fit.setToolTip("Fit the whole graph in view")
        fit.clicked.connect(self.fit_to_view)
        expand = QPushButton("Expand all")
        expand.setToolTip("Show every node (slow to navigate for big graphs)")
        expand.clicked.connect(lambda: self._relayout(set()))
        fold = QPushButton("Fold")
        fold.setToolTip("Fold name groups back to the default overview")
        fold.clicked.connect(lambda: self._relayout(default_collapsed(self._spec) if self._spec else set()))
        self._status = QLabel("no model")
        self._status.setStyleSheet("color: #666")
        self._colorbar = _ColorBar()
        self._colorbar.setVisible(False)

        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        for w in (self._combo, fit, expand, fold, self._status):
            bar.addWidget(w)
        bar.addStretch(1)
        bar.addWidget(self._colorbar, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(bar)
        lay.addWidget(self._canvas, 1)
        self._cmap = pg.colormap.get("viridis")

    # ------------------------------------------------------------------ public API

    def set_model(self, proto: onnx.ModelProto, analysis: ModelAnalysis) -> None:
        """Show a new model: folds big graphs by name group and lays out in the background."""
        self._spec = GraphSpec.from_proto(proto)
        self._analysis = analysis
        self._custom.clear()
        self._selected_layer = None
        self._fit_pending = True
        self._relayout(default_collapsed(self._spec))
        if self._combo.currentText() in BUILTIN_METRICS:
            self._on_metric_chosen(self._combo.currentText())

    def select_layer(self, name: str) -> None:
        """Highlight and centre a layer (its folded group box if it is folded); emits nothing."""
        self._selected_layer = name
        item = self._apply_selection()
        if item is not None:
            self._canvas.centerOn(item)

    def set_node_colors(self, values: dict[str, float], label: str, *, aggregate: str = "max") -> None:
        """Colour nodes by ``values`` (layer name -> number) with a colour bar titled ``label``;
        a folded group shows the ``aggregate`` ("max" or "sum") of its layers."""
        self._custom[label] = (dict(values), aggregate)
        if self._combo.findText(label) < 0:
            self._combo.addItem(label)
        if self._combo.currentText() == label:
            self._on_metric_chosen(label)
        else:
            self._combo.setCurrentText(label)  # triggers _on_metric_chosen

    def update_node_colors(self, values: dict[str, float], label: str, *, aggregate: str = "max") -> None:
        """Like ``set_node_colors`` but never switches the colouring the user chose: the values
        behind ``label`` are replaced and repainted only if ``label`` is showing."""
        self._custom[label] = (dict(values), aggregate)
        if self._combo.findText(label) < 0:
            self._combo.addItem(label)
        if self._combo.currentText() == label:
            self._on_metric_chosen(label)

    def current_coloring(self) -> str:
        """Label of the colouring shown (``NO_COLOUR`` when none)."""
        return self._combo.currentText()

    def fit_to_view(self) -> None:
        rect = self._scene.itemsBoundingRect()
        if not rect.isEmpty():
            # big graphs: fitting a 100-layer column makes boxes unreadable; fit the width and
            # show the top instead
            self._canvas.resetTransform()
            sx = self._canvas.viewport().width() / max(rect.width() + 40, 1)
            sy = self._canvas.viewport().height() / max(rect.height() + 40, 1)
            s = min(sx, sy)
            if s < 0.35:
                s = min(max(sx, 0.35), 1.5)
                self._canvas.scale(s, s)
                self._canvas.centerOn(
                    rect.center().x(), rect.top() + self._canvas.viewport().height() / (2 * s)
                )
            else:
                self._canvas.fitInView(rect.adjusted(-20, -20, 20, 20), Qt.KeepAspectRatio)
                if self._canvas.transform().m11() > 1.5:
                    self._canvas.resetTransform()
                    self._canvas.scale(1.5, 1.5)
                    self._canvas.centerOn(rect.center())

    # -------------------------------------------------------------- introspection (tests)

    @property
    def display_graph(self) -> DisplayGraph | None:
        return self._display

    @property
    def current_layout(self) -> Layout | None:
        return self._layout

    @property
    def collapsed_groups(self) -> set[tuple[str, ...]]:
        return set(self._collapsed)

    def node_items(self) -> list[_NodeItem]:
        return list(self._items)

    def edge_items(self) -> list[QGraphicsPathItem]:
        return list(self._edge_items)

    def item_for_layer(self, name: str) -> _NodeItem | None:
        if self._display is None or name not in self._display.index:
            return None
        return self._items[self._display.index[name]]

    def toggle_group(self, group: tuple[str, ...]) -> None:
        """Expand a folded group, or fold an expanded one; relayout happens off-thread."""
        if self._spec is None:
            return
        if group in self._collapsed:
            self._relayout(expand_group(self._spec, self._collapsed, group))
        else:
            self._relayout(collapse_group(self._collapsed, group))

    # ------------------------------------------------------------------ internals

    def _relayout(self, collapsed: set[tuple[str, ...]]) -> None:
        if self._spec is None:
            return
        self._collapsed = set(collapsed)
        self._generation += 1
        self.busy = True
        self._status.setText("laying out…")
        char_w = QFontMetricsF(self._bold_font()).averageCharWidth() * 1.05
        self._pool.start(_LayoutJob(self._generation, self._spec, self._collapsed, char_w, self._signals))

    @staticmethod
    def _bold_font() -> QFont:
        f = QFont()
        f.setPointSizeF(8.5)
        f.setBold(True)
        return f

    def _on_layout_done(self, generation: int, result) -> None:
        if generation != self._generation:
            return  # a newer relayout is on its way
        self.busy = False
        if isinstance(result, Exception):
            self._status.setText(f"layout failed: {result}")
            self.layout_finished.emit()
            return
        display, lay = result
        self._build_scene(display, lay)
        n_ops = sum(len(d.members) for d in display.nodes if d.kind in ("op", "group"))
        n_groups = sum(1 for d in display.nodes if d.kind == "group")
        folded = f", {n_groups} folded groups (double-click to open)" if n_groups else ""
        self._status.setText(f"{len(display.nodes)} boxes for {n_ops} ops{folded}")
        if self._fit_pending:
            self._fit_pending = False
            self.fit_to_view()
        self.layout_finished.emit()

    def _build_scene(self, display: DisplayGraph, lay: Layout) -> None:
        center = None
        if self._display is not None and self._layout is not None:
            center = self._canvas.mapToScene(self._canvas.viewport().rect().center())
        self._scene.clear()
        self._items, self._edge_items = [], []
        self._display, self._layout = display, lay
        pen = QPen(EDGE_COLOR, 1.2)
        pen.setCosmetic(True)
        arrow_brush = QBrush(EDGE_COLOR)
        for pts in lay.edge_paths:
            path = QPainterPath(QPointF(*pts[0]))
            for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
                my = (y0 + y1) / 2
                path.cubicTo(QPointF(x0, my), QPointF(x1, my), QPointF(x1, y1))
            # small arrow head into the target box
            x1, y1 = pts[-1]
            head = QPainterPath(QPointF(x1, y1))
            head.lineTo(x1 - 4, y1 - 7)
            head.lineTo(x1 + 4, y1 - 7)
            head.closeSubpath()
            item = QGraphicsPathItem(path)
            item.setPen(pen)
            item.setZValue(0)
            arrow = QGraphicsPathItem(head, item)
            arrow.setPen(Qt.NoPen)
            arrow.setBrush(arrow_brush)
            self._scene.addItem(item)
            self._edge_items.append(item)
        for i, dn in enumerate(display.nodes):
            it = _NodeItem(i, dn.label, dn.sublabel, dn.kind, dn.width, dn.layer_name is not None)
            it.setPos(lay.x[i], lay.y[i])
            it.setZValue(1)
            it.setToolTip(self._tooltip(dn))
            self._scene.addItem(it)
            self._items.append(it)
        self._scene.setSceneRect(QRectF(-40, -40, lay.width + 80, lay.height + 80))
        self._apply_colors()
        self._apply_selection()
        if center is not None:
            self._canvas.centerOn(center)

    def _tooltip(self, dn) -> str:
        if dn.kind == "group":
            return f"{'/'.join(dn.group)}: {dn.sublabel}\nDouble-click to open"
        lines = [f"{dn.label}: {dn.id}"]
        info = self._analysis.by_name().get(dn.layer_name) if (self._analysis and dn.layer_name) else None
        if info is not None:
            lines.append(f"weight {info.weight_shape}, {info.params:,} params, {info.macs:,} MACs/sample")
        if dn.group:
            lines.append("Double-click to fold its group")
        return "\n".join(lines)

    def _on_click(self, index: int) -> None:
        dn = self._display.nodes[index] if self._display else None
        if dn is None:
            return
        if dn.layer_name is not None:
            self._selected_layer = dn.layer_name
            self._apply_selection()
            self.layer_selected.emit(dn.layer_name)

    def _on_double_click(self, index: int) -> None:
        dn = self._display.nodes[index] if self._display else None
        if dn is None:
            return
        if dn.kind == "group":
            self.toggle_group(dn.group)
        elif dn.group:
            self.toggle_group(dn.group)  # fold the node's own group

    def _on_context(self, index: int, global_pos: QPointF) -> None:
        dn = self._display.nodes[index] if self._display else None
        if dn is None or not dn.group:
            return
        menu = QMenu(self)
        if dn.kind == "group":
            menu.addAction(f"Open {'/'.join(dn.group)}", lambda: self.toggle_group(dn.group))
        for d in range(len(dn.group), 0, -1):
            g = dn.group[:d]
            if dn.kind != "group" or d < len(dn.group):
                menu.addAction(f"Fold {'/'.join(g)}", lambda g=g: self.toggle_group(g))
        menu.popup(global_pos.toPoint())

    def _apply_selection(self) -> _NodeItem | None:
        hit = None
        name = self._selected_layer
        for it in self._items:
            was = it.selected
            it.selected = False
            if was:
                it.update()
        if name and self._display is not None and name in self._display.index:
            hit = self._items[self._display.index[name]]
            hit.selected = True
            hit.update()
        return hit

    # ------------------------------------------------------------------ colouring

    def _on_metric_chosen(self, label: str) -> None:
        if label in BUILTIN_METRICS and self._analysis is not None:
            attr = BUILTIN_METRICS[label]
            self._values = {la.name: float(getattr(la, attr)) for la in self._analysis.layers}
            self._aggregate = "sum"
        elif label in self._custom:
            self._values, self._aggregate = self._custom[label]
        else:
            self._values, self._aggregate = {}, "sum"
            label = ""
        self._metric_label = label
        self._apply_colors()

    def _apply_colors(self) -> None:
        if self._display is None:
            self._colorbar.set_scale("", 0, 0, False, [])
            return
        per_box: dict[int, float] = {}
        for i, dn in enumerate(self._display.nodes):
            vals = [self._values[m] for m in dn.members if m in self._values]
            if vals:
                per_box[i] = sum(vals) if self._aggregate == "sum" else max(vals)
        for it in self._items:
            it.fill = None
        if not per_box or not self._metric_label:
            self._colorbar.set_scale("", 0, 0, False, [])
            for it in self._items:
                it.update()
            return
        arr = np.array(list(per_box.values()), dtype=float)
        lo, hi = float(arr.min()), float(arr.max())
        # counts spanning decades read better on a log scale
        log = lo >= 0 and hi > 0 and hi / max(lo, hi * 1e-6, 1e-12) > 100

        def norm(v: float) -> float:
            if hi <= lo:
                return 1.0
            if log:
                floor = max(lo, hi * 1e-6)
                return (math.log10(max(v, floor)) - math.log10(floor)) / (math.log10(hi) - math.log10(floor))
            return (v - lo) / (hi - lo)

        ts = np.array([norm(v) for v in per_box.values()])
        colors = self._cmap.map(ts, mode="qcolor")
        for (i, _), c in zip(per_box.items(), colors, strict=True):
            self._items[i].fill = c
        for it in self._items:
            it.update()
        stops = [(t, self._cmap.map(np.array([t]), mode="qcolor")[0]) for t in np.linspace(0, 1, 6)]
        self._colorbar.set_scale(self._metric_label, lo, hi, log, stops)

    def node_fill(self, layer_name: str) -> QColor | None:
        """The metric colour of the box that shows ``layer_name`` (None = uncoloured)."""
        it = self.item_for_layer(layer_name)
        return None if it is None else it.fill
