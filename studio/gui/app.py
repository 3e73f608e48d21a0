"""QApplication set-up (name, style, palette following the system light/dark scheme) and `main`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

ORG = "ParetoStudio"
APP = "Pareto Studio"


def settings() -> QSettings:
    """The studio's settings (INI format, so tests can redirect them with QSettings.setPath)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


def dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 48), QColor(223, 225, 229)
    for role, c in (
        (QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, QColor(38, 40, 43)),
        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.ToolTipBase, window),
        (QPalette.ColorRole.ToolTipText, text), (QPalette.ColorRole.Highlight, QColor(53, 116, 240)),
        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)), (QPalette.ColorRole.Link, QColor(90, 160, 255)),
        (QPalette.ColorRole.PlaceholderText, QColor(140, 143, 148)),
    ):  # fmt: skip
        p.setColor(role, c)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(110, 112, 116))
    return p


def apply_color_scheme(app: QApplication) -> None:
    """Fusion style with a dark palette when the system prefers dark, the standard one otherwise."""
    dark = QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
    app.setPalette(dark_palette() if dark else app.style().standardPalette())


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication (reused if one exists, e.g. under pytest-qt)."""
    app = QApplication.instance()
    if app is None:
        try:  # QtWebEngine (Netron tab) must be set up before the QApplication exists
            import studio.gui.views.netron_view  # noqa: F401
        except Exception:  # noqa: BLE001 - the Netron tab then says it is unavailable
            pass
        app = QApplication(list(argv or sys.argv[:1]))
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    app.setStyle("Fusion")
    apply_color_scheme(app)
    QGuiApplication.styleHints().colorSchemeChanged.connect(lambda _s: apply_color_scheme(app))
    import pyqtgraph as pg

    pg.setConfigOptions(antialias=True)
    return app


def main(argv: list[str] | None = None) -> int:
    """`studio gui [MODEL] [--workspace FILE] [--factory M:F] [--trust-pickle] [--input-shape S]`."""
    p = argparse.ArgumentParser(prog="studio gui")
    p.add_argument("model", nargs="?")
    p.add_argument("--workspace")
    p.add_argument("--factory")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--input-shape")
    args = p.parse_args(argv)
    return run(Path(args.model) if args.model else None, Path(args.workspace) if args.workspace else None,
               factory=args.factory, trust_pickle=args.trust_pickle, input_shape=args.input_shape)  # fmt: skip


def run(
    model: Path | None = None,
    workspace: Path | None = None,
    *,
    factory: str | None = None,
    trust_pickle: bool = False,
    input_shape: str | None = None,
) -> int:
    """Show the window and open `workspace` or `model`. For a PyTorch model, `factory` /
    `trust_pickle` / `input_shape` (text like "1,3,224,224") skip the questions the window asks."""
    app = create_app()
    from studio.gui.main_window import MainWindow

    win = MainWindow()
    win.show()
    open_start(win, model, workspace, factory=factory, trust_pickle=trust_pickle, input_shape=input_shape)
    return app.exec()


def open_start(win, model, workspace, *, factory=None, trust_pickle=False, input_shape=None) -> bool:
    """What `studio gui ARGS` opens first (a bad shape shows the error dialog, like any bad file)."""
    from studio.core.errors import StudioError
    from studio.gui.dialogs.errors import show_error
    from studio.gui.dialogs.torch_open import parse_shape

    if workspace is not None:
        return win.open_workspace(Path(workspace))
    if model is None:
        return False
    if factory or trust_pickle or input_shape:
        try:
            shape = parse_shape(input_shape) if input_shape else None
        except StudioError as e:
            show_error(win, "Cannot open model", e.message, hint=e.hint or "")
            return False
        return win.open_model(Path(model), factory=factory, trust_pickle=trust_pickle, input_shape=shape)
    return win.open_path(Path(model))


if __name__ == "__main__":
    sys.exit(main())
