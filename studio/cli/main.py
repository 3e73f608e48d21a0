"""`studio` command line. Each sub-command lives in its own module `studio.cli.cmd_<name>` with
`add_arguments(parser)` and `run(args) -> int`; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "inspect": "list every weighted layer with shapes, params, MACs and size",
    "eval": "measure accuracy (labels) or fidelity (no labels) with ONNX Runtime",
    "bench": "measure latency (p50/p90) per batch size, and size on disk",
    "compress": "apply a recipe and write the compressed model",
    "export": "apply a recipe, verify and write model + recipe + report atomically",
    "analyze": "measured per-layer sensitivity sweep",
    "auto": "search a mixed per-layer plan that meets a target",
    "diff": "structural diff between two models",
    "report": "write an HTML + Markdown report of a model or workspace",
    "gui": "start the studio window",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="studio", description="Pareto Studio: compress ONNX/PyTorch models layer by layer."
    )
    from studio import __version__

    p.add_argument("--version", action="version", version=f"pareto-studio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        try:
            mod = importlib.import_module(f"studio.cli.cmd_{name}")
        except ModuleNotFoundError:
            sp.set_defaults(_missing=name)
            continue
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Arguments every command that opens a model shares."""
    p.add_argument("model", help="model file: .onnx, or a PyTorch .pt/.pth (TorchScript or state_dict)")
    p.add_argument("--factory", help="for a state_dict: model factory as package.module:function")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled nn.Module (runs code from the file!)",
    )
    p.add_argument("--input-shape", help="example input shape for PyTorch export, e.g. 1,3,224,224")


def open_model(args):
    from studio.core.model import load_model

    shape = tuple(int(x) for x in args.input_shape.split(",")) if getattr(args, "input_shape", None) else None
    return load_model(
        args.model,
        factory=getattr(args, "factory", None),
        trust_pickle=getattr(args, "trust_pickle", False),
        input_shape=shape,
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"studio {args._missing}: not available in this build", file=sys.stderr)
        return 2
    from studio.core.errors import JobCancelled, StudioError

    try:
        return int(args._run(args) or 0)
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except JobCancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
