"""`studio bench MODEL --batch 1,32`: measured latency p50/p90 per batch size on ORT's CPU
provider, plus the file size and its zipped size."""

from __future__ import annotations

import sys

from studio.cli.format import dumps, metric_json, metric_value


def add_arguments(p) -> None:
    from studio.cli.main import add_model_args

    add_model_args(p)
    p.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,32 (default 1)")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT decides)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per batch size (20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    p.add_argument("--data", help="time on real inputs from this data set instead of synthetic ones")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _batch_sizes(text: str) -> list[int]:
    from studio.core.errors import StudioError

    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise StudioError(f"--batch {text!r}: expected positive integers like 1,32")
    return sizes


def run(args) -> int:
    from studio.cli.main import open_model
    from studio.cli.progress import run_with_progress
    from studio.core.bench import bench_latency, size_on_disk
    from studio.core.errors import StudioError
    from studio.core.evaluate import load_dataset
    from studio.core.jobs import JobContext, as_generator

    sizes = _batch_sizes(args.batch)
    if args.repeats < 1 or args.warmup < 0:
        raise StudioError("--repeats must be at least 1 and --warmup at least 0")
    handle = open_model(args)
    for w in handle.warnings:
        print(f"warning: {w}", file=sys.stderr)
    data = load_dataset(args.data) if args.data else None

    def job(ctx):
        return bench_latency(
            handle.proto, batch_sizes=sizes, threads=args.threads, warmup=args.warmup,
            repeats=args.repeats, inputs=data, ctx=ctx,
        )  # fmt: skip

    latency = run_with_progress(as_generator(job, JobContext()), label="timing", quiet=args.json)
    size = size_on_disk(handle.onnx_path if handle.onnx_path else handle.proto)
    if args.json:
        print(dumps({"model": args.model, "metrics": [metric_json(m) for m in latency + size]}))
        return 0

    from rich.markup import escape
    from rich.table import Table

    from studio.cli.format import console

    first = latency[0]
    t = Table(title=f"{handle.name}: latency (measured)")
    for col in ("batch", "p50 ms", "p90 ms", "p50 ms / sample"):
        t.add_column(col, justify="right")
    for b in sizes:
        p50 = next(m for m in latency if m.name == "latency_p50_ms" and m.extra["batch_size"] == b)
        p90 = next(m for m in latency if m.name == "latency_p90_ms" and m.extra["batch_size"] == b)
        t.add_row(str(b), f"{p50.value:.3f}", f"{p90.value:.3f}", f"{p50.value / b:.4f}")
    con = console()
    con.print(t)
    how = first.source.rsplit(", batch", 1)[0] + ", " + first.source.rsplit(", ", 1)[-1]
    con.print(
        escape(f"● measured over {args.repeats} runs after {args.warmup} warm-up runs, {how}"),
        highlight=False,
    )
    for m in size:
        con.print(escape(f"● {m.name} = {metric_value(m)}  (measured, {m.source})"), highlight=False)
    return 0
