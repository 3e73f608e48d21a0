"""Jobs dock: one row per background job with progress, ETA and a cancel button; jobs a crash
or kill interrupted (found when a workspace reopens) get a row with a Re-run button."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.gui.workers import Job, JobManager

NAME, PROGRESS, ETA, ACTION = range(4)


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min {seconds % 60:.0f} s"


class JobsPanel(QWidget):
    """Lists the manager's jobs; finished ones stay (with their outcome) until cleared."""

    def __init__(self, manager: JobManager, parent=None):
        super().__init__(parent)
        self.manager = manager
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Job", "Progress", "ETA", ""])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        h = self.tree.header()
        h.setStretchLastSection(False)
        h.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        h.setSectionResizeMode(PROGRESS, QHeaderView.ResizeMode.Interactive)
        h.resizeSection(PROGRESS, 240)
        h.setSectionResizeMode(ETA, QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(ACTION, QHeaderView.ResizeMode.ResizeToContents)
        clear = QPushButton("Clear finished")
        clear.clicked.connect(self.clear_finished)
        top = QHBoxLayout()
        top.addStretch(1)
        top.addWidget(clear)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.tree)
        self._rows: dict[int, tuple[Job, QTreeWidgetItem, QProgressBar, QPushButton]] = {}
        self._interrupted: dict[str, tuple[QTreeWidgetItem, QProgressBar, QPushButton]] = {}
        manager.job_added.connect(self.add_job)
        # ETA ticks even when a job reports rarely.
        self._timer = QTimer(self)
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def add_job(self, job: Job) -> None:
        item = QTreeWidgetItem([job.name, "", "—", ""])
        item.setToolTip(NAME, job.name)
        self.tree.insertTopLevelItem(0, item)
        bar = QProgressBar()
        bar.setRange(0, 1000)
        bar.setFormat("queued")
        bar.setTextVisible(True)
        btn = QPushButton("Cancel")
        btn.setToolTip("stop the job at its next progress point; nothing partial is kept")
        btn.clicked.connect(lambda: self.manager.cancel(job))
        self.tree.setItemWidget(item, PROGRESS, bar)
        self.tree.setItemWidget(item, ACTION, btn)
        self._rows[id(job)] = (job, item, bar, btn)
        job.signals.progress.connect(lambda f, m, j=job: self._update(j))
        job.signals.ended.connect(lambda j=job: self._update(j))

    def add_interrupted(
        self, key: str, title: str, message: str, rerun: Callable[[], Job | None] | None
    ) -> QPushButton:
        """A row for a job that never ended (its studio crashed or was killed). `rerun` starts
        it again from its stored recipe (None: this kind of job cannot be re-run here)."""
        item = QTreeWidgetItem([title, "", "", ""])
        item.setToolTip(NAME, message)
        item.setToolTip(PROGRESS, message)
        self.tree.insertTopLevelItem(0, item)
        bar = QProgressBar()
        bar.setRange(0, 1000)
        bar.setValue(0)
        bar.setFormat("interrupted")
        bar.setTextVisible(True)
        btn = QPushButton("Re-run")
        if rerun is None:
            btn.setEnabled(False)
            btn.setToolTip("this kind of job cannot be re-run from the window")
        else:
            btn.setToolTip("start the job again with the recipe it was started with")

            def go() -> None:
                job = rerun()
                if job is not None:
                    btn.setEnabled(False)
                    btn.setText("Re-run started")
                    bar.setFormat(f"interrupted · re-run as “{job.name}”")

            btn.clicked.connect(go)
        self.tree.setItemWidget(item, PROGRESS, bar)
        self.tree.setItemWidget(item, ACTION, btn)
        self._interrupted[key] = (item, bar, btn)
        return btn

    def rerun_button(self, key: str) -> QPushButton | None:
        row = self._interrupted.get(key)
        return row[2] if row else None

    def clear_interrupted(self) -> None:
        """Drop the interrupted rows (they belong to the workspace that was open)."""
        for item, _bar, _btn in self._interrupted.values():
            self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))
        self._interrupted = {}

    def selected_job(self) -> Job | None:
        """The job of the selected row (None for none or an interrupted row)."""
        item = self.tree.currentItem()
        return next((job for job, it, _b, _c in self._rows.values() if it is item), None)

    def _update(self, job: Job) -> None:
        row = self._rows.get(id(job))
        if row is None:
            return
        _, item, bar, btn = row
        if job.state == "running":
            bar.setValue(int(job.fraction * 1000))
            bar.setFormat(f"{job.fraction:.0%} {job.message}"[:60])
            item.setText(ETA, fmt_eta(job.eta_s()))
        elif job.state in ("finished", "failed", "cancelled"):
            bar.setValue(1000 if job.state == "finished" else bar.value())
            text = {"finished": "done", "failed": "failed", "cancelled": "cancelled"}[job.state]
            bar.setFormat(text)
            item.setText(ETA, "")
            if job.error:
                item.setToolTip(NAME, job.error[0])
                item.setToolTip(PROGRESS, job.error[0])
            btn.setEnabled(False)
            btn.setText(text.capitalize())

    def _tick(self) -> None:
        for job, *_ in self._rows.values():
            if job.state == "running":
                self._update(job)

    def clear_finished(self) -> None:
        self.clear_interrupted()
        for key, (job, item, _bar, _btn) in list(self._rows.items()):
            if job.done.is_set():
                self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))
                del self._rows[key]
        self.manager.jobs = [j for j in self.manager.jobs if not j.done.is_set()]

    def row_count(self) -> int:
        return self.tree.topLevelItemCount()

    def button_for(self, job: Job) -> QPushButton | None:
        row = self._rows.get(id(job))
        return row[3] if row else None
