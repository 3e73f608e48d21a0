"""`studio report MODEL --recipe R [--data D] -o OUTDIR` compresses, verifies, measures and writes
OUTDIR/{report.html, report.md, tradeoff.svg, model.onnx, recipe.yaml, verification.json}.

`studio report --workspace W.studio -o OUTDIR [--variant ID]` reports the variants a workspace
already holds (with the metrics measured there); the chosen variant (default: the newest) is the
one the recipe, layer table and diff describe.
"""

from __future__ import annotations

import shlex
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", help="model file (.onnx / .pt); omit with --workspace")
    p.add_argument("--factory", help="for a state_dict: model factory as package.module:function")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a pickled nn.Module")
    p.add_argument("--input-shape", help="example input shape for PyTorch export, e.g. 1,3,224,224")
    p.add_argument("--recipe", "-r", help="recipe file (.yaml / .toml)")
    p.add_argument("--data", help="evaluation data (.npz with labels -> accuracy; without -> fidelity)")
    p.add_argument("--calib", help="calibration data for static quantization (overrides the recipe's)")
    p.add_argument("--n-samples", type=int, default=256, help="samples for accuracy / fidelity")
    p.add_argument("--workspace", metavar="W.studio", help="report the variants of this workspace")
    p.add_argument("--variant", help="with --workspace: the variant (id or name) the report describes")
    p.add_argument("-o", "--output", required=True, help="output folder")


def run(args) -> int:
    from studio.core.errors import StudioError

    if args.workspace:
        if args.model or args.recipe:
            raise StudioError("give either MODEL --recipe R or --workspace W, not both")
        html_path, md_path = report_workspace(args.workspace, args.output, variant=args.variant)
    else:
        if not args.model or not args.recipe:
            raise StudioError("studio report needs MODEL and --recipe (or --workspace W.studio)")
        html_path, md_path = report_model(args)
    print(f"wrote {html_path}")
    print(f"wrote {md_path}")
    return 0


def report_model(args) -> tuple[Path, Path]:
    from studio.cli.cmd_compress import compress_variant, prepare
    from studio.cli.progress import run_with_progress
    from studio.core.export import export_variant, files_on_disk_bytes, refuse_source_target, source_onnx_path
    from studio.core.jobs import JobContext, as_generator
    from studio.core.metrics import Metric
    from studio.core.report import write_report

    out = Path(args.output)
    n = args.n_samples
    args.n_samples = None  # the export samples its own subset of --data
    handle, recipe, calib, data = prepare(args)
    refuse_source_target(handle, out)
    variant = compress_variant(handle, recipe, calib, quiet=False)
    reproduce = shlex.join(
        [
            "studio",
            "compress",
            str(args.model),
            "--recipe",
            str(args.recipe),
            "-o",
            f"{handle.name}_compressed.onnx",
        ]
        + (["--calib", args.calib_used] if getattr(args, "calib_used", None) else [])
    )
    result = run_with_progress(
        as_generator(
            lambda c: export_variant(
                variant, handle, out, data=data, n_samples=n, ctx=c, reproduce=reproduce
            ),
            JobContext(),
        ),
        label="verify + measure",
    )
    v = result.verification
    measured = [Metric.from_dict(m) for m in v["fidelity"]["metrics"]]
    var_metrics = [
        Metric("size_bytes", float(v["sizes"]["variant_bytes"]), "measured", "file on disk", unit="B")
    ]
    var_metrics += [m for m in measured if m.name != "original_top1"]
    orig_metrics = []
    src = source_onnx_path(handle)
    if src is not None:
        orig_metrics.append(
            Metric("size_bytes", float(files_on_disk_bytes(src)), "measured", "file on disk", unit="B")
        )
    orig_metrics += [
        Metric("top1", m.value, m.kind, m.source, n_samples=m.n_samples)
        for m in measured
        if m.name == "original_top1"
    ]
    return write_report(
        out,
        original=handle,
        variants=[(variant, var_metrics)],
        verification=v,
        recipe=recipe,
        reproduce_cmd=reproduce,
        original_metrics=orig_metrics,
    )


def report_workspace(path: str, out: str, *, variant: str | None = None) -> tuple[Path, Path]:
    """Report of a workspace's variants (read-only open; nothing is re-measured)."""
    from studio.core.errors import StudioError, WorkspaceError
    from studio.core.pipeline import check_model
    from studio.core.report import RECIPE_FILE, write_report
    from studio.core.workspace import ORIGINAL, Workspace

    with Workspace.open(path, read_only=True) as ws:
        original = ws.load_source()
        recs = [r for r in ws.variants() if not r.missing]
        if not recs:
            raise WorkspaceError(f"{path}: holds no variant with a file to report")
        main = ws.find(variant) if variant else recs[-1]
        if main.missing:
            raise WorkspaceError(main.message)
        primary = next(i for i, r in enumerate(recs) if r.id == main.id)
        orig_metrics = ws.metrics(ORIGINAL)
        proto = ws.load_variant_proto(main.id)
    try:
        check_model(proto, what=f"variant {main.name}")
        verification = {"onnx.checker (full) + ONNX Runtime CPU session load": True}
    except StudioError as e:
        verification = {"onnx.checker (full) + ONNX Runtime CPU session load": f"FAILED: {e}"}
    out_dir = Path(out)
    reproduce = shlex.join(
        ["studio", "compress", str(original.source_path), "--recipe", str(out_dir / RECIPE_FILE), "-o",
         f"{original.name}_{main.name.replace(' ', '_')}.onnx"]
    )  # fmt: skip
    return write_report(
        out_dir,
        original=original,
        variants=[(r, r.metrics) for r in recs],
        verification=verification,
        recipe=main.recipe,
        reproduce_cmd=reproduce,
        original_metrics=orig_metrics,
        primary=primary,
        title=f"{original.name} — workspace {Path(path).name}",
    )
