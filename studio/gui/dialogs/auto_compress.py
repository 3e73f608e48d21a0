"""Auto-compress dialog: a target (size / latency / MACs reduction), the largest quality drop
allowed, and a search job (`studio.core.search.auto_compress`) whose measured candidates appear
live in the list and on the trade-off plot. "Load into table" puts a candidate's recipe into the
layer table through the undo stack (the window does that)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

TARGETS = {
    "size": "Size (× smaller on disk)",
    "latency": "Latency (× faster, measured)",
    "macs": "MACs (× fewer)",
}
ID_ROLE = Qt.ItemDataRole.UserRole + 1


def target_text(kind: str, ratio: float) -> str:
    """The target in `studio.core.search.parse_target` syntax: `size=4x`."""
    return f"{kind}={ratio:g}x"


class AutoCompressDialog(QDialog):
    """Non-modal; `run_requested(target_text, max_drop, max_evals)` starts the job in the window,
    which then feeds `add_candidate` / `set_progress` / `finished`."""

    run_requested = Signal(str, float, int)
    cancel_requested = Signal()
    load_requested = Signal(dict)  # a candidate dict (Candidate.to_dict())

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Auto-compress")
        self.setModal(False)
        self.resize(640, 460)
        self.kind = QComboBox()
        for k, v in TARGETS.items():
            self.kind.addItem(v, k)
        self.ratio = QDoubleSpinBox()
        self.ratio.setRange(1.05, 100.0)
        self.ratio.setDecimals(2)
        self.ratio.setSingleStep(0.5)
        self.ratio.setValue(4.0)
        self.ratio.setSuffix(" ×")
        self.max_drop = QDoubleSpinBox()
        self.max_drop.setRange(0.0, 50.0)
        self.max_drop.setDecimals(2)
        self.max_drop.setSingleStep(0.25)
        self.max_drop.setValue(1.0)
        self.max_drop.setSuffix(" points")
        self.max_drop.setToolTip("largest quality drop allowed, measured on the calibration data")
        self.max_evals = QSpinBox()
        self.max_evals.setRange(2, 200)
        self.max_evals.setValue(8)
        self.max_evals.setToolTip("how many candidate models the search may build and measure")
        form = QFormLayout()
        form.addRow("Target", self.kind)
        form.addRow("Reduction", self.ratio)
        form.addRow("Max drop", self.max_drop)
        form.addRow("Max candidates", self.max_evals)
        self.run_btn = QPushButton("Run search")
        self.run_btn.setDefault(True)
        self.run_btn.clicked.connect(self._run)
        self.cancel_btn = QPushButton("Cancel search")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel_requested)
        self.load_btn = QPushButton("Load into table")
        self.load_btn.setEnabled(False)
        self.load_btn.clicked.connect(self._load)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("idle")
        self.list = QTreeWidget()
        self.list.setHeaderLabels(["#", "Origin", "Size", "Drop (calib)", "Held-out", "Target"])
        self.list.setRootIsDecorated(False)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.list.currentItemChanged.connect(lambda cur, _p: self.load_btn.setEnabled(cur is not None))
        self.list.itemDoubleClicked.connect(lambda _it, _c: self._load())
        self.message = QLabel("Candidates are measured models (ORT on the calibration data; held-out "
                              "quality when evaluation data is set). They appear on the trade-off plot.")  # fmt: skip
        self.message.setWordWrap(True)
        buttons = QHBoxLayout()
        for b in (self.run_btn, self.cancel_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.load_btn)
        buttons.addWidget(close)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.list, 1)
        lay.addWidget(self.message)
        lay.addLayout(buttons)
        self.candidates: dict[int, dict] = {}
        self.best: int | None = None

    def target(self) -> str:
        return target_text(self.kind.currentData(), self.ratio.value())

    def _run(self) -> None:
        self.list.clear()
        self.candidates.clear()
        self.best = None
        self.run_requested.emit(self.target(), self.max_drop.value() / 100.0, self.max_evals.value())

    def set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        if running:
            self.progress.setFormat("starting")

    def set_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(max(fraction, 0) * 1000))
        self.progress.setFormat(f"{max(fraction, 0):.0%} {message}"[:70])

    def add_candidate(self, cand: dict) -> None:
        """One measured candidate (Candidate.to_dict())."""
        self.candidates[cand["id"]] = cand
        m = cand.get("metrics", {})

        def val(name, fmt):
            d = m.get(name)
            return fmt(d["value"]) if d else "—"

        size = val("size_bytes", lambda v: f"{v / 1024:.1f} kB" if v < 1 << 20 else f"{v / (1 << 20):.2f} MB")
        drop = val("calib_drop", lambda v: f"{v * 100:+.2f}")
        held = val("heldout_top1", lambda v: f"{v:.4f}")
        if held == "—":
            held = val("heldout_cosine", lambda v: f"cos {v:.4f}")
        ok = "met" if cand.get("meets_target") else "missed"
        if cand.get("error"):
            ok = "failed"
        it = QTreeWidgetItem([str(cand["id"]), cand.get("origin", ""), size, drop, held, ok])
        it.setData(0, ID_ROLE, cand["id"])
        tip = [f"candidate {cand['id']} ({cand.get('origin', '')})"]
        tip += [
            f"{k}: {d['value']:.4g} {d.get('unit', '')} ({d['kind']}, n={d.get('n_samples')})"
            for k, d in m.items()
        ]
        if cand.get("error"):
            tip.append(f"error: {cand['error']}")
        for c in range(6):
            it.setToolTip(c, "\n".join(tip))
        self.list.addTopLevelItem(it)

    def finished(self, result) -> None:
        """The SearchResult (or None when the job failed)."""
        self.set_running(False)
        if result is None:
            self.progress.setFormat("failed")
            return
        self.progress.setValue(1000)
        self.progress.setFormat("cancelled" if result.cancelled else "done")
        self.message.setText(result.message)
        if result.best is not None:
            self.best = result.best.id
            for i in range(self.list.topLevelItemCount()):
                it = self.list.topLevelItem(i)
                if it.data(0, ID_ROLE) == result.best.id:
                    f = it.font(0)
                    f.setBold(True)
                    for c in range(6):
                        it.setFont(c, f)
                    it.setText(1, f"{it.text(1)} (best)")
                    self.list.setCurrentItem(it)

    def chosen(self) -> dict | None:
        it = self.list.currentItem()
        cid = it.data(0, ID_ROLE) if it is not None else self.best
        return self.candidates.get(cid) if cid is not None else None

    def _load(self) -> None:
        c = self.chosen()
        if c is not None:
            self.load_requested.emit(c)
