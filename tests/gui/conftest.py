"""GUI test setup: offscreen Qt, settings in a temp folder, dialogs that never block."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("PySide6")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

try:  # QtWebEngine must be imported before the QApplication (pytest-qt's qapp) exists
    import studio.gui.views.netron_view  # noqa: F401
except Exception:  # noqa: BLE001 - the views' own tests report this
    pass

from PySide6.QtCore import QSettings  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory, monkeypatch):
    """QSettings (INI, user scope) and XDG config go to a temp folder, never the user's."""
    d = tmp_path_factory.mktemp("qsettings")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(d))
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(d))
    return d


@pytest.fixture
def error_dialogs(monkeypatch):
    """Record error dialogs instead of blocking on exec(); returns the list of shown dialogs."""
    from studio.gui.dialogs.errors import ErrorDialog

    shown: list[ErrorDialog] = []

    def fake_exec(self):
        shown.append(self)
        return 0

    monkeypatch.setattr(ErrorDialog, "exec", fake_exec)
    return shown


@pytest.fixture
def window(qtbot, tmp_path, error_dialogs):
    """A main window with small measurement settings; closed (jobs cancelled) afterwards."""
    from studio.gui.main_window import MainWindow
    from studio.gui.state import MeasureSettings

    w = MainWindow(work_dir=tmp_path / "work", auto_measure=False)
    w.session.settings = MeasureSettings(eval_samples=120, calib_samples=32, bench_runs=3, bench_warmup=1)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()
