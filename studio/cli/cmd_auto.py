"""`studio auto MODEL --data D [--calib C] --target size=10x [--target latency=1.3x --batch 8]
[--max-drop 1.0] [--json] [-o OUT.onnx] [--recipe-out R.yaml] [--ray auto|ADDR]`

Searches a mixed per-layer plan that meets every target (studio.core.search): measured
sensitivity sweep, greedy allocation, measured refinement, accuracy-aware fallback. Decisions use
the calibration data (--calib, else a seeded half of --data); the held-out numbers are measured on
the rest of --data (all of it when --calib is given) and printed separately.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from studio.cli.main import add_model_args, open_model
from studio.cli.progress import run_with_progress


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True, help="evaluation data (.npz; labels -> accuracy, else fidelity)")
    p.add_argument(
        "--calib", help="calibration data the search decides on (default: a seeded half of --data)"
    )
    p.add_argument("--n-samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--target", action="append", required=True,
                   help="size=10x | size<=2MB | size<=ort-int8 | latency=1.3x | latency<=5ms | macs=4x (repeatable)")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="batch size for latency targets (default 1)")
    p.add_argument("--max-drop", type=float, default=1.0, help="max drop in points (default 1.0)")
    p.add_argument("--settings", help="sensitivity settings, e.g. 'channels:0.25,0.5 svd:0.25 int8 kmeans:4'")
    p.add_argument("--table", help="reuse a sensitivity table written by `studio analyze -o`")
    p.add_argument("--proxy", action="store_true", help="use the label-free proxy sweep (faster, estimated)")
    p.add_argument("--max-evals", type=int, default=16, help="measured candidates at most (default 16)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--ray", help="fan out over Ray: auto | local | HOST:PORT (falls back to local)")
    p.add_argument("-o", "--output", help="write the best plan's model here (.onnx)")
    p.add_argument("--recipe-out", help="write the best plan's recipe here (.yaml / .toml / .json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")


def run(args) -> int:
    from studio.cli.cmd_analyze import load_calib
    from studio.core.errors import StudioError
    from studio.core.parallel import make_pool
    from studio.core.search import auto_compress, parse_target
    from studio.core.sensitivity import SensitivityTable, default_settings, parse_settings

    handle = open_model(args)
    targets = [parse_target(t, batch_size=args.batch) for t in args.target]
    if args.max_drop < 0:
        raise StudioError(f"--max-drop must be >= 0, got {args.max_drop}")
    if args.output and Path(args.output).resolve() == Path(args.model).resolve():
        raise StudioError("-o would overwrite the source model; choose another file")
    calib, held = load_calib(args)
    settings = parse_settings(args.settings) if args.settings else default_settings()
    table = SensitivityTable.load(args.table) if args.table else None
    pool = make_pool(args.workers, args.ray)
    with pool:
        for w in pool.warnings:
            print(f"warning: {w}", file=sys.stderr)
        result = run_with_progress(
            auto_compress(
                handle,
                calib,
                targets,
                max_drop=args.max_drop / 100,
                heldout=held,
                table=table,
                settings=settings,
                pool=pool,
                max_evals=args.max_evals,
                proxy=args.proxy,
            ),  # fmt: skip
            label="auto",
            quiet=args.json,
        )
    best = result.best
    if best is not None and best.error is None:
        # The recipe names its calibration data so `studio compress -r` reproduces the plan.
        cal_path = str(Path(args.calib or args.data).resolve())
        best.recipe = best.recipe.model_copy(
            update={"calibration": best.recipe.calibration.model_copy(update={"data": cal_path})}
        )
        if args.recipe_out:
            best.recipe.save(args.recipe_out)
        if args.output:
            from studio.core.export import embed_recipe
            from studio.core.jobs import drive
            from studio.core.model import save_model
            from studio.core.pipeline import compress

            v = drive(compress(handle, best.recipe, calibration=calib.inputs))
            embed_recipe(v.proto, best.recipe, source_sha256=handle.sha256)
            save_model(v.proto, args.output)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print_result(result)
    return 0 if result.reached else 1


def print_result(r) -> None:
    from rich.console import Console
    from rich.table import Table

    b = r.baseline
    cost = r.table.cost if r.table is not None else {}
    held = (
        f"held-out: {b['heldout_source']} ({b['heldout_samples']} samples)"
        if b.get("heldout_source")
        else "no held-out data"
    )
    t = Table(title=f"measured candidates — decisions on {b['calib_source']} ({b['calib_samples']} samples); {held}",
              title_justify="left")  # fmt: skip
    for c in (
        "#",
        "front",
        "origin",
        "size (measured)",
        "×smaller",
        "calib drop pt",
        "held-out",
        "latency ×",
        "target",
    ):
        t.add_column(c, justify="left" if c in ("origin",) else "right")
    front = set(r.front)
    for c in r.candidates:
        if c.error:
            t.add_row(str(c.id), "", c.origin[:48], "failed", "", "", c.error[:40], "", "")
            continue
        size = c.value("size_bytes")
        heldtxt = ""
        if "heldout_drop" in c.metrics:
            heldtxt = (
                f"{c.value('heldout_top1') * 100:.2f}% ({0.0 - c.value('heldout_drop') * 100 + 0.0:+.2f} pt)"
            )
        elif "heldout_cosine" in c.metrics:
            heldtxt = f"cos {c.value('heldout_cosine'):.4f}"
        lat = c.metrics.get("latency_ratio_final") or c.metrics.get("latency_ratio")
        t.add_row(
            str(c.id) + (" ★" if r.best is not None and c.id == r.best.id else ""),
            "●" if c.id in front else "",
            c.origin[:48],
            f"{size / 1e3:,.1f} kB",
            f"{b['size_bytes'] / size:.2f}",
            f"{c.loss * 100:.2f}",
            heldtxt,
            "" if lat is None else f"{lat.value:.2f}",
            "met" if c.meets_target else "",
        )
    Console(width=200).print(t)
    if r.best is not None:
        print(f"best #{r.best.id}: {r.best.recipe.summary()}")
    if cost.get("multiple") is not None:
        print(
            f"sensitivity sweep cost: {cost['multiple']:.2f}× the naive sweep (MAC-weighted forwards), {cost['wall_s']:.1f} s"
        )
    print("size = serialized ONNX bytes (measured); calib drop = top-1 accuracy/agreement or cosine drop on the "
          "calibration data (what the search decided on); latency × = interleaved A/B ratio vs the original (measured)")  # fmt: skip
    print(r.message)
