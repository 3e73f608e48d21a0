"""Layer inspector: header facts, weight histogram, singular-value spectrum with the planned
rank, and per-output-channel L1 norms with the channels a channel-prune plan would remove.

Plots are built once; ``show_layer`` only calls ``setData``/``setOpts`` on persistent items.
SVDs of big weights run on a QThreadPool worker and are cached per weight.
"""

from __future__ import annotations

import html
import math

import numpy as np
import onnx
import pyqtgraph as pg
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from studio.core.graph import LayerInfo
from studio.core.onnx_utils import tensor_array
from studio.core.recipe import LayerPlan

INLINE_SVD_ELEMENTS = 64 * 1024  # below this an SVD takes well under 50 ms: no worker needed
MAX_L1_BARS = 4096
KEPT_BRUSH = pg.mkBrush("#4c78a8")
PRUNED_BRUSH = pg.mkBrush("#e45756")


# ------------------------------------------------------------------ pure helpers (Qt-free)


def output_axis(layer: LayerInfo) -> int:
    """Axis of the weight that indexes output channels/features."""
    if layer.op_type in ("Gemm",):
        return 0 if layer.attrs.get("transB", 0) else 1
    if layer.op_type in ("MatMul", "FusedMatMul", "Gather"):
        return len(layer.weight_shape) - 1
    if layer.op_type == "ConvTranspose":
        return 1
    return 0  # Conv & friends: [Cout, Cin/g, k...]


def as_matrix(weight: np.ndarray, out_axis: int) -> np.ndarray:
    """[out, everything else]: conv [Cout, Cin, k, k] -> [Cout, Cin*k*k]."""
    w = np.moveaxis(np.asarray(weight, dtype=np.float32), out_axis, 0)
    return w.reshape(w.shape[0], -1)


def channel_l1(weight: np.ndarray, out_axis: int) -> np.ndarray:
    return np.abs(as_matrix(weight, out_axis)).sum(axis=1)


def _ratio(params: dict, *keys: str) -> float | None:
    for k in keys:
        v = params.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def pruned_channel_count(n_channels: int, ratio: float) -> int:
    """Channels removed at ``ratio``: rounded, and at least one channel always survives."""
    return int(min(max(round(ratio * n_channels), 0), n_channels - 1))


def pruned_channels(l1: np.ndarray, plan: LayerPlan | None) -> np.ndarray:
    """Indices of the lowest-L1 channels a structured (channel) prune step would remove."""
    step = plan.prune if plan is not None else None
    if step is None or step.technique != "channels":
        return np.zeros(0, dtype=np.int64)
    ratio = _ratio(step.params, "ratio", "amount", "sparsity", "prune_ratio")
    if ratio is None:
        return np.zeros(0, dtype=np.int64)
    k = pruned_channel_count(len(l1), ratio)
    return np.sort(np.argsort(l1, kind="stable")[:k])


def planned_rank(singular_values: np.ndarray, plan: LayerPlan | None) -> int | None:
    """Rank a decompose step keeps: explicit ``rank``, ``rank_ratio`` of the full rank, or the
    smallest rank reaching ``energy`` of the squared singular values."""
    step = plan.decompose if plan is not None else None
    if step is None or len(singular_values) == 0:
        return None
    full = len(singular_values)
    p = step.params
    if isinstance(p.get("rank"), int):
        return int(min(max(p["rank"], 1), full))
    r = _ratio(p, "rank_ratio", "ratio")
    if r is not None:
        return int(min(max(math.ceil(r * full), 1), full))
    e = _ratio(p, "energy")
    if e is not None:
        cum = cumulative_energy(singular_values)
        return int(min(np.searchsorted(cum, e - 1e-12) + 1, full))
    return None


def cumulative_energy(singular_values: np.ndarray) -> np.ndarray:
    sq = np.asarray(singular_values, dtype=np.float64) ** 2
    total = sq.sum()
    return np.cumsum(sq) / total if total > 0 else np.zeros_like(sq)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------ worker


class _SvdSignals(QObject):
    done = Signal(object, object)  # cache key, singular values


