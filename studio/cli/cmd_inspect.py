"""`studio inspect MODEL`: every weighted layer with shapes, params, MACs, size, dtype, sparsity,
and the totals identity (weights = layers + other initializers; share of the file)."""

from __future__ import annotations

import sys

from studio.cli.format import console, dumps, exact_bytes, human_bytes, human_count, shape_text


def add_arguments(p) -> None:
    from studio.cli.main import add_model_args

    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (layers + totals)")
    p.add_argument("--group", action="store_true", help="sum layers per name group (module path)")
    p.add_argument(
        "--group-depth", type=int, default=2, metavar="D", help="with --group: path components kept (2)"
    )
    p.add_argument("--top", type=int, metavar="N", help="show only the N largest layers (by bytes)")


def _activation_shapes(la) -> tuple[list | None, list | None]:
    """(activation input shape, output shape): the input that is not the layer's weight."""
    ins = la.input_shapes
    if la.op_type == "Gather":
        act = ins[1] if len(ins) > 1 else None  # Gather(table, indices)
    else:
        act = next((s for s in ins if s is not None and list(s) != list(la.weight_shape)), None)
    return act, (la.output_shapes[0] if la.output_shapes else None)


def layer_record(la) -> dict:
    """One layer as plain JSON-able data."""
    act_in, act_out = _activation_shapes(la)
    return {
        "name": la.name,
        "op_type": la.op_type,
        "kind": la.kind,
        "group": "/".join(la.group),
        "input_shape": act_in,
        "output_shape": act_out,
        "weight_name": la.weight_name,
        "weight_shape": la.weight_shape,
        "params": la.params,
        "macs_per_sample": la.macs,
        "weight_bytes": la.weight_bytes,
        "dtype": la.dtype,
        "sparsity": None if la.stats is None else la.stats.sparsity,
    }


def totals_record(an, file_bytes: int | None) -> dict:
    return {
        "layers": len(an.layers),
        "params": an.total_params,
        "macs_per_sample": an.total_macs,
        "total_weight_bytes": an.total_weight_bytes,
        "layer_weight_bytes": an.layer_weight_bytes,
        "other_initializer_bytes": an.other_initializer_bytes,
        "file_bytes": file_bytes,
        "weights_share_of_file": (an.total_weight_bytes / file_bytes) if file_bytes else None,
        "op_counts": an.op_counts,
        "opsets": an.opsets,
        "inputs": [{"name": n, "shape": s, "dtype": d} for n, s, d in an.inputs],
        "outputs": [{"name": n, "shape": s, "dtype": d} for n, s, d in an.outputs],
    }


def totals_line(an, file_bytes: int | None) -> str:
    """'weights X B = layers Y B + other initializers Z B; file F B (weights are W% of file)'."""
    s = (
        f"weights {exact_bytes(an.total_weight_bytes)} = layers {exact_bytes(an.layer_weight_bytes)} "
        f"+ other initializers {exact_bytes(an.other_initializer_bytes)}"
    )
    if file_bytes:
        s += (
            f"; file {exact_bytes(file_bytes)} ({human_bytes(file_bytes)}; weights are "
            f"{100.0 * an.total_weight_bytes / file_bytes:.1f}% of file)"
        )
    return s


def _group_rows(layers, depth: int) -> list[dict]:
    groups: dict[str, dict] = {}
    for la in layers:
        key = "/".join(la.group[:depth]) or "(top level)"
        g = groups.setdefault(key, {"group": key, "layers": 0, "params": 0, "macs": 0, "bytes": 0, "ops": {}})
        g["layers"] += 1
        g["params"] += la.params
        g["macs"] += la.macs
        g["bytes"] += la.weight_bytes
        g["ops"][la.op_type] = g["ops"].get(la.op_type, 0) + 1
    return list(groups.values())


def run(args) -> int:
    from studio.cli.main import open_model
    from studio.core.bench import model_file_bytes
    from studio.core.graph import analyze

    handle = open_model(args)
    file_bytes = model_file_bytes(handle.onnx_path) if handle.onnx_path else None
    an = analyze(handle.proto, file_bytes=file_bytes)
    warnings = list(handle.warnings) + list(an.warnings)
    layers = list(an.layers)
    if args.top:
        layers = sorted(layers, key=lambda la: la.weight_bytes, reverse=True)[: args.top]

    if args.json:
        out = {
            "model": str(handle.source_path),
            "onnx_path": str(handle.onnx_path) if handle.onnx_path else None,
            "sha256": handle.sha256,
            "layers": [layer_record(la) for la in layers],
            "totals": totals_record(an, file_bytes),
            "warnings": warnings,
        }
        if args.group:
            out["groups"] = _group_rows(an.layers, args.group_depth)
        print(dumps(out))
        return 0

    from rich.markup import escape
    from rich.table import Table

    con = console()
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    title = f"{handle.name}: {len(an.layers)} weighted layers"
    if args.top and args.top < len(an.layers):
        title += f" (the {len(layers)} largest shown)"
    if args.group:
        t = Table(title=title + f", grouped at depth {args.group_depth}")
        for col in ("group", "layers", "ops", "params", "MACs/sample", "size"):
            t.add_column(col, justify="left" if col in ("group", "ops") else "right")
        for g in _group_rows(layers, args.group_depth):
            ops = ", ".join(f"{k}×{v}" for k, v in sorted(g["ops"].items()))
            t.add_row(
                escape(g["group"]), str(g["layers"]), ops, human_count(g["params"]), human_count(g["macs"]),
                human_bytes(g["bytes"]),
            )  # fmt: skip
    else:
        t = Table(title=title)
        cols = ("layer", "op", "input → output", "weight", "params", "MACs/sample", "size", "dtype", "zeros")
        for col in cols:
            t.add_column(
                col, justify="right" if col in ("params", "MACs/sample", "size", "zeros") else "left"
            )
        for la in layers:
            act_in, act_out = _activation_shapes(la)
            sp = "-" if la.stats is None else f"{100 * la.stats.sparsity:.1f}%"
            t.add_row(
                escape(la.name), la.op_type, escape(f"{shape_text(act_in)} → {shape_text(act_out)}"),
                escape(shape_text(la.weight_shape)), human_count(la.params), human_count(la.macs),
                human_bytes(la.weight_bytes), la.dtype, sp,
            )  # fmt: skip
    con.print(t)
    con.print(
        f"params {human_count(an.total_params)} ({an.total_params:,}); "
        f"MACs {human_count(an.total_macs)} per sample (counted from shapes; symbolic dims as 1)"
    )
    con.print(totals_line(an, file_bytes), highlight=False, markup=False)
    ins = ", ".join(f"{n} {shape_text(s)} {d}" for n, s, d in an.inputs)
    outs = ", ".join(f"{n} {shape_text(s)} {d}" for n, s, d in an.outputs)
    con.print(f"inputs: {ins}; outputs: {outs}", highlight=False, markup=False)
    return 0
