"""`studio compress MODEL --recipe R -o OUT.onnx [--data D] [--calib C] [--json]`

Applies a recipe, writes the variant atomically (never over the source), then measures it:
size on disk, accuracy / fidelity on --data, and (with --latency) an interleaved A/B latency
ratio. Every figure printed says what it is. Recipe problems exit 2 before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from studio.cli.main import add_model_args, open_model
from studio.cli.progress import run_with_progress
from studio.core.errors import DatasetError, ExportError


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--recipe", "-r", required=True, help="recipe file (.yaml / .toml)")
    p.add_argument("-o", "--output", required=True, help="where to write the compressed .onnx")
    p.add_argument("--data", help="evaluation data (.npz with labels -> accuracy; without -> fidelity)")
    p.add_argument("--calib", help="calibration data for static quantization (overrides the recipe's)")
    p.add_argument("--n-samples", type=int, default=None, help="evaluate on the first N samples of --data")
    p.add_argument("--latency", action="store_true", help="also measure an interleaved latency ratio")
    p.add_argument("--json", action="store_true", help="print the results as JSON (no progress bar)")
    p.add_argument(
        "--distill",
        metavar="steps=N[,lr=..,batch=..,T=..,data=..]",
        help="add a distillation fine-tune (finetune stage, on defaults); needs a PyTorch model",
    )


# ---------------------------------------------------------------------- shared with `export`


def load_recipe(path: str):
    from studio.core.recipe import Recipe

    return Recipe.load(path)


_DISTILL_ALIASES = {"batch": "batch_size", "T": "temperature"}


def with_distill(recipe, spec: str | None):
    """`--distill steps=400,lr=1e-3,batch=64,T=4` -> the recipe plus a finetune step on defaults."""
    if not spec:
        return recipe
    from studio.core.errors import RecipeError
    from studio.core.recipe import Step

    params: dict = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--distill: expected key=value, got {item!r} (e.g. steps=400,lr=1e-3)")
        key = _DISTILL_ALIASES.get(key.strip(), key.strip())
        for cast in (int, float):
            try:
                params[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key] = value
    defaults = recipe.defaults.with_step("finetune", Step(technique="distill", params=params))
    return recipe.model_copy(update={"defaults": defaults})


def resolve_data_path(spec: str, recipe_path: str | None) -> str:
    """A recipe's data path is relative to the recipe file; fall back to the working directory."""
    p = Path(spec)
    if p.is_absolute() or recipe_path is None:
        return spec
    beside = Path(recipe_path).parent / p
    if beside.exists():
        return os.path.normpath(beside)
    return spec


def load_calibration(args, recipe, model_session=None) -> dict | None:
    """--calib, else the recipe's calibration.data; a seeded subset of n_samples."""
    from studio.core.evaluate import calibration_subset, check_dataset, load_dataset

    spec = getattr(args, "calib", None)
    if not spec and recipe.calibration.data:
        spec = resolve_data_path(recipe.calibration.data, getattr(args, "recipe", None))
    if not spec:
        return None
    args.calib_used = spec  # the export's reproduce command names it
    ds = calibration_subset(load_dataset(spec), recipe.calibration.n_samples, recipe.calibration.seed)
    if model_session is not None:
        check_dataset(ds, model_session)
    return ds.inputs


def load_eval_data(args, model_session):
    from studio.core.evaluate import check_dataset, load_dataset

    if not getattr(args, "data", None):
        return None
    ds = load_dataset(args.data)
    n = getattr(args, "n_samples", None)
    if n is not None:
        if n <= 0:
            raise DatasetError(f"--n-samples must be positive, got {n}")
        ds = ds.subset(range(min(n, len(ds))))
    check_dataset(ds, model_session)
    return ds


def prepare(args):
    """Open model, recipe and data, failing (exit 2) before any work or write."""
    from studio.core.evaluate import make_session
    from studio.core.graph import analyze
    from studio.core.pipeline import resolve_plan

    handle = open_model(args)
    recipe = with_distill(load_recipe(args.recipe), getattr(args, "distill", None))
    # Validate the whole recipe against the model first: unknown layer/technique, bad params.
    resolve_plan(analyze(handle.proto, with_stats=False), recipe)
    sess = make_session(handle.proto, threads=1)
    calib = load_calibration(args, recipe, sess)
    data = load_eval_data(args, sess)
    return handle, recipe, calib, data


def compress_variant(handle, recipe, calib, *, quiet: bool):
    from studio.core.pipeline import compress

    return run_with_progress(compress(handle, recipe, calibration=calib), label="compress", quiet=quiet)


# ---------------------------------------------------------------------- measuring


