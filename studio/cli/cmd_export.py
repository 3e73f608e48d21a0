"""`studio export MODEL --recipe R -o OUTDIR [--data D] [--providers CPUExecutionProvider ...]`

Applies the recipe and writes OUTDIR/{model.onnx, recipe.yaml, report.md, verification.json}
atomically, then prints the verification summary. Exit 0 when verification passed, 1 when a
provider could not load the model or lacks a kernel, 2 for user errors (nothing written).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from studio.cli.cmd_compress import _json_safe, compress_variant, prepare
from studio.cli.main import add_model_args


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--recipe", "-r", required=True, help="recipe file (.yaml / .toml)")
    p.add_argument("-o", "--output", required=True, help="output folder (created atomically)")
    p.add_argument("--data", help="data for fidelity / accuracy checks (default: synthetic inputs)")
    p.add_argument("--calib", help="calibration data for static quantization (overrides the recipe's)")
    p.add_argument(
        "--providers",
        nargs="+",
        default=["CPUExecutionProvider"],
        help="ONNX Runtime execution providers to verify on",
    )
    p.add_argument("--n-samples", type=int, default=256, help="samples for the fidelity check")
    p.add_argument(
        "--formats",
        default="onnx,recipe,report",
        help="comma list of onnx,recipe,report (verification always)",
    )
    p.add_argument("--json", action="store_true", help="print verification.json instead of a summary")


def run(args) -> int:
    from studio.cli.progress import run_with_progress
    from studio.core.export import export_variant, refuse_source_target
    from studio.core.jobs import JobContext, as_generator

    out = Path(args.output)
    n = args.n_samples
    args.n_samples = None  # the export samples its own subset of --data
    handle, recipe, calib, data = prepare(args)
    refuse_source_target(handle, out)
    variant = compress_variant(handle, recipe, calib, quiet=args.json)
    reproduce = shlex.join(
        [
            "studio",
            "compress",
            str(handle.source_path),
            "--recipe",
            "recipe.yaml",
            "-o",
            f"{handle.name}_compressed.onnx",
        ]
        + (["--calib", args.calib_used] if getattr(args, "calib_used", None) else [])
    )
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    ctx = JobContext()
    result = run_with_progress(
        as_generator(
            lambda c: export_variant(
                variant, handle, out, data=data, providers=args.providers, n_samples=n,
                formats=formats, ctx=c, reproduce=reproduce,
            ),
            ctx,
        ),
        label="export",
        quiet=args.json,
    )  # fmt: skip
    v = result.verification
    if args.json:
        print(json.dumps(_json_safe(v), indent=2))
        return 0 if result.ok else 1
    print_summary(result)
    return 0 if result.ok else 1


def print_summary(result) -> None:
    v = result.verification
    print(f"exported to {result.out_dir}/")
    for p in (result.onnx_path, result.recipe_path, result.report_path, result.verification_path):
        if p is not None:
            print(f"  {p.name}")
    chk = v["checker"]
    print(f"onnx.checker (full): {'ok' if chk['ok'] else chk['error']}")
    for prov, r in v["providers"].items():
        state = "loads" if r["ok"] else f"FAILED: {r['error']}"
        flag = f"; no kernel for {', '.join(r['unsupported_ops'])}" if r["unsupported_ops"] else ""
        print(f"ONNX Runtime {prov}: {state}{flag}")
    f = v["fidelity"]
    what = "synthetic random inputs" if f["synthetic"] else f["data"]
    parts = [f"cosine mean {f['cosine_mean']:.5f}"]
    if f.get("sqnr_db") is not None:
        parts.append(f"SQNR {f['sqnr_db']:.1f} dB")
    if f.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {f['top1_agreement']:.4f}")
    print(f"fidelity (on {f['n_samples']} samples of {what}): " + ", ".join(parts))
    if f.get("top1") is not None:
        print(
            f"accuracy (measured on {f['n_samples']} samples): original {f['original_top1']:.4f}"
            f" -> variant {f['top1']:.4f}"
        )
    s = v["sizes"]
    if s.get("original_bytes"):
        print(
            f"size on disk (measured): {s['original_bytes']:,} B -> {s['variant_bytes']:,} B"
            f" ({s['ratio']:.2f}x smaller)"
        )
    print(f"verification: {'passed' if v['ok'] else 'FAILED'}", file=sys.stdout if v["ok"] else sys.stderr)
