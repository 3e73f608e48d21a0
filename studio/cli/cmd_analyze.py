"""`studio analyze MODEL --data D [--calib C] [--settings ...] [--proxy] [--json] [-o TABLE.json]`

Measured per-layer sensitivity sweep (studio.core.sensitivity): a table of layers × settings with
the drop in points (or the proxy's layer-output SQNR), and what the sweep cost against the naive
one-full-evaluation-per-pair sweep.
"""

from __future__ import annotations

import json

from studio.cli.main import add_model_args, open_model
from studio.cli.progress import run_with_progress


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True, help="data (.npz): used for the sweep unless --calib is given")
    p.add_argument("--calib", help="calibration data for the sweep (default: a seeded subset of --data)")
    p.add_argument("--n-samples", type=int, default=128, help="calibration samples used (default 128)")
    p.add_argument("--settings", help="e.g. 'channels:0.25,0.5 svd:0.25 int8 kmeans:8,4' (default: all)")
    p.add_argument("--layers", nargs="*", help="only these layers (node names)")
    p.add_argument("--proxy", action="store_true", help="label-free layer-output SQNR (estimated, faster)")
    p.add_argument(
        "--hopeless", type=float, default=5.0, help="drop (pt) after which stronger settings are skipped"
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: in process)")
    p.add_argument("--ray", help="fan out over Ray: auto | local | HOST:PORT")
    p.add_argument("-o", "--output", help="write the table as JSON here")
    p.add_argument("--json", action="store_true", help="print the table as JSON (no progress bar)")


def load_calib(args):
    """--calib (seeded subset), else a seeded subset of --data; returns (calib, held-out or None)."""
    import numpy as np

    from studio.core.evaluate import calibration_subset, load_dataset

    data = load_dataset(args.data)
    n = max(1, args.n_samples)
    if getattr(args, "calib", None):
        return calibration_subset(load_dataset(args.calib), n), data
    if len(data) < 4:
        return data, None
    n = min(n, len(data) // 2)
    calib = calibration_subset(data, n)
    picked = set(np.random.default_rng(0).choice(len(data), size=n, replace=False).tolist())
    rest = [i for i in range(len(data)) if i not in picked]
    return calib, data.subset(rest)


def run(args) -> int:
    from studio.core.parallel import make_pool
    from studio.core.sensitivity import default_settings, parse_settings, sweep

    handle = open_model(args)
    calib, _ = load_calib(args)
    has_cal = True
    settings = parse_settings(args.settings, has_calibration=has_cal) if args.settings else default_settings()
    pool = make_pool(args.workers, args.ray)
    with pool:
        for w in pool.warnings:
            print(f"warning: {w}", file=__import__("sys").stderr)
        table = run_with_progress(
            sweep(
                handle,
                calib,
                settings=settings,
                layers=args.layers,
                proxy=args.proxy,
                hopeless_drop=args.hopeless / 100,
                pool=pool,
            ),  # fmt: skip
            label="sensitivity",
            quiet=args.json,
        )
    if args.output:
        table.save(args.output)
    if args.json:
        print(json.dumps(table.to_dict(), indent=1))
        return 0
    print_table(table)
    return 0


def print_table(table) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = []
    for s in table.settings:
        if s["key"] not in keys and any(s["key"] in table.drops.get(la, {}) or s["key"] in table.inferred.get(la, {})
                                        for la in table.layers):  # fmt: skip
            keys.append(s["key"])
    unit = "SQNR at the layer output, estimated" if table.metric == "layer_output_nsr" else "drop in pt"
    what = {"top1": "top-1 accuracy", "top1_agreement": "top-1 agreement with the original",
            "cosine_mean": "mean cosine to the original", "layer_output_nsr": "proxy"}[table.metric]  # fmt: skip
    t = Table(title=f"sensitivity: {unit} of {what} ({table.kind} on {table.n_samples} samples, {table.source})",
              title_justify="left")  # fmt: skip
    t.add_column("layer")
    for k in keys:
        t.add_column(k, justify="right")
    for la in table.layers:
        cells = []
        for k in keys:
            if k in table.drops.get(la, {}):
                v = table.drops[la][k]
                txt = table.describe_value(v)
                if table.samples.get(la, {}).get(k, table.n_samples) < table.n_samples:
                    txt += "*"
                cells.append(txt)
            elif k in table.inferred.get(la, {}):
                cells.append("≤" + table.describe_value(table.inferred[la][k]["drops"]))
            elif str(table.skipped.get(la, {}).get(k, "")).startswith("early"):
                cells.append("skip")
            else:
                cells.append("")
        t.add_row(la, *cells)
    Console(width=200).print(t)
    c = table.cost
    print("* measured on a quick quarter of the samples (decisive early exit); ≤ bounded by a stronger "
          "lossless setting of the same family; skip = a milder setting already lost too much")  # fmt: skip
    if c.get("multiple") is not None:
        print(
            f"sweep cost: {c['multiple']:.2f}× the naive sweep ({c['pairs']} (layer, setting) pairs, one full "
            f"evaluation each), counted in MAC-weighted forward passes; {c['measured']} measured, "
            f"{c['inferred']} inferred, {c['skipped_early']} skipped, {c['quick_exits']} quick exits; "
            f"{c['wall_s']:.1f} s wall ({c['pool']})"
        )
