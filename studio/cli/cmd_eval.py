"""`studio eval MODEL --data D`: accuracy when D has labels, otherwise label-free fidelity against
a reference model (default: the model itself, a sanity check that reads exactly 1.0)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from studio.cli.format import dumps, metric_json, metric_line


def add_arguments(p) -> None:
    from studio.cli.main import add_model_args

    add_model_args(p)
    p.add_argument(
        "--data", required=True, help="an .npz (arrays named after the inputs, optional 'labels'), "
        "an image folder (one sub-folder per class), or package.module:function",
    )  # fmt: skip
    p.add_argument("--reference", help="original model for label-free fidelity (default: the model itself)")
    p.add_argument("--batch", type=int, default=64, help="batch size for ORT runs (64)")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT decides)")
    p.add_argument("--n", type=int, help="evaluate a seeded subset of N samples")
    p.add_argument("--evaluator", help="package.module:function(outputs, dataset) -> list[Metric]")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _dataset_for(args, handle):
    from studio.core.evaluate import calibration_subset, load_dataset

    kw = {}
    if Path(args.data).is_dir():
        names = handle.input_names()
        if len(names) == 1:
            kw["input_name"] = names[0]  # an image folder feeds the model's only input
    ds = load_dataset(args.data, **kw)
    if args.n is not None:
        if args.n < 1:
            from studio.core.errors import DatasetError

            raise DatasetError(f"--n must be at least 1, got {args.n}")
        ds = calibration_subset(ds, args.n)
    return ds


def run(args) -> int:
    from studio.cli.main import open_model
    from studio.cli.progress import run_with_progress
    from studio.core.datasets import load_evaluator
    from studio.core.errors import StudioError
    from studio.core.evaluate import evaluate
    from studio.core.jobs import JobContext, as_generator
    from studio.core.model import load_model

    if args.batch < 1:
        raise StudioError(f"--batch must be at least 1, got {args.batch}")
    handle = open_model(args)
    for w in handle.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.evaluator:
        load_evaluator(args.evaluator)  # fail before the (possibly long) run if it cannot import
    ds = _dataset_for(args, handle)
    if args.evaluator:
        ds.meta["evaluator"] = args.evaluator

    reference = None
    ref_name = None
    if args.reference:
        reference = load_model(args.reference).proto
        ref_name = args.reference
    elif ds.labels is None:
        reference = handle.proto
        ref_name = f"{args.model} (itself)"

    def job(ctx):
        return evaluate(
            handle.proto, ds, reference=reference, batch_size=args.batch, threads=args.threads, ctx=ctx
        )

    metrics = run_with_progress(
        as_generator(job, JobContext()), label=f"evaluating on {len(ds)} samples", quiet=args.json
    )
    metrics = [
        dataclasses.replace(m, extra={**m.extra, "reference": ref_name}) if m.kind == "fidelity" else m
        for m in metrics
    ]
    if args.json:
        print(
            dumps(
                {
                    "model": args.model,
                    "data": ds.source,
                    "n_samples": len(ds),
                    "labels": ds.labels is not None,
                    "reference": ref_name,
                    "metrics": [metric_json(m) for m in metrics],
                }
            )
        )
        return 0
    print(f"{args.model} on {ds.source}: {len(ds)} samples{' with labels' if ds.labels is not None else ''}")
    for m in metrics:
        print("  " + metric_line(m))
    return 0
