"""Diff dock: per-layer deltas between two models (the original or any variant).

Numbers come from `studio.core.diff.diff_models` (read from the two graphs: estimated from
structure, not measured). The window runs the diff in a worker and calls `set_diff`.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.gui.state import VariantEntry

HEADERS = ["Layer", "Size A → B", "Params A → B", "MACs A → B", "Precision", "Changes"]
LAYER, BYTES, PARAMS, MACS, PRECISION, CHANGES = range(6)
STATUS_COLOR = {"removed": QColor(228, 87, 86, 60), "added": QColor(84, 162, 75, 60)}


def _short(n: float) -> str:
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def _pair(a, b) -> str:
    if a == b:
        return _short(a)
    ratio = f" ({b / a:.2f}×)" if a else ""
    return f"{_short(a)} → {_short(b)}{ratio}"


def diff_ratios(diff) -> dict[str, float]:
    """Layer name -> weight bytes after / before (what the graph is coloured by)."""
    out = {}
    for d in diff.layers:
        if d.status == "added":
            continue
        out[d.name] = d.bytes_b / d.bytes_a if d.bytes_a else 1.0
    return out


class DiffView(QWidget):
    """Two pickers (A, B), a Compare button and the per-layer delta table."""

    compare_requested = Signal(str, str)  # variant ids (A, B); "original" for the source model
    color_graph_requested = Signal()
    layer_selected = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.a = QComboBox()
        self.b = QComboBox()
        for c in (self.a, self.b):
            c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            c.setMinimumContentsLength(10)
        self.compare = QPushButton("Compare")
        self.compare.clicked.connect(self._compare)
        self.color_btn = QPushButton("Colour graph")
        self.color_btn.setToolTip("colour the graph tab by size after / before of each layer")
        self.color_btn.setEnabled(False)
        self.color_btn.clicked.connect(self.color_graph_requested)
        top = QHBoxLayout()
        top.addWidget(QLabel("A"))
        top.addWidget(self.a, 1)
        top.addWidget(QLabel("B"))
        top.addWidget(self.b, 1)
        top.addWidget(self.compare)
        top.addWidget(self.color_btn)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(CHANGES, QHeaderView.ResizeMode.Stretch)
        self.table.currentCellChanged.connect(self._row_changed)
        self.caption = QLabel("Pick two models and press Compare.")
        self.caption.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.caption)
        self.diff = None

    def set_variants(self, entries: list[VariantEntry]) -> None:
        """Refill the pickers, keeping the current choices when they still exist."""
        keep = (self.a.currentData(), self.b.currentData())
        for c in (self.a, self.b):
            c.blockSignals(True)
            c.clear()
            for e in entries:
                c.addItem(e.label, e.id)
            c.blockSignals(False)
        ia = self.a.findData(keep[0]) if keep[0] else self.a.findData("original")
        self.a.setCurrentIndex(max(ia, 0))
        ib = self.b.findData(keep[1]) if keep[1] else -1
        self.b.setCurrentIndex(ib if ib >= 0 else self.b.count() - 1)
        self.compare.setEnabled(self.a.count() > 1)

    def choose(self, a: str, b: str) -> None:
        self.a.setCurrentIndex(max(self.a.findData(a), 0))
        self.b.setCurrentIndex(max(self.b.findData(b), 0))

    def _compare(self) -> None:
        a, b = self.a.currentData(), self.b.currentData()
        if a and b:
            self.caption.setText("comparing…")
            self.compare_requested.emit(a, b)

    def set_diff(self, diff, a_label: str, b_label: str) -> None:
        """Show a `ModelDiff` (changed layers first, then unchanged ones)."""
        self.diff = diff
        rows = sorted(diff.layers, key=lambda d: d.status == "unchanged")
        t = self.table
        t.setSortingEnabled(False)
        t.setRowCount(len(rows))
        for r, d in enumerate(rows):
            changes = "; ".join(d.changes(precision=False)) or d.status
            prec = d.precision_a if d.precision_a == d.precision_b else f"{d.precision_a} → {d.precision_b}"
            cells = [d.name, _pair(d.bytes_a, d.bytes_b), _pair(d.params_a, d.params_b),
                     _pair(d.macs_a, d.macs_b), prec, changes]  # fmt: skip
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                it.setToolTip(f"{d.name}: {changes}" if c in (LAYER, CHANGES) else text)
                if c in (BYTES, PARAMS, MACS):
                    it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if d.status in STATUS_COLOR:
                    it.setBackground(QBrush(STATUS_COLOR[d.status]))
                elif d.status == "unchanged":
                    it.setForeground(QBrush(QColor(140, 140, 140)))
                t.setItem(r, c, it)
        tb = diff.totals
        parts = []
        for key, label in (("model_bytes", "model"), ("weight_bytes", "weights"), ("macs", "MACs")):
            a, b = tb.get(key, (0, 0))
            if a and b:
                parts.append(f"{label} {_short(a)} → {_short(b)} ({b / a:.2f}×)")
        self.caption.setText(
            f"A = {a_label}, B = {b_label}: {len(diff.changed())} of {len(diff.layers)} layers changed; "
            + ", ".join(parts)
            + " (read from the graphs, not measured)"
        )
        self.color_btn.setEnabled(True)

    def _row_changed(self, row: int, _c: int, _pr: int, _pc: int) -> None:
        it = self.table.item(row, LAYER)
        if it is not None:
            self.layer_selected.emit(it.text())
