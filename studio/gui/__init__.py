"""The studio window (PySide6 + pyqtgraph). The only package that imports Qt; `studio gui`
imports it lazily so the CLI and the core run without PySide6."""
