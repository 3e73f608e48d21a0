"""Fine-tune (distill) dialog: knowledge-distillation settings and a live loss curve.

The window adds a `finetune: distill` step (these params) to the current recipe and runs Apply &
measure; each training step's payload `{"step", "loss", "val_loss"}` lands in `add_point`.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)


class DistillDialog(QDialog):
    """Non-modal; `run_requested(params)` / `cancel_requested` go to the window."""

    run_requested = Signal(dict)
    cancel_requested = Signal()

    def __init__(self, parent=None, recipe_summary: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Fine-tune (distill)")
        self.setModal(False)
        self.resize(560, 480)
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(200)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.batch = QSpinBox()
        self.batch.setRange(1, 4096)
        self.batch.setValue(64)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.5, 20.0)
        self.temperature.setValue(4.0)
        self.temperature.setToolTip("softmax temperature T of the distillation term")
        form = QFormLayout()
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Batch size", self.batch)
        form.addRow("Temperature T", self.temperature)
        self.what = QLabel(
            "Trains the compressed model to mimic the original (PyTorch), then measures it like "
            f"Apply & measure. Recipe: {recipe_summary or 'none (plain fine-tune)'}"
        )
        self.what.setWordWrap(True)
        self.plot = pg.PlotWidget(background="w")
        pi = self.plot.getPlotItem()
        pi.setLabel("bottom", "step")
        pi.setLabel("left", "KD loss")
        pi.showGrid(x=True, y=True, alpha=0.25)
        pi.addLegend(offset=(-10, 10))
        self.loss_item = pi.plot([], [], pen=pg.mkPen("#4c78a8", width=1.5), name="train loss")
        self.val_item = pi.plot([], [], pen=pg.mkPen("#e45756", width=2), symbol="o", symbolSize=5,
                                symbolBrush="#e45756", name="held-back loss")  # fmt: skip
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("idle")
        self.run_btn = QPushButton("Fine-tune && measure")
        self.run_btn.clicked.connect(self._run)
        self.cancel_btn = QPushButton("Stop")
        self.cancel_btn.setToolTip("stop training; the best checkpoint so far is exported and measured")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel_requested)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        row = QHBoxLayout()
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        row.addStretch(1)
        row.addWidget(close)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.what)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.progress)
        lay.addLayout(row)
        self.steps_seen: list[float] = []
        self.losses: list[float] = []
        self.val_steps: list[float] = []
        self.val_losses: list[float] = []

    def params(self) -> dict:
        """`distill` technique params (studio_distill DistillParams)."""
        return {
            "steps": self.steps.value(),
            "lr": self.lr.value(),
            "batch_size": self.batch.value(),
            "temperature": self.temperature.value(),
        }

    def _run(self) -> None:
        self.steps_seen, self.losses, self.val_steps, self.val_losses = [], [], [], []
        self.loss_item.setData([], [])
        self.val_item.setData([], [])
        self.run_requested.emit(self.params())

    def set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)

    def set_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(max(fraction, 0) * 1000))
        self.progress.setFormat(f"{max(fraction, 0):.0%} {message}"[:70])

    def add_point(self, payload: dict) -> None:
        """One training step: `{"step", "loss", "val_loss"}` (val_loss may repeat or be None)."""
        if not isinstance(payload, dict) or "step" not in payload:
            return
        step = float(payload["step"])
        loss = payload.get("loss")
        if isinstance(loss, int | float) and math.isfinite(loss):
            self.steps_seen.append(step)
            self.losses.append(float(loss))
            self.loss_item.setData(self.steps_seen, self.losses)
        val = payload.get("val_loss")
        if (
            isinstance(val, int | float)
            and math.isfinite(val)
            and (not self.val_losses or val != self.val_losses[-1])
        ):
            self.val_steps.append(step)
            self.val_losses.append(float(val))
            self.val_item.setData(self.val_steps, self.val_losses)

    def finished(self, text: str) -> None:
        self.set_running(False)
        self.progress.setFormat(text[:70])
        self.progress.setValue(1000)
