"""`studio gui [MODEL] [--workspace FILE] [--factory M:F] [--trust-pickle] [--input-shape S]`:
start the window (PySide6 is imported only here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.core.errors import StudioError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model (.onnx / .pt), recipe or .studio workspace to open")
    p.add_argument("--workspace", help="open this .studio workspace (its source model comes with it)")
    p.add_argument("--factory", help="for a PyTorch state_dict: model factory as package.module:function")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled nn.Module (runs code from the file!)",
    )
    p.add_argument("--input-shape", help="example input shape for the PyTorch export, e.g. 1,3,224,224")


def run(args) -> int:
    try:
        from studio.gui.app import run as run_gui
    except ImportError as e:
        raise StudioError(f"the GUI needs PySide6 ({e})", hint="pip install 'pareto-studio[gui]'") from None
    return run_gui(
        Path(args.model) if args.model else None,
        Path(args.workspace) if args.workspace else None,
        factory=args.factory,
        trust_pickle=args.trust_pickle,
        input_shape=args.input_shape,
    )
