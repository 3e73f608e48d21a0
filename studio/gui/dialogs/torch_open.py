"""What opening a PyTorch file needs before it can be exported to ONNX, asked in a small dialog.

`detect_torch_file_kind` (torch-free, reads only the zip directory) says what the file holds:

* a state_dict needs the code that builds the module (`package.module:function`, remembered);
* a pickled nn.Module runs code from the file when loaded, so the user must say they trust it;
* a TorchScript archive needs nothing, unless the exporter cannot tell the input shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

from studio.core.errors import ModelLoadError

FACTORY_KEY = "torch/last_factory"
SHAPE_KEY = "torch/last_input_shape"


@dataclass
class TorchOpenOptions:
    """How to load one PyTorch file (the keyword arguments of `load_model`)."""

    factory: str | None = None
    trust_pickle: bool = False
    input_shape: tuple[int, ...] | None = None


def parse_shape(text: str) -> tuple[int, ...] | None:
    """ "1,3,224,224" / "1x3x224x224" / "(1, 3, 224, 224)" -> a tuple; "" -> None."""
    parts = [p for p in text.strip().strip("()[]").replace("x", ",").replace(" ", ",").split(",") if p]
    if not parts:
        return None
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ModelLoadError(
            f"invalid input shape {text!r}", hint="write integers like 1,3,224,224"
        ) from None
    if any(d <= 0 for d in shape):
        raise ModelLoadError(f"invalid input shape {text!r}", hint="every dimension must be positive")
    return shape


def needs_input_shape(message: str) -> bool:
    """Whether a load failed only because the exporter could not tell the input shape."""
    return "input shape" in message and "cannot tell" in message


def _settings():
    from studio.gui.app import settings

    return settings()


def _shape_edit(last: str) -> QLineEdit:
    e = QLineEdit(last)
    e.setPlaceholderText("e.g. 1,1,8,8 — empty: the model says it")
    e.setToolTip(
        "example input shape used to trace the model for the ONNX export (batch first); leave it "
        "empty when the model or its module defines example_input_shape / EXAMPLE_INPUT_SHAPE"
    )
    return e


class TorchOpenDialog(QDialog):
    """Asks for a state_dict's factory + optional input shape, or (TorchScript / pickled module
    whose shape is unknown) for the input shape only."""

    def __init__(self, parent: QWidget | None, path: Path, kind: str, *, shape_required: bool = False):
        super().__init__(parent)
        self.path, self.kind = Path(path), kind
        self.setWindowTitle(f"Open {self.path.name}")
        s = _settings()
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.factory_edit: QLineEdit | None = None
        if kind == "state_dict":
            intro = (
                f"<b>{self.path.name}</b> holds only weights (a state_dict). Name the Python function that "
                "builds the model; its weights are loaded from the file, then it is exported to ONNX once "
                "(cached)."
            )
            self.factory_edit = QLineEdit(str(s.value(FACTORY_KEY, "") or ""))
            self.factory_edit.setPlaceholderText("package.module:function  or  path/to/file.py:function")
            self.factory_edit.setToolTip("a function with no required arguments that returns the nn.Module")
            self.factory_edit.setMinimumWidth(360)
            form.addRow("Model factory:", self.factory_edit)
        else:
            intro = (
                f"The exporter cannot tell the input shape of <b>{self.path.name}</b>. Give one example "
                "input shape (batch first); the batch axis stays dynamic in the ONNX model."
            )
        label = QLabel(intro)
        label.setWordWrap(True)
        lay.addWidget(label)
        self.shape_edit = _shape_edit(str(s.value(SHAPE_KEY, "") or "") if shape_required else "")
        form.addRow("Input shape:" if shape_required else "Input shape (optional):", self.shape_edit)
        lay.addLayout(form)
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #c0392b;")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        lay.addWidget(self.error_label)
        self.shape_required = shape_required
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)

    def accept(self) -> None:
        """Validate before closing: a factory must look like `module:function`, a shape be integers."""
        try:
            self.options()
        except ModelLoadError as e:
            self.error_label.setText(f"{e.message}: {e.hint}" if e.hint else e.message)
            self.error_label.show()
            return
        super().accept()

    def options(self, trust_pickle: bool = False) -> TorchOpenOptions:
        factory = self.factory_edit.text().strip() if self.factory_edit is not None else None
        if self.factory_edit is not None and (not factory or ":" not in factory):
            raise ModelLoadError(
                "the model factory must look like package.module:function",
                hint="e.g. studio.demos.digits:build_model",
            )
        shape = parse_shape(self.shape_edit.text())
        if shape is None and self.shape_required:
            raise ModelLoadError("an input shape is needed", hint="e.g. 1,3,224,224")
        return TorchOpenOptions(factory or None, trust_pickle, shape)

    def remember(self) -> None:
        """Keep the factory / shape for the next file (most projects open the same kind again)."""
        s = _settings()
        if self.factory_edit is not None:
            s.setValue(FACTORY_KEY, self.factory_edit.text().strip())
        if self.shape_edit.text().strip():
            s.setValue(SHAPE_KEY, self.shape_edit.text().strip())
        s.sync()


class TrustPickleDialog(QMessageBox):
    """A warning: loading a pickled nn.Module runs code from the file. Explicit opt-in only."""

    def __init__(self, parent: QWidget | None, path: Path):
        super().__init__(parent)
        self.setIcon(QMessageBox.Icon.Warning)
        self.setWindowTitle("Untrusted code in the model file")
        self.setText(f"{Path(path).name} is a whole pickled nn.Module, not plain weights.")
        self.setInformativeText(
            "Loading it runs Python code stored in the file, which can do anything your account can. "
            "Only load files you made yourself or fully trust. Safer: save a TorchScript archive "
            "(torch.jit.save) or a state_dict and open it with its model factory."
        )
        self.load_button = self.addButton("Load anyway (trust this file)", QMessageBox.ButtonRole.AcceptRole)
        self.cancel_button = self.addButton(QMessageBox.StandardButton.Cancel)
        self.setDefaultButton(self.cancel_button)  # Enter must not run foreign code
        self.setEscapeButton(self.cancel_button)

    def trusted(self) -> bool:
        return self.clickedButton() is self.load_button


def ask_torch_options(parent: QWidget | None, path: Path) -> TorchOpenOptions | None:
    """Options for opening a PyTorch file, asked as the file's kind needs; None = cancelled."""
    from studio.backends.torch_loader import detect_torch_file_kind

    kind = detect_torch_file_kind(Path(path))
    if kind == "state_dict":
        dlg = TorchOpenDialog(parent, path, kind)
        if dlg.exec() != QDialog.DialogCode.Accepted:
            return None
        dlg.remember()
        return dlg.options()
    if kind == "pickled":
        box = TrustPickleDialog(parent, path)
        box.exec()
        return TorchOpenOptions(trust_pickle=True) if box.trusted() else None
    # TorchScript (and files we cannot classify: the loader says what is wrong) open as they are;
    # the window asks for a shape only if the export needs one.
    return TorchOpenOptions()


def ask_input_shape(
    parent: QWidget | None, path: Path, previous: TorchOpenOptions
) -> TorchOpenOptions | None:
    """After an export failed for want of an input shape: ask for one (None = cancelled)."""
    dlg = TorchOpenDialog(parent, path, "shape", shape_required=True)
    if dlg.exec() != QDialog.DialogCode.Accepted:
        return None
    dlg.remember()
    opts = dlg.options()
    return TorchOpenOptions(previous.factory, previous.trust_pickle, opts.input_shape)