class _SvdJob(QRunnable):
    def __init__(self, key, matrix: np.ndarray, signals: _SvdSignals):
        super().__init__()
        self.key, self.matrix, self.signals = key, matrix, signals

    def run(self) -> None:
        try:
            s = np.linalg.svd(self.matrix.astype(np.float64, copy=False), compute_uv=False)
        except (np.linalg.LinAlgError, ValueError):
            s = np.zeros(0)
        try:
            self.signals.done.emit(self.key, s)
        except RuntimeError:
            pass  # the inspector is gone


# ------------------------------------------------------------------ widget


class InspectorView(QWidget):
    """Details of one layer. ``spectrum_ready`` fires when a background SVD lands."""

    spectrum_ready = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        self._header = QLabel("Select a layer")
        self._header.setTextFormat(Qt.RichText)
        self._header.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self._header.setWordWrap(True)
        self._header.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Minimum)
        self._glw = pg.GraphicsLayoutWidget()
        self._glw.setBackground("w")

        # histogram
        self.hist_plot = self._glw.addPlot(row=0, col=0, title="Weight histogram")
        self.hist_plot.setLabel("bottom", "weight value")
        self.hist_plot.setLabel("left", "count")
        self.hist_item = pg.PlotDataItem(
            stepMode="center", fillLevel=0, brush=(76, 120, 168, 150), pen="#4c78a8"
        )
        self.hist_plot.addItem(self.hist_item)
        self.threshold_lines = [
            pg.InfiniteLine(angle=90, pen=pg.mkPen("#e45756", style=Qt.DashLine)) for _ in range(2)
        ]
        for ln in self.threshold_lines:
            ln.setVisible(False)
            self.hist_plot.addItem(ln)

        # spectrum: normalised singular values + cumulative energy share one 0..1 axis
        self.sv_plot = self._glw.addPlot(row=1, col=0, title="Singular values")
        self.sv_plot.setLabel("bottom", "rank index")
        # colour-coded axis label instead of a legend, which would sit on top of a curve
        self.sv_plot.setLabel(
            "left",
            "<span style='color:#4c78a8'>σ/σ₀</span> <span style='color:#54a24b'>energy</span>",
        )
        self.sv_plot.setYRange(0, 1.05)
        self.sv_item = self.sv_plot.plot(pen=pg.mkPen("#4c78a8", width=2))
        self.energy_item = self.sv_plot.plot(pen=pg.mkPen("#54a24b", width=2))
        self.rank_line = pg.InfiniteLine(
            angle=90, pen=pg.mkPen("#e45756", width=2), label="rank {value:.0f}",
            labelOpts={"position": 0.25, "color": "#e45756"},
        )  # fmt: skip
        self.rank_line.setVisible(False)
        self.sv_plot.addItem(self.rank_line)

        # per-output-channel L1
        self.l1_plot = self._glw.addPlot(row=2, col=0, title="Per-output-channel L1 norm")
        self.l1_plot.setLabel("bottom", "output channel")
        self.l1_plot.setLabel("left", "L1 norm")
        self.l1_kept_item = pg.BarGraphItem(x=[], height=[], width=0.8, brush=KEPT_BRUSH, pen=None)
        self.l1_pruned_item = pg.BarGraphItem(x=[], height=[], width=0.8, brush=PRUNED_BRUSH, pen=None)
        self.l1_plot.addItem(self.l1_kept_item)
        self.l1_plot.addItem(self.l1_pruned_item)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self._header)
        lay.addWidget(self._glw, 1)

        self._svd_cache: dict[tuple, np.ndarray] = {}
        self._svd_pending: set[tuple] = set()
        self._pool = QThreadPool(self)  # own pool: long jobs on the global pool must not delay it
        self._pool.setMaxThreadCount(1)
        self._svd_signals = _SvdSignals(self)
        self._svd_signals.done.connect(self._on_svd_done)
        self._current_key: tuple | None = None
        self._plan: LayerPlan | None = None
        self.layer: LayerInfo | None = None
        self.pruned: np.ndarray = np.zeros(0, dtype=np.int64)  # channel indices marked red
        self.chosen_rank: int | None = None
        self.singular_values: np.ndarray | None = None
        self._set_empty()

    # ------------------------------------------------------------------ public API

    def show_layer(
        self, layer: LayerInfo | None, proto: onnx.ModelProto | None, plan: LayerPlan | None
    ) -> None:
        """Show ``layer`` of ``proto`` with what ``plan`` would do to it (None clears)."""
        self.layer, self._plan = layer, plan
        if layer is None or proto is None:
            self._set_empty()
            return
        weight = self._weight(proto, layer)
        self._header.setText(self._header_html(layer, plan, weight))
        if weight is None or weight.ndim < 2:
            self._show_histogram(layer, weight)
            self._set_plots_unavailable("weight not a matrix")
            return
        self._show_histogram(layer, weight)
        axis = output_axis(layer)
        l1 = channel_l1(weight, axis)
        self.pruned = pruned_channels(l1, plan)
        self._show_l1(l1, plan)
        mat = as_matrix(weight, axis)
        key = (id(proto), layer.weight_name, mat.shape)
        self._current_key = key
        if key in self._svd_cache:
            self._show_spectrum(self._svd_cache[key])
        elif mat.size <= INLINE_SVD_ELEMENTS:
            s = np.linalg.svd(mat.astype(np.float64), compute_uv=False)
            self._svd_cache[key] = s
            self._show_spectrum(s)
        else:
            self.singular_values, self.chosen_rank = None, None
            self.sv_item.setData([], [])
            self.energy_item.setData([], [])
            self.rank_line.setVisible(False)
            _title(self.sv_plot, f"Singular values of {mat.shape[0]}×{mat.shape[1]}: computing…")
            if key not in self._svd_pending:
                self._svd_pending.add(key)
                self._pool.start(_SvdJob(key, mat, self._svd_signals))

    def is_computing(self) -> bool:
        return bool(self._svd_pending)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _weight(proto: onnx.ModelProto, layer: LayerInfo) -> np.ndarray | None:
        for t in proto.graph.initializer:
            if t.name == layer.weight_name:
                try:
                    return tensor_array(t)
                except Exception:  # external data that is not reachable: show the header only
                    return None
        return None

    def _header_html(self, layer: LayerInfo, plan: LayerPlan | None, weight: np.ndarray | None) -> str:
        def shp(s):
            return "?" if s is None else "[" + ", ".join(str(d) for d in s) + "]"

        ins = ", ".join(shp(s) for s in layer.input_shapes[:1])
        outs = ", ".join(shp(s) for s in layer.output_shapes[:1])
        sparsity = (
            f"{layer.stats.sparsity:.1%}" if layer.stats is not None
            else f"{float(np.mean(weight == 0)):.1%}" if weight is not None else "?"
        )  # fmt: skip
        groups = get_attr_safe(layer, "group")
        rows = [
            ("op", html.escape(layer.op_type) + (f" (groups={groups})" if groups and groups != 1 else "")),
            ("input → output", f"{ins} → {outs}"),
            ("weight", f"{html.escape(layer.weight_name)} {shp(layer.weight_shape)} {layer.dtype}"),
            ("params", f"{layer.params:,}"),
            ("MACs / sample", f"{layer.macs:,} <span style='color:#888'>(estimated from shapes)</span>"),
            ("size", _human_bytes(layer.weight_bytes)),
            ("sparsity", f"{sparsity} exact zeros"),
            ("plan", html.escape(plan.summary()) if plan is not None else "—"),
        ]
        body = "".join(
            f"<tr><td style='color:#666;padding-right:8px'>{k}</td><td>{v}</td></tr>" for k, v in rows
        )
        return f"<b>{html.escape(layer.name)}</b><table>{body}</table>"

    def _show_histogram(self, layer: LayerInfo, weight: np.ndarray | None) -> None:
        if layer.stats is not None and layer.stats.hist_counts:
            counts = np.asarray(layer.stats.hist_counts, dtype=float)
            edges = np.asarray(layer.stats.hist_edges, dtype=float)
        elif weight is not None and weight.size:
            counts, edges = np.histogram(weight.astype(np.float32).ravel(), bins=64)
        else:
            self.hist_item.setData([], [])
            return
        self.hist_item.setData(edges, counts)
        _title(self.hist_plot, f"Weights ({int(counts.sum()):,} values)")
        # unstructured magnitude prune: the |w| threshold it would cut at
        step = self._plan.prune if self._plan is not None else None
        ratio = (
            _ratio(step.params, "ratio", "sparsity", "amount")
            if step and step.technique == "magnitude"
            else None
        )
        if ratio is not None and weight is not None and weight.size:
            thr = float(np.quantile(np.abs(weight.astype(np.float32)).ravel(), min(max(ratio, 0.0), 1.0)))
            for ln, v in zip(self.threshold_lines, (-thr, thr), strict=True):
                ln.setVisible(True)
                ln.setValue(v)
            _title(
                self.hist_plot,
                f"Weights: <span style='color:#e45756'>|w| &lt; {thr:.3g} pruned ({ratio:.0%})</span>",
            )
        else:
            for ln in self.threshold_lines:
                ln.setVisible(False)

    def _show_l1(self, l1: np.ndarray, plan: LayerPlan | None) -> None:
        n = len(l1)
        mask = np.zeros(n, dtype=bool)
        mask[self.pruned] = True
        x = np.arange(n, dtype=float)
        if n > MAX_L1_BARS:  # embeddings: bars this thin are invisible anyway
            step = math.ceil(n / MAX_L1_BARS)
            keep = (np.arange(n) % step == 0) | mask
            x, l1, mask = x[keep], l1[keep], mask[keep]
        self.l1_kept_item.setOpts(x=x[~mask], height=l1[~mask], width=0.8)
        self.l1_pruned_item.setOpts(x=x[mask], height=l1[mask], width=0.8)
        title = f"L1 per output channel ({n})"
        if plan is not None and plan.prune is not None and plan.prune.technique == "channels":
            title += f": <span style='color:#e45756'>{len(self.pruned)} pruned</span>"
        _title(self.l1_plot, title)
        self.l1_plot.enableAutoRange()

    def _on_svd_done(self, key, s) -> None:
        self._svd_pending.discard(key)
        self._svd_cache[key] = s
        if key == self._current_key:
            self._show_spectrum(s)
        self.spectrum_ready.emit()

    def _show_spectrum(self, s: np.ndarray) -> None:
        self.singular_values = s
        if len(s) == 0 or s[0] <= 0:
            self.sv_item.setData([], [])
            self.energy_item.setData([], [])
            self.rank_line.setVisible(False)
            self.chosen_rank = None
            _title(self.sv_plot, "Singular values: all zero")
            return
        x = np.arange(1, len(s) + 1, dtype=float)
        cum = cumulative_energy(s)
        self.sv_item.setData(x, s / s[0])
        self.energy_item.setData(x, cum)
        self.chosen_rank = planned_rank(s, self._plan)
        title = f"Singular values (rank {len(s)})"
        if self.chosen_rank is not None:
            self.rank_line.setVisible(True)  # before setValue: a hidden line's label does not update
            self.rank_line.setValue(self.chosen_rank)
            title += (
                f": <span style='color:#e45756'>{self.chosen_rank} keep "
                f"{cum[self.chosen_rank - 1]:.1%} energy</span>"
            )
        else:
            self.rank_line.setVisible(False)
        _title(self.sv_plot, title)
        self.sv_plot.setXRange(1, len(s), padding=0.02)
        self.sv_plot.setYRange(0, 1.05, padding=0)
        self.spectrum_ready.emit()

    def _set_plots_unavailable(self, why: str) -> None:
        self.sv_item.setData([], [])
        self.energy_item.setData([], [])
        self.rank_line.setVisible(False)
        self.l1_kept_item.setOpts(x=[], height=[])
        self.l1_pruned_item.setOpts(x=[], height=[])
        _title(self.sv_plot, f"Singular values: {why}")
        _title(self.l1_plot, f"L1 per output channel: {why}")
        self.pruned = np.zeros(0, dtype=np.int64)
        self.singular_values, self.chosen_rank = None, None

    def _set_empty(self) -> None:
        self._header.setText("<i>Select a layer in the table or the graph</i>")
        self.hist_item.setData([], [])
        for ln in self.threshold_lines:
            ln.setVisible(False)
        _title(self.hist_plot, "Weights")
        self._set_plots_unavailable("no layer")
        self._current_key = None


def _title(plot, text: str) -> None:
    """Plot titles in a small font: the dock is ~560 px wide and long titles would be clipped."""
    plot.setTitle(text, size="9pt")


def get_attr_safe(layer: LayerInfo, name: str):
    """An attribute recorded by the analysis (LayerInfo.attrs), or None."""
    return layer.attrs.get(name)
