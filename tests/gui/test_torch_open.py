"""Opening PyTorch files from the window: state_dict asks for its factory (remembered), a pickled
module needs an explicit "trust this file", TorchScript asks for an input shape only when the
export needs one, bad factories show the loader's message. Real torch exports (cached by hash)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
pytest.importorskip("PySide6")
torch = pytest.importorskip("torch")

from PySide6.QtWidgets import QDialog  # noqa: E402

from studio.gui.dialogs.torch_open import TorchOpenDialog, TrustPickleDialog, parse_shape  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "assets"
FACTORY = "studio.demos.digits:build_model"
DIGITS_LAYERS = {
    "/conv1/conv1.0/Conv",
    "/conv2/conv2.0/Conv",
    "/conv3/conv3.0/Conv",
    "/fc1/Gemm",
    "/fc2/Gemm",
}


@pytest.fixture
def dialogs(monkeypatch):
    """TorchOpenDialog.exec fills the fields from `answers` (None = keep what is there) and
    accepts through the dialog's own validation; records (kind, factory shown, shape shown)."""
    seen: list[tuple[str, str | None, str]] = []
    answers: dict = {"factory": FACTORY, "shape": None, "accept": True}

    def fake_exec(self):
        seen.append(
            (self.kind, self.factory_edit.text() if self.factory_edit else None, self.shape_edit.text())
        )
        if self.factory_edit is not None and answers["factory"] is not None:
            self.factory_edit.setText(answers["factory"])
        if answers["shape"] is not None:
            self.shape_edit.setText(answers["shape"])
        if not answers["accept"]:
            return QDialog.DialogCode.Rejected
        self.accept()  # validates; stays open (result Rejected) on a malformed value
        return self.result()

    monkeypatch.setattr(TorchOpenDialog, "exec", fake_exec)
    return seen, answers


def _layers(w) -> set[str]:
    return {la.name for la in w.session.analysis.layers}


def test_state_dict_asks_for_factory_remembers_it_and_opens(window, dialogs):
    seen, _answers = dialogs
    pt = ASSETS / "digits_cnn.pt"
    assert window.open_path(pt, wait=True)
    assert seen == [("state_dict", "", "")]  # nothing remembered yet
    assert _layers(window) == DIGITS_LAYERS
    assert window.session.handle.torch_source["factory"] == FACTORY
    assert window.act_distill.isEnabled()  # the PyTorch source is known: fine-tuning works
    # Second open (drag-and-drop goes through open_path too): the last factory is pre-filled.
    window.session.handle = None
    assert window.open_path(pt, wait=True)
    assert seen[-1] == ("state_dict", FACTORY, "")


def test_bad_factory_shows_loader_message_and_cancel_opens_nothing(window, dialogs, error_dialogs):
    seen, answers = dialogs
    answers["factory"] = "studio.demos.digits:no_such_function"
    assert not window.open_path(ASSETS / "digits_cnn.pt", wait=True)
    assert window.session.handle is None
    assert len(error_dialogs) == 1 and "no callable 'no_such_function'" in error_dialogs[0].text()
    answers["accept"] = False
    assert not window.open_path(ASSETS / "digits_cnn.pt", wait=True)
    assert len(error_dialogs) == 1 and window.session.handle is None and len(seen) == 2
    assert "not opened" in window.last_message


def test_dialog_validates_factory_and_shape(qtbot):
    dlg = TorchOpenDialog(None, ASSETS / "digits_cnn.pt", "state_dict")
    qtbot.addWidget(dlg)
    dlg.factory_edit.setText("no colon here")
    dlg.accept()
    assert dlg.result() != QDialog.DialogCode.Accepted and "package.module:function" in dlg.error_label.text()
    dlg.factory_edit.setText(FACTORY)
    dlg.shape_edit.setText("1,a,8")
    dlg.accept()
    assert dlg.result() != QDialog.DialogCode.Accepted and "invalid input shape" in dlg.error_label.text()
    dlg.shape_edit.setText("(1, 1, 8, 8)")
    dlg.accept()
    assert dlg.result() == QDialog.DialogCode.Accepted
    assert dlg.options().input_shape == (1, 1, 8, 8) and dlg.options().factory == FACTORY
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224) and parse_shape("  ") is None


def test_pickled_module_loads_only_after_explicit_trust(window, tmp_path, monkeypatch, error_dialogs):
    from studio.demos.digits import build_model

    whole = tmp_path / "whole_model.pt"
    torch.save(build_model(), whole)  # a whole pickled nn.Module
    choice = {"button": "cancel"}
    shown: list[TrustPickleDialog] = []

    def fake_exec(self):
        shown.append(self)
        assert self.defaultButton() is self.cancel_button  # Enter must not run foreign code
        (self.load_button if choice["button"] == "load" else self.cancel_button).click()
        return 0

    monkeypatch.setattr(TrustPickleDialog, "exec", fake_exec)
    assert not window.open_path(whole, wait=True)
    assert window.session.handle is None and not error_dialogs
    assert "runs Python code" in shown[0].informativeText()
    choice["button"] = "load"
    assert window.open_path(whole, wait=True)
    assert window.session.handle.torch_source["trust_pickle"] is True
    assert _layers(window) == DIGITS_LAYERS


def test_torchscript_asks_for_input_shape_when_the_export_needs_it(window, tmp_path, dialogs, error_dialogs):
    from studio.demos.digits import build_model

    seen, answers = dialogs
    ts = tmp_path / "digits_script.pt"
    torch.jit.trace(build_model().eval(), torch.zeros(1, 1, 8, 8)).save(str(ts))
    answers["shape"] = "1,1,8,8"
    assert window.open_path(ts, wait=True)
    assert seen == [("shape", None, "")] and not error_dialogs
    assert len(_layers(window)) == 5 and "/fc1/Gemm" in _layers(window)  # (traced names differ)
    assert window.session.handle.torch_source["input_shape"] == [1, 1, 8, 8]
    # Jobs in a child process reopen the source with the same shape.
    from studio.core.measure_job import model_spec

    path, info = model_spec(window.session.handle)
    assert path == str(ts) and info["input_shape"] == [1, 1, 8, 8]


def test_studio_gui_command_line_factory_opens_without_asking(qtbot, window, dialogs):
    from studio.cli.main import build_parser
    from studio.gui.app import open_start

    seen, _ = dialogs
    args = build_parser().parse_args(["gui", str(ASSETS / "digits_cnn.pt"), "--factory", FACTORY])
    assert args.factory == FACTORY and not args.trust_pickle
    with qtbot.waitSignal(window.model_opened, timeout=60_000) as sig:
        assert open_start(window, Path(args.model), None, factory=args.factory)
    assert sig.args == [True] and not seen
    assert window.session.handle.torch_source["factory"] == FACTORY
