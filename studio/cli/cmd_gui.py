"""`studio gui [MODEL] [--workspace FILE]`: start the window (PySide6 is imported only here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.core.errors import StudioError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model (.onnx / .pt), recipe or .studio workspace to open")
    p.add_argument("--workspace", help="open this .studio workspace (its source model comes with it)")


def run(args) -> int:
    try:
        from studio.gui.app import run as run_gui
    except ImportError as e:
        raise StudioError(f"the GUI needs PySide6 ({e})", hint="pip install 'pareto-studio[gui]'") from None
    return run_gui(Path(args.model) if args.model else None, Path(args.workspace) if args.workspace else None)
