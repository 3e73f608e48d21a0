"""`studio diff A B [--json]`: structural per-layer diff of two ONNX models (or two variants of a
workspace: `studio diff --workspace W.studio ID_A ID_B`, where `original` names the source)."""

from __future__ import annotations

import json
import sys


def add_arguments(p) -> None:
    p.add_argument("a", help="the reference model (.onnx), or a variant id/name with --workspace")
    p.add_argument("b", help="the changed model (.onnx), or a variant id/name with --workspace")
    p.add_argument("--workspace", metavar="W.studio", help="read A and B from this workspace")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")
    p.add_argument("--all", action="store_true", help="also list unchanged layers")


def _load(args):
    from studio.core.model import load_model

    if not args.workspace:
        return load_model(args.a).proto, load_model(args.b).proto, args.a, args.b
    from studio.core.workspace import ORIGINAL, Workspace

    with Workspace.open(args.workspace, read_only=True) as ws:
        protos, labels = [], []
        for key in (args.a, args.b):
            if key == ORIGINAL:
                protos.append(ws.load_source().proto)
                labels.append("original")
            else:
                rec = ws.find(key)
                protos.append(ws.load_variant_proto(rec.id))
                labels.append(f"{rec.name} ({rec.id})")
    return protos[0], protos[1], labels[0], labels[1]


def run(args) -> int:
    from studio.core.diff import diff_models

    a, b, la, lb = _load(args)
    d = diff_models(a, b)
    if args.json:
        out = d.to_dict()
        out["a"], out["b"] = str(la), str(lb)
        json.dump(out, sys.stdout, indent=2, default=str)
        print()
        return 0
    print_diff(d, la, lb, show_all=args.all)
    return 0


def print_diff(d, la: str, lb: str, *, show_all: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from studio.core.diff import _fmt, _ratio

    # Piped output (grep, files) gets wide rows instead of wrapped cells.
    con = Console() if sys.stdout.isatty() else Console(width=220)
    con.print(f"[bold]{la}[/] → [bold]{lb}[/]  (structure read from the graphs: estimated, not measured)")
    t = Table(show_lines=False)
    for col in ("layer", "op", "params", "MACs/sample", "weight bytes", "precision", "changes"):
        t.add_column(
            col,
            overflow="fold",
            justify="right" if col in ("params", "MACs/sample", "weight bytes") else "left",
        )
    for x in d.layers:
        if x.status == "unchanged" and not show_all:
            continue
        ops = x.op_a or "—"
        if x.ops_b and x.ops_b != [x.op_a]:
            ops += " → " + "+".join(x.ops_b)
        prec = x.precision_a if x.precision_a == x.precision_b else f"{x.precision_a} → {x.precision_b}"
        t.add_row(
            x.name,
            ops,
            f"{_fmt(x.params_a)} → {_fmt(x.params_b)}",
            f"{_fmt(x.macs_a)} → {_fmt(x.macs_b)}",
            f"{_fmt(x.bytes_a)} → {_fmt(x.bytes_b)}",
            prec,
            "\n".join(x.changes(precision=False)) or ("unchanged" if x.status == "unchanged" else ""),
        )
    con.print(t)
    for key, label in (("model_bytes", "model bytes"), ("params", "params"), ("macs", "MACs/sample")):
        a, b = d.totals[key]
        con.print(f"{label}: {_fmt(a)} → {_fmt(b)} ({_ratio(a, b)})")
    if d.added_nodes:
        con.print("added nodes: " + ", ".join(f"{op}×{n}" for op, n in d.op_counts("added").items()))
    if d.removed_nodes:
        con.print("removed nodes: " + ", ".join(f"{op}×{n}" for op, n in d.op_counts("removed").items()))
