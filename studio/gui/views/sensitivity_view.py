"""Sensitivity dock: a heatmap of layers × settings (the metric drop of the model with only that
one change, measured on calibration samples), filled row by row while the sweep runs.

Colour goes from green (no loss) through yellow to red at `scale_points` (5 points by default);
grey cells were not measured (the tooltip says why); italics mark cells bounded by a stronger
lossless setting instead of measured.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QLinearGradient, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

NA_BRUSH = QBrush(QColor(225, 225, 228))


def drop_color(drop: float, scale: float) -> QColor:
    """Green at 0, yellow at half the scale, red at (and above) `scale` (drops are fractions)."""
    t = min(max(drop / scale, 0.0), 1.0) if scale > 0 else 0.0
    if t < 0.5:
        a, b, u = (99, 190, 123), (255, 235, 132), t / 0.5
    else:
        a, b, u = (255, 235, 132), (248, 105, 107), (t - 0.5) / 0.5
    return QColor(*(round(x + (y - x) * u) for x, y in zip(a, b, strict=True)))


class _Legend(QWidget):
    """Colour ramp with its end labels."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.scale = 0.05
        self.unit = "points"
        self.setMinimumSize(220, 22)

    def paintEvent(self, _e) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        fm = p.fontMetrics()
        lo, hi = "0", f"≥{self.scale * 100:g} {self.unit}"
        wl, wh = fm.horizontalAdvance(lo) + 6, fm.horizontalAdvance(hi) + 6
        r = self.rect().adjusted(wl, 4, -wh, -4)
        g = QLinearGradient(r.left(), 0, r.right(), 0)
        for t in (0.0, 0.5, 1.0):
            g.setColorAt(t, drop_color(t * self.scale, self.scale))
        p.fillRect(r, g)
        p.setPen(self.palette().color(self.foregroundRole()))
        y = self.rect().center().y() + fm.ascent() // 2 - 1
        p.drawText(0, y, lo)
        p.drawText(r.right() + 6, y, hi)
        p.end()


