"""Trade-off plot: quality (accuracy, or fidelity without labels) against size on disk or latency.

The original is a star; measured variants are filled points; points whose x value is only an
estimate are hollow; the dashed line is the Pareto front over measured points (max quality,
min cost); the vertical line marks the current plan's estimated size. Hover shows the recipe,
click emits `variant_clicked(id)`.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from studio.gui.state import VariantEntry

X_AXES = {"size": "Size on disk", "latency": "Latency p50"}


def pareto_front(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower x and higher y), sorted by x."""
    order = np.lexsort((-ys, xs))
    keep = []
    best = -np.inf
    for i in order:
        if ys[i] > best:
            keep.append(i)
            best = ys[i]
    return np.asarray(keep, dtype=int)


class TradeoffPlot(QWidget):
    variant_clicked = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.entries: list[VariantEntry] = []
        self.plan_estimate_bytes: float | None = None
        self._orig_weight_bytes: float | None = None
        self.x_axis = QComboBox()
        for k, v in X_AXES.items():
            self.x_axis.addItem(v, k)
        self.x_axis.currentIndexChanged.connect(lambda _i: self.refresh())
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setTextFormat(Qt.TextFormat.PlainText)
        top = QHBoxLayout()
        top.addWidget(QLabel("x:"))
        top.addWidget(self.x_axis)
        top.addStretch(1)
        pal = self.palette()
        self.plot = pg.PlotWidget(background=pal.color(QPalette.ColorRole.Base))
        fg = pal.color(QPalette.ColorRole.Text)
        pi = self.plot.getPlotItem()
        for ax in ("left", "bottom"):
            pi.getAxis(ax).enableAutoSIPrefix(False)  # "0.998" reads better than "998 (x0.001)"
            pi.getAxis(ax).setPen(fg)
            pi.getAxis(ax).setTextPen(fg)
        pi.showGrid(x=True, y=True, alpha=0.25)
        pi.setMenuEnabled(False)
        self.legend = pi.addLegend(offset=(-10, -10), labelTextColor=fg)
        accent = pal.color(QPalette.ColorRole.Highlight)
        self.front = pi.plot(
            [], [], pen=pg.mkPen(accent, width=1.5, style=Qt.PenStyle.DashLine), name="Pareto front"
        )
        self.measured = pg.ScatterPlotItem(
            size=10, symbol="o", pen=pg.mkPen(accent.darker(130)), brush=pg.mkBrush(accent),
            hoverable=True, tip=self._tip, hoverSize=14, name="measured",
        )  # fmt: skip
        self.estimated = pg.ScatterPlotItem(
            size=10, symbol="o", pen=pg.mkPen(accent, width=1.5), brush=pg.mkBrush(0, 0, 0, 0),
            hoverable=True, tip=self._tip, hoverSize=14, name="x estimated (hollow)",
        )  # fmt: skip
        self.candidate = pg.ScatterPlotItem(
            size=9, symbol="d", pen=pg.mkPen(120, 120, 120), brush=pg.mkBrush(200, 200, 200, 160),
            hoverable=True, tip=self._tip, hoverSize=13, name="search candidate",
        )  # fmt: skip
        self.original = pg.ScatterPlotItem(
            size=18, symbol="star", pen=pg.mkPen(120, 80, 0), brush=pg.mkBrush(255, 190, 0),
            hoverable=True, tip=self._tip, hoverSize=22, name="original",
        )  # fmt: skip
        for it in (self.candidate, self.measured, self.estimated, self.original):
            pi.addItem(it)
            it.sigClicked.connect(self._on_points_clicked)
        self.plan_line = pg.InfiniteLine(
            angle=90, movable=False, pen=pg.mkPen(fg, width=1, style=Qt.PenStyle.DotLine),
            label="plan (est.)", labelOpts={"position": 0.08, "color": fg},
        )  # fmt: skip
        self.plan_line.setToolTip("current plan: size estimated by formula, not measured")
        pi.addItem(self.plan_line)
        self.plan_line.hide()
        self.empty_text = pg.TextItem("Run Jobs ▸ Apply & measure (Ctrl+M)\nto add measured points", color=fg,
                                      anchor=(0.5, 0.5))  # fmt: skip
        pi.addItem(self.empty_text)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.caption)
        self.refresh()

    # ------------------------------------------------------------------ data

    def set_variants(self, entries: list[VariantEntry]) -> None:
        self.entries = list(entries)
        self.refresh()

    def set_plan_estimate(self, plan_estimate_bytes: float | None) -> None:
        self.plan_estimate_bytes = plan_estimate_bytes
        self._update_plan_line()

    def _x_metric(self, e: VariantEntry):
        return e.size() if self.x_axis.currentData() == "size" else e.latency()

    def _x_value(self, m) -> float:
        return m.value / 1024.0 if self.x_axis.currentData() == "size" else m.value

    def points(self) -> list[tuple[str, float, float, str]]:
        """(id, x, y, kind) of every plotted entry: kind original | measured | estimated | candidate."""
        out = []
        for e in self.entries:
            q, xm = e.quality(), self._x_metric(e)
            if q is None or xm is None:
                continue
            kind = "original" if e.is_original else ("estimated" if xm.kind == "estimated" else "measured")
            if e.is_candidate:
                kind = "candidate"
            out.append((e.id, self._x_value(xm), float(q.value), kind))
        return out

    def refresh(self) -> None:
        pts = self.points()
        for kind, item in (
            ("measured", self.measured),
            ("estimated", self.estimated),
            ("original", self.original),
            ("candidate", self.candidate),
        ):
            sel = [p for p in pts if p[3] == kind]
            item.setData(x=[p[1] for p in sel], y=[p[2] for p in sel], data=[p[0] for p in sel])
        real = [p for p in pts if p[3] in ("measured", "original")]
        if real:
            xs = np.array([p[1] for p in real])
            ys = np.array([p[2] for p in real])
            idx = pareto_front(xs, ys)
            self.front.setData(xs[idx], ys[idx])
        else:
            self.front.setData([], [])
        self._sync_legend()
        self._update_labels()
        self._update_plan_line()
        self.empty_text.setVisible(len(pts) <= 1)
        pi = self.plot.getPlotItem()
        pi.enableAutoRange()
        if pts:
            xs = np.array([p[1] for p in pts])
            ys = np.array([p[2] for p in pts])
            pad_y = max(0.01, 0.1 * float(ys.max() - ys.min()))
            if np.ptp(xs) < 1e-9 * max(abs(xs.max()), 1.0) or np.ptp(ys) < 1e-6:
                # A single point (or a flat line) makes autorange zoom into rounding noise.
                pi.setXRange(0.0, float(xs.max()) * 1.6 or 1.0, padding=0)
                pi.setYRange(float(ys.min()) - pad_y, float(ys.max()) + pad_y, padding=0)
            # The hint sits left of and below the original so it covers neither it nor the legend.
            self.empty_text.setPos(float(xs.max()) * 0.45, float(ys.min()) - pad_y * 0.45)

    def _sync_legend(self) -> None:
        """List only the kinds of points that are on the plot (a short legend covers less)."""
        for item in (self.front, self.measured, self.estimated, self.candidate, self.original):
            name = item.opts.get("name")
            xs = item.getData()[0]
            has = xs is not None and len(xs) > 0
            listed = any(sample.item is item for sample, _ in self.legend.items)
            if has and not listed:
                self.legend.addItem(item, name)
            elif not has and listed:
                self.legend.removeItem(item)

    def _update_plan_line(self) -> None:
        on = self.x_axis.currentData() == "size" and self.plan_estimate_bytes is not None
        orig = next((e for e in self.entries if e.is_original), None)
        if on and orig is not None and orig.size() is not None:
            # The estimate counts weight bytes; shift by the original's file overhead to compare.
            overhead = orig.size().value - (self._orig_weight_bytes or orig.size().value)
            self.plan_line.setValue((self.plan_estimate_bytes + max(overhead, 0)) / 1024.0)
            self.plan_line.show()
        else:
            self.plan_line.hide()

    def set_original_weight_bytes(self, n: float | None) -> None:
        self._orig_weight_bytes = n

    def _update_labels(self) -> None:
        pi = self.plot.getPlotItem()
        q = next((e.quality() for e in self.entries if e.quality() is not None), None)
        if q is None:
            ylab = "quality (not measured yet)"
        elif q.name == "top1":
            ylab = "top-1 accuracy"
        elif q.name == "top1_agreement":
            ylab = "top-1 agreement with original (fidelity)"
        else:
            ylab = f"{q.name} vs original (fidelity)"
        xlab = (
            "size on disk (kB, measured)"
            if self.x_axis.currentData() == "size"
            else "latency p50 (ms, measured)"
        )
        pi.setLabel("left", ylab)
        pi.setLabel("bottom", xlab)
        if q is not None:
            self.caption.setText(f"y: {q.kind} on {q.n_samples} samples of {q.source}")
        else:
            self.caption.setText("y: no measurement yet")

    # ------------------------------------------------------------------ interaction

    def _entry(self, vid: str) -> VariantEntry | None:
        return next((e for e in self.entries if e.id == vid), None)

    def _tip(self, x, y, data) -> str:
        e = self._entry(data)
        if e is None:
            return str(data)
        q = e.quality()
        lines = [e.label, f"recipe: {e.recipe.summary()}"]
        if q is not None:
            lines.append(f"{q.name}: {q.value:.4f} ({q.kind}, {q.n_samples} samples)")
        for m in (e.size(), e.latency()):
            if m is not None:
                lines.append(f"{m.name}: {m.value:.4g} {m.unit} ({m.kind})")
        return "\n".join(lines)

    def _on_points_clicked(self, item, points, ev=None) -> None:
        """sigClicked handler: the first clicked point's variant id goes out as a signal."""
        if points is None or len(points) == 0:
            return
        vid = points[0].data()
        if vid:
            self.variant_clicked.emit(str(vid))

    def spot(self, vid: str):
        """The SpotItem of a variant (tests and screenshots click it)."""
        for item in (self.measured, self.estimated, self.original, self.candidate):
            for p in item.points():
                if p.data() == vid:
                    return item, p
        return None, None