def measure(handle, out_path: Path, data, *, latency: bool = False) -> list[dict]:
    """Rows {name, original, compressed, ratio, kind, source, n_samples, unit} for the table."""
    from studio.core.evaluate import accuracy, fidelity, run_model
    from studio.core.export import files_on_disk_bytes, source_onnx_path

    rows: list[dict] = []
    src = source_onnx_path(handle)
    ob = files_on_disk_bytes(src) if src else None
    nb = files_on_disk_bytes(out_path)
    rows.append(
        _row("size_bytes", ob, nb, "measured", "file on disk", None, "B", ratio=(ob / nb) if ob else None)
    )
    if data is not None:
        ref = run_model(handle.proto, data)
        out = run_model(out_path, data)
        if data.labels is not None:
            a0 = accuracy(ref[0], data.labels, source=data.source)
            a1 = accuracy(out[0], data.labels, source=data.source)
            rows.append(
                _row(
                    "top1",
                    a0.value,
                    a1.value,
                    "measured",
                    data.source,
                    len(data),
                    "",
                    delta=a1.value - a0.value,
                )
            )
        for m in fidelity(ref, out, source=data.source):
            rows.append(_row(m.name, None, m.value, m.kind, m.source, m.n_samples, m.unit))
    if latency:
        rows.extend(_latency_rows(handle, out_path, data))
    return rows


def _latency_rows(handle, out_path: Path, data) -> list[dict]:
    """Interleaved A/B latency (studio.core.bench): one ORT thread, batch 1, same inputs."""
    from studio.core.bench import interleaved_ab

    inputs = data.subset(range(min(len(data), 8))) if data is not None else None
    m = interleaved_ab(handle.proto, out_path, threads=1, warmup=5, repeats=60, inputs=inputs)
    return [
        _row(
            "latency_p50_ms",
            m.extra.get("a_p50_ms"),
            m.extra.get("b_p50_ms"),
            m.kind,
            m.source,
            m.n_samples,
            "ms",
            change=f"{m.value:.2f}× time",
        )
    ]


def _row(name, original, compressed, kind, source, n, unit, ratio=None, delta=None, change=None) -> dict:
    return {
        "change": change,
        "name": name,
        "original": original,
        "compressed": compressed,
        "ratio": ratio,
        "delta": delta,
        "kind": kind,
        "source": source,
        "n_samples": n,
        "unit": unit,
    }


def _fmt(v, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "B":
        return f"{v / 1e3:,.1f} kB" if v < 1e6 else f"{v / 1e6:,.2f} MB"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in ("figure", "original", "compressed", "change", "kind", "samples", "source"):
        t.add_column(c, justify="right" if c in ("original", "compressed", "change", "samples") else "left")
    from studio.core.metrics import GLYPH

    for r in rows:
        if r.get("change"):
            change = r["change"]
        elif r["ratio"] is not None:
            change = f"{r['ratio']:.2f}× smaller" if r["unit"] == "B" else f"{r['ratio']:.2f}×"
        elif r["delta"] is not None:
            change = f"{r['delta'] * 100:+.2f} pt"
        else:
            change = ""
        t.add_row(
            r["name"],
            _fmt(r["original"], r["unit"])
            + (f" {r['unit']}" if r["unit"] not in ("", "B") and r["original"] is not None else ""),
            _fmt(r["compressed"], r["unit"]) + (f" {r['unit']}" if r["unit"] not in ("", "B") else ""),
            change,
            f"{GLYPH.get(r['kind'], '')} {r['kind']}",
            "—" if r["n_samples"] is None else str(r["n_samples"]),
            str(r["source"]),
        )
    Console(width=160).print(t)


def _json_safe(o):
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_safe(v) for v in o]
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return None
    return o


# ---------------------------------------------------------------------- command


def run(args) -> int:
    from studio.core.export import embed_recipe, refuse_source_target
    from studio.core.model import save_model

    t0 = time.time()
    out = Path(args.output)
    if out.is_dir():
        raise ExportError(
            f"{out} is a folder", hint="give a file name ending in .onnx (or use `studio export`)"
        )
    handle, recipe, calib, data = prepare(args)
    refuse_source_target(handle, out)
    variant = compress_variant(handle, recipe, calib, quiet=args.json)
    embed_recipe(variant.proto, recipe, source_sha256=handle.sha256)
    save_model(variant.proto, out)
    rows = measure(handle, out, data, latency=args.latency)
    result = {
        "output": str(out),
        "source": str(handle.source_path),
        "variant_id": variant.id,
        "recipe": str(args.recipe),
        "metrics": rows,
        "warnings": variant.warnings,
        "steps": variant.provenance.get("steps", []),
        "seconds": round(time.time() - t0, 3),
    }
    if args.json:
        print(json.dumps(_json_safe(result), indent=2))
        return 0
    for w in variant.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print_table(rows, f"{handle.name} → {out}  (variant {variant.id})")
    print("● measured · ○ estimated · ◐ fidelity = agreement with the original model's outputs")
    return 0
