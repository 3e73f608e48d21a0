"""Export dialog: pick a variant, a folder and formats; export + verify in a worker; show the
verification summary (checker, ORT providers, fidelity, sizes)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from studio.gui.state import Session, VariantEntry
from studio.gui.workers import Job, JobManager


def summarize_verification(v: dict) -> str:
    """Plain-text summary of an export's verification record."""
    lines = [f"verification: {'OK' if v.get('ok') else 'PROBLEMS FOUND'}"]
    chk = v.get("checker") or {}
    if chk:
        lines.append(f"onnx.checker: {'ok' if chk.get('ok') else chk.get('error', 'failed')}")
    for prov, r in (v.get("providers") or {}).items():
        extra = f", unsupported ops: {r.get('unsupported_ops')}" if r.get("unsupported_ops") else ""
        lines.append(f"ORT {prov}: {'loads' if r.get('ok') else r.get('error', 'failed')}{extra}")
    fid = v.get("fidelity") or {}
    if fid:
        what = "synthetic inputs" if fid.get("synthetic") else fid.get("data")
        lines.append(f"fidelity/accuracy on {fid.get('n_samples')} samples of {what}:")
        for m in fid.get("metrics", []):
            lines.append(f"  {m['name']}: {m['value']:.4g} {m.get('unit', '')} ({m['kind']})")
    sizes = v.get("sizes") or {}
    if sizes.get("variant_bytes"):
        ratio = sizes.get("ratio")
        lines.append(
            f"size on disk: {sizes['variant_bytes']:,} B (original {sizes.get('original_bytes') or 0:,} B"
            + (f", {ratio:.2f}× smaller" if ratio else "")
            + ", measured)"
        )
    for w in v.get("warnings", [])[:10]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


class ExportDialog(QDialog):
    """Runs `studio.core.export.export_variant` in the job manager."""

    def __init__(
        self, session: Session, jobs: JobManager, parent: QWidget | None = None, selected: str | None = None
    ):
        super().__init__(parent)
        self.setWindowTitle("Export variant")
        self.session = session
        self.jobs = jobs
        self.job: Job | None = None
        self.result = None
        self.variant = QComboBox()
        for e in session.variants:
            if not e.is_original:
                self.variant.addItem(f"{e.label} — {e.recipe.summary()}"[:120], e.id)
        if selected:
            i = self.variant.findData(selected)
            if i >= 0:
                self.variant.setCurrentIndex(i)
        self.folder = QLineEdit(str(Path.home() / "pareto-export"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        self.formats = {k: QCheckBox(label) for k, label in (("onnx", "ONNX model"), ("recipe", "recipe (YAML)"),
                                                              ("report", "report (Markdown)"))}  # fmt: skip
        fmt_row = QHBoxLayout()
        for cb in self.formats.values():
            cb.setChecked(True)
            fmt_row.addWidget(cb)
        form = QFormLayout()
        form.addRow("Variant:", self.variant)
        form.addRow("Folder:", row)
        form.addRow("Formats:", fmt_row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.summary.setPlaceholderText("verification summary appears here after export")
        self.buttons = QDialogButtonBox()
        self.export_btn = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.export_btn.clicked.connect(self.start_export)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.summary, 1)
        lay.addWidget(self.buttons)
        self.resize(640, 420)
        if self.variant.count() == 0:
            self.export_btn.setEnabled(False)
            self.summary.setPlainText("No measured variant yet: run Jobs ▸ Apply & measure first.")

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export into folder", self.folder.text())
        if d:
            self.folder.setText(d)

    def selected_entry(self) -> VariantEntry | None:
        return self.session.variant(self.variant.currentData()) if self.variant.count() else None

    def start_export(self) -> Job | None:
        entry = self.selected_entry()
        if entry is None:
            return None
        try:
            from studio.core.export import export_variant
        except ImportError as e:
            self.summary.setPlainText(f"export is not available in this build: {e}")
            return None
        formats = tuple(k for k, cb in self.formats.items() if cb.isChecked())
        out_dir = Path(self.folder.text()).expanduser()
        handle = self.session.handle
        variant = entry.variant
        if variant is None:
            self.summary.setPlainText("this variant has no model in memory; re-run Apply & measure")
            return None
        try:
            data = self.session.eval_dataset()
        except Exception:  # noqa: BLE001 - verification falls back to synthetic inputs
            data = None

        def job(ctx):
            return export_variant(
                variant, handle, out_dir, data=data, providers=None, formats=formats, ctx=ctx
            )

        self.export_btn.setEnabled(False)
        self.summary.setPlainText(f"exporting to {out_dir} …")
        self.job = self.jobs.start(f"Export {entry.label}", job)
        self.job.signals.progress.connect(lambda f, m: self.progress.setValue(int(f * 1000)))
        self.job.signals.finished.connect(self._done)
        self.job.signals.failed.connect(self._failed)
        self.job.signals.cancelled.connect(lambda: self._failed("export cancelled; nothing was written", ""))
        return self.job

    def _done(self, result) -> None:
        self.result = result
        self.progress.setValue(1000)
        files = [
            p
            for p in (result.onnx_path, result.recipe_path, result.report_path, result.verification_path)
            if p
        ]
        text = summarize_verification(result.verification)
        self.summary.setPlainText(text + "\n\nwritten:\n" + "\n".join(f"  {p}" for p in files))
        self.export_btn.setEnabled(True)

    def _failed(self, message: str, details: str) -> None:
        self.summary.setPlainText(f"export failed: {message}\n\n{details}".strip())
        self.export_btn.setEnabled(True)

    def done(self, r: int) -> None:  # noqa: D401 - Qt API
        if self.job is not None and not self.job.done.is_set():
            self.jobs.cancel(self.job)
        super().done(r)