class SensitivityView(QWidget):
    """Heatmap table; `add_row` takes the sweep's live payloads, `set_table` the final table."""

    layer_selected = Signal(str)
    color_graph_requested = Signal(str)  # setting key ("" = worst over settings)

    def __init__(self, parent=None, scale: float = 0.05):
        super().__init__(parent)
        self.scale = scale
        self.keys: list[str] = []
        self.rows: dict[str, dict] = {}
        self.metric = ""
        self.kind = ""
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.horizontalHeader().setMinimumSectionSize(58)
        self.table.currentCellChanged.connect(self._cell_changed)
        self.legend = _Legend()
        self.caption = QLabel("Run Jobs ▸ Analyze Sensitivity to measure each layer's tolerance.")
        self.caption.setWordWrap(True)
        self.color_btn = QPushButton("Colour graph && table")
        self.color_btn.setToolTip("colour the graph and the layer table by the selected setting's drop "
                                  "(or the worst drop of each layer when no column is selected)")  # fmt: skip
        self.color_btn.setEnabled(False)
        self.color_btn.clicked.connect(lambda: self.color_graph_requested.emit(self.current_key()))
        top = QHBoxLayout()
        top.addWidget(QLabel("drop:"))
        top.addWidget(self.legend, 1)
        top.addWidget(self.color_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.caption)

    # ------------------------------------------------------------------ data

    def clear(self) -> None:
        self.keys, self.rows = [], {}
        self.table.clear()
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.color_btn.setEnabled(False)
        self.caption.setText("Run Jobs ▸ Analyze Sensitivity to measure each layer's tolerance.")

    def start(self, layers: list[str], keys: list[str]) -> None:
        """Empty grid for a sweep that is about to run (rows fill in as layers finish)."""
        self.clear()
        self.keys = list(keys)
        self.table.setColumnCount(len(keys))
        self.table.setHorizontalHeaderLabels(keys)
        self.table.setRowCount(len(layers))
        self.table.setVerticalHeaderLabels([_short(n) for n in layers])
        for r, n in enumerate(layers):
            self.table.verticalHeaderItem(r).setToolTip(n)
            self.rows.setdefault(n, {})
        self._layer_rows = {n: r for r, n in enumerate(layers)}
        for c in range(len(keys)):
            self.table.horizontalHeader().setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.caption.setText(f"measuring {len(layers)} layers × {len(keys)} settings…")

    def add_row(self, payload: dict) -> None:
        """One `sensitivity_row` payload from the sweep."""
        name = payload["layer"]
        self.metric, self.kind = payload.get("metric", self.metric), payload.get("kind", self.kind)
        self.rows[name] = payload
        if name not in getattr(self, "_layer_rows", {}):
            r = self.table.rowCount()
            self.table.insertRow(r)
            self.table.setVerticalHeaderItem(r, QTableWidgetItem(_short(name)))
            self._layer_rows = {**getattr(self, "_layer_rows", {}), name: r}
        r = self._layer_rows[name]
        self.table.verticalHeaderItem(r).setToolTip(name)
        for key in (
            list(payload.get("drops", {}))
            + list(payload.get("skipped", {}))
            + list(payload.get("inferred", {}))
        ):
            if key not in self.keys:
                self.keys.append(key)
                self.table.setColumnCount(len(self.keys))
                self.table.setHorizontalHeaderItem(len(self.keys) - 1, QTableWidgetItem(key))
        for c, key in enumerate(self.keys):
            self.table.setItem(r, c, self._cell(name, key, payload))
        self.color_btn.setEnabled(True)

    def _cell(self, layer: str, key: str, row: dict) -> QTableWidgetItem:
        drops, inferred, skipped = row.get("drops", {}), row.get("inferred", {}), row.get("skipped", {})
        v = drops.get(key)
        bound = v is None and key in inferred
        if bound:
            v = inferred[key].get("drops")
        it = QTableWidgetItem()
        it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if v is None:
            it.setText("—" if key not in skipped else "n/a")
            it.setBackground(NA_BRUSH)
            it.setForeground(QBrush(QColor(120, 120, 120)))
            it.setToolTip(f"{layer} · {key}: {skipped.get(key, 'not measured')}")
            return it
        it.setText(f"{v * 100:+.2f}")
        it.setData(Qt.ItemDataRole.UserRole, float(v))
        it.setBackground(QBrush(drop_color(float(v), self.scale)))
        it.setForeground(QBrush(QColor(20, 20, 20)))
        what = f"{self.metric} drop, {self.kind}" if self.metric else "drop"
        tip = f"{layer} · {key}: {v * 100:+.2f} points ({what})"
        if bound:
            f = QFont()
            f.setItalic(True)
            it.setFont(f)
            tip += "\nnot measured: bounded by a stronger setting of the same family that was lossless"
        it.setToolTip(tip)
        return it

    def set_table(self, table) -> None:
        """The finished `SensitivityTable` (fills any row the live updates missed)."""
        if not self.keys:
            self.start(list(table.layers), [s["key"] if "key" in s else "" for s in table.settings])
        for name in table.layers:
            self.add_row({
                "layer": name, "drops": table.drops.get(name, {}), "inferred": table.inferred.get(name, {}),
                "skipped": table.skipped.get(name, {}), "metric": table.metric, "kind": table.kind,
            })  # fmt: skip
        self.table.resizeColumnsToContents()
        cost = table.cost or {}
        speed = f"; {cost['speedup']:.1f}× cheaper than full evaluations" if cost.get("speedup") else ""
        self.caption.setText(
            f"{table.metric} drop in points ({table.kind}) on {table.n_samples} samples of {table.source}; "
            f"baseline {table.baseline:.4f}{speed}. Green = no loss, red ≥ {self.scale * 100:g} points."
        )

    # ------------------------------------------------------------------ queries

    def current_key(self) -> str:
        c = self.table.currentColumn()
        return self.keys[c] if 0 <= c < len(self.keys) and self.table.selectedItems() else ""

    def layer_values(self, key: str = "") -> dict[str, float]:
        """Layer -> drop of `key` (or the worst measured drop of the layer when `key` is "")."""
        out = {}
        for name, row in self.rows.items():
            vals = dict(row.get("drops", {}))
            for k, inf in row.get("inferred", {}).items():
                vals.setdefault(k, inf.get("drops"))
            vals = {k: v for k, v in vals.items() if v is not None}
            if key:
                if key in vals:
                    out[name] = float(vals[key])
            elif vals:
                out[name] = float(max(vals.values()))
        return out

    def _cell_changed(self, row: int, _c: int, _pr: int, _pc: int) -> None:
        it = self.table.verticalHeaderItem(row)
        if it is not None and it.toolTip():
            self.layer_selected.emit(it.toolTip())


def _short(name: str) -> str:
    """`/encoder/layer.0/attention/self/query/MatMul` -> `layer.0/attention/self/query`."""
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1][:1].isupper():
        parts = parts[:-1]  # the op type suffix
    text = "/".join(parts[-4:])
    return text if len(text) <= 48 else "…" + text[-47:]
