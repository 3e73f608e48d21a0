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
    """`studio gui [MODEL] [--workspace FILE]`."""
    p = argparse.ArgumentParser(prog="studio gui")
    p.add_argument("model", nargs="?")
    p.add_argument("--workspace")
    args = p.parse_args(argv)
    return run(Path(args.model) if args.model else None, Path(args.workspace) if args.workspace else None)


def run(model: Path | None = None, workspace: Path | None = None) -> int:
    app = create_app()
    from studio.gui.main_window import MainWindow

    win = MainWindow()
    win.show()
    if workspace is not None:
        win.open_workspace(workspace)
    elif model is not None:
        win.open_path(model)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
