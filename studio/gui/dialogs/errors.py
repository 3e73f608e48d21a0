"""Error dialog: the one-line message a user can act on, the hint, and details on demand."""

from __future__ import annotations

import traceback

from PySide6.QtWidgets import QMessageBox, QWidget

from studio.core.errors import StudioError


class ErrorDialog(QMessageBox):
    """A critical message box with the StudioError message, its hint and expandable details."""

    def __init__(self, parent: QWidget | None, title: str, message: str, details: str = "", hint: str = ""):
        super().__init__(parent)
        self.setIcon(QMessageBox.Icon.Critical)
        self.setWindowTitle(title)
        self.setText(message)
        if hint:
            self.setInformativeText(hint)
        if details:
            self.setDetailedText(details)
        self.setStandardButtons(QMessageBox.StandardButton.Close)


def show_error(
    parent: QWidget | None, title: str, message: str, details: str = "", hint: str = ""
) -> ErrorDialog:
    """Show a modal error dialog (returns it after it was closed)."""
    dlg = ErrorDialog(parent, title, message, details, hint)
    dlg.exec()
    return dlg


def show_exception(parent: QWidget | None, title: str, exc: BaseException) -> ErrorDialog:
    """StudioErrors show their message + hint; anything else shows its type and the traceback."""
    if isinstance(exc, StudioError):
        return show_error(parent, title, exc.message, hint=exc.hint or "")
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return show_error(parent, title, f"{type(exc).__name__}: {exc}", details=details)
