"""Export a variant: ONNX + recipe + report + verification.json, written atomically.

Everything is produced in a staging folder beside the destination and renamed into place at the
end, so a cancelled or failed export leaves nothing behind. The source model is never a target.
Verification = full onnx.checker, an ORT session per chosen provider, op-kernel coverage per
provider, fidelity (and accuracy with labels) against the original, and sizes measured on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from studio import __version__
from studio.core.errors import DatasetError, ExportError
from studio.core.evaluate import Dataset, accuracy, calibration_subset, fidelity, make_session, run_model
from studio.core.jobs import JobContext
from studio.core.metrics import Metric
from studio.core.model import ModelHandle, save_model
from studio.core.recipe import Recipe

FORMATS = ("onnx", "recipe", "report")
MODEL_FILE = "model.onnx"
RECIPE_FILE = "recipe.yaml"
REPORT_FILE = "report.md"
VERIFICATION_FILE = "verification.json"
META_RECIPE = "pareto_studio.recipe"
META_RECIPE_SHA = "pareto_studio.recipe_sha256"
META_VERSION = "pareto_studio.version"
META_SOURCE_SHA = "pareto_studio.source_sha256"
SYNTHETIC_MAX_SAMPLES = 32
ZIP_MAX_BYTES = 256 << 20  # skip the zlib size estimate for huge files (time)


@dataclass
class ExportResult:
    """Where the exported files landed, plus the verification record written beside them."""

    out_dir: Path
    onnx_path: Path | None
    recipe_path: Path | None
    report_path: Path | None
    verification_path: Path
    verification: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.verification.get("ok"))


# ---------------------------------------------------------------------- small public helpers


def recipe_sha256(recipe: Recipe) -> str:
    """Stable hash of a recipe's content (canonical JSON, every field)."""
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()


def embed_recipe(proto: onnx.ModelProto, recipe: Recipe, *, source_sha256: str = "") -> None:
    """Store the recipe (YAML) and its hash in the model's metadata_props, replacing old entries."""
    entries = {
        META_RECIPE: recipe.dump("yaml"),
        META_RECIPE_SHA: recipe_sha256(recipe),
        META_VERSION: __version__,
    }
    if source_sha256:
        entries[META_SOURCE_SHA] = source_sha256
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in entries.items():
        proto.metadata_props.add(key=k, value=v)


def embedded_recipe(proto: onnx.ModelProto) -> Recipe | None:
    """The recipe a studio export embedded in the model, if any."""
    for p in proto.metadata_props:
        if p.key == META_RECIPE:
            return Recipe.loads(p.value, source="model metadata")
    return None


def files_on_disk_bytes(path: Path) -> int:
    """Size of an ONNX file plus the external-data files it points at."""
    try:
        from studio.core.bench import model_file_bytes

        return model_file_bytes(path)
    except ImportError:  # bench is optional here; save_model's convention is `<name>.data`
        pass
    n = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        n += data.stat().st_size
    return n


def source_onnx_path(original: ModelHandle) -> Path | None:
    """The file the original's size is measured on: the ONNX source, or the cached export of a .pt."""
    for p in (original.onnx_path, original.source_path):
        if p is not None and Path(p).exists() and Path(p).suffix.lower() == ".onnx":
            return Path(p)
    return original.source_path if original.source_path and Path(original.source_path).exists() else None


def refuse_source_target(original: ModelHandle, target: Path) -> None:
    """ExportError when writing `target` would overwrite the model the user opened."""
    t = Path(target).resolve()
    for src in (original.source_path, original.onnx_path):
        if src is None:
            continue
        s = Path(src).resolve()
        if t == s or t == s.with_name(s.name + ".data"):
            raise ExportError(
                f"refusing to write {target}: it is the source model", hint="choose another output path"
            )


# ---------------------------------------------------------------------- verification pieces


def _check(path: Path) -> dict:
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return {"ok": True, "error": None, "full_check": True}
    except Exception as e:  # noqa: BLE001 - recorded, turned into ExportError by the caller
        return {
            "ok": False,
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:400]}",
            "full_check": True,
        }


def op_types(proto: onnx.ModelProto) -> dict[str, dict]:
    """`domain::Op` -> {domain, op_type, since_version, count} over the main graph."""
    opset = {o.domain or "": o.version for o in proto.opset_import}
    out: dict[str, dict] = {}
    for n in proto.graph.node:
        dom = "" if n.domain in ("", "ai.onnx") else n.domain
        key = f"{dom}::{n.op_type}" if dom else n.op_type
        if key not in out:
            ver = opset.get(dom, opset.get("", 0))
            try:
                since = onnx.defs.get_schema(n.op_type, ver, dom).since_version
            except Exception:  # noqa: BLE001 - contrib ops have no ONNX schema
                since = ver
            out[key] = {"domain": dom, "op_type": n.op_type, "since_version": since, "count": 0}
        out[key]["count"] += 1
    return out


def _kernel_table() -> dict[str, list[tuple[str, str, int, int]]] | None:
    """provider -> [(domain, op, start, end)] from ORT's kernel registry, when it exposes one."""
    try:
        from onnxruntime.capi import _pybind_state as C

        defs = C.get_all_opkernel_def()
    except Exception:  # noqa: BLE001 - private API; fall back to session load + profiling
        return None
    table: dict[str, list] = {}
    for k in defs:
        dom = "" if k.domain in ("", "ai.onnx") else k.domain
        lo, hi = k.version_range
        table.setdefault(k.provider, []).append((dom, k.op_name, lo, hi))
    return table


def _missing_kernels(ops: dict[str, dict], kernels: list[tuple[str, str, int, int]]) -> list[str]:
    have: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for dom, op, lo, hi in kernels:
        have.setdefault((dom, op), []).append((lo, hi))
    missing = []
    for key, o in ops.items():
        ranges = have.get((o["domain"], o["op_type"]), [])
        if not any(lo <= o["since_version"] <= hi for lo, hi in ranges):
            missing.append(key)
    return missing


def _profile_placement(sess_path: Path, provider: str, feed: dict, tmp: Path) -> dict[str, list[str]]:
    """op_type -> providers its nodes ran on, from one profiled run (optimisations off, so nodes
    keep their types)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / "placement")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(sess_path), so, providers=[provider, "CPUExecutionProvider"])
    sess.run(None, feed)
    prof = sess.end_profiling()
    placed: dict[str, set[str]] = {}
    with open(prof) as f:
        events = json.load(f)
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") == "Node" and "op_name" in args and "provider" in args:
            placed.setdefault(args["op_name"], set()).add(args["provider"])
    os.unlink(prof)
    return {k: sorted(v) for k, v in placed.items()}


def verify_providers(
    path: Path, proto: onnx.ModelProto, providers: list[str], feed: dict | None, tmp: Path
) -> tuple[dict, dict]:
    """Per provider: session load (ok/error), ops without a kernel, node placement when profiled."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    kernels = _kernel_table()
    ops = op_types(proto)
    results: dict[str, dict] = {}
    for prov in providers:
        r: dict = {"ok": False, "error": None, "unsupported_ops": [], "method": []}
        if prov not in available:
            r["error"] = f"{prov} is not available in this onnxruntime build ({sorted(available)})"
            results[prov] = r
            continue
        if kernels is not None and prov in kernels:
            r["unsupported_ops"] = _missing_kernels(ops, kernels[prov])
            r["method"].append("onnxruntime kernel registry")
        try:
            sess = make_session(path, threads=1, providers=[prov])
            used = sess.get_providers()
            if prov not in used:
                raise RuntimeError(f"session fell back to {used}")
            r["ok"] = True
            r["method"].append("session load")
        except Exception as e:  # noqa: BLE001 - a verification outcome, not a crash
            r["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:400]}"
        # CPU has no fallback, so a loaded CPU session proves every node found a kernel; other
        # providers silently hand nodes to CPU: profile where each op actually ran.
        if r["ok"] and prov != "CPUExecutionProvider" and feed is not None:
            try:
                placed = _profile_placement(path, prov, feed, tmp)
                r["placement"] = placed
                r["method"].append("profiled node placement")
                for op, on in placed.items():
                    key = next((k for k, o in ops.items() if o["op_type"] == op), op)
                    if prov not in on and key not in r["unsupported_ops"]:
                        r["unsupported_ops"].append(key)
            except Exception as e:  # noqa: BLE001
                r["placement_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        r["unsupported_ops"] = sorted(r["unsupported_ops"])
        if r["ok"] and r["unsupported_ops"] and prov == "CPUExecutionProvider":
            # The registry lacks an exact type match but the session loaded: trust the session.
            r["registry_mismatch"] = r.pop("unsupported_ops")
            r["unsupported_ops"] = []
        results[prov] = r
    return results, ops


def synthetic_inputs(proto: onnx.ModelProto, n: int, seed: int = 0) -> Dataset:
    """Random inputs shaped after the model (symbolic dims: batch=n, others=8); labelled synthetic."""
    sess = make_session(proto, threads=1)
    rng = np.random.default_rng(seed)
    from studio.core.evaluate import model_input_specs

    inputs = {}
    for name, (shape, dt) in model_input_specs(sess).items():
        dims = [n] + [d if isinstance(d, int) and d > 0 else 8 for d in shape[1:]]
        if np.dtype(dt).kind == "f":
            inputs[name] = rng.standard_normal(dims).astype(dt)
        elif np.dtype(dt).kind == "b":
            inputs[name] = np.ones(dims, dtype=dt)
        else:
            # Small non-negative ints stay inside every vocab / type table (ids, masks, segments).
            inputs[name] = rng.integers(0, 2, size=dims).astype(dt)
    return Dataset(inputs, None, f"synthetic ({n} random inputs, seed {seed})", {"synthetic": True})


def measure_fidelity(
    original: onnx.ModelProto,
    variant_path: Path,
    data: Dataset | None,
    n_samples: int,
    ctx: JobContext,
) -> tuple[list[Metric], Dataset]:
    """Fidelity (cosine/SQNR/top-1 agreement) vs the original and accuracy if the data has labels."""
    if data is None:
        ds = synthetic_inputs(original, min(n_samples, SYNTHETIC_MAX_SAMPLES))
    else:
        ds = calibration_subset(data, n_samples, seed=0)
    ref = run_model(original, ds, ctx=ctx.sub(0.0, 0.5))
    out = run_model(variant_path, ds, ctx=ctx.sub(0.5, 1.0))
    ms = fidelity(ref, out, source=ds.source)
    if ds.labels is not None:
        a0 = accuracy(ref[0], ds.labels, source=ds.source)
        a1 = accuracy(out[0], ds.labels, source=ds.source)
        ms.append(Metric("original_top1", a0.value, "measured", ds.source, n_samples=len(ds)))
        ms.append(a1)
    return ms, ds


# ---------------------------------------------------------------------- export


def export_variant(
    variant,
    original: ModelHandle,
    out_dir: str | os.PathLike,
    *,
    data: Dataset | None = None,
    providers: list[str] | None = None,
    n_samples: int = 256,
    formats=FORMATS,
    ctx: JobContext | None = None,
    reproduce: str | None = None,
) -> ExportResult:
    """Write `out_dir/{model.onnx, recipe.yaml, report.md, verification.json}` atomically.

    Raises ExportError when the target is the source model or when onnx.checker rejects the
    variant (nothing is written then); provider problems are recorded in verification.json and
    `ExportResult.ok` is False. Cancel (JobCancelled) also leaves nothing behind.
    """
    ctx = ctx or JobContext()
    out_dir = Path(out_dir)
    providers = list(providers or ["CPUExecutionProvider"])
    formats = tuple(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown export format(s) {sorted(unknown)}", hint=f"choose from {FORMATS}")
    refuse_source_target(original, out_dir)
    for name in (MODEL_FILE, RECIPE_FILE, REPORT_FILE, VERIFICATION_FILE):
        refuse_source_target(original, out_dir / name)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder", hint="export writes a folder of files")
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=parent))
    try:
        verification = _export_into(
            stage, variant, original, data, providers, n_samples, formats, ctx, reproduce
        )
        ctx.report(0.98, "moving files into place")
        _apply_umask(stage)
        written = _move_into_place(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    ctx.report(1.0, "exported")
    return ExportResult(
        out_dir=out_dir,
        onnx_path=written.get(MODEL_FILE),
        recipe_path=written.get(RECIPE_FILE),
        report_path=written.get(REPORT_FILE),
        verification_path=written[VERIFICATION_FILE],
        verification=verification,
    )


def _export_into(stage, variant, original, data, providers, n_samples, formats, ctx, reproduce) -> dict:
    t0 = time.time()
    proto = onnx.ModelProto()
    proto.CopyFrom(variant.proto)
    embed_recipe(proto, variant.recipe, source_sha256=original.sha256)
    model_path = stage / MODEL_FILE
    ctx.report(0.02, "writing model")
    save_model(proto, model_path)
    ctx.report(0.1, "onnx.checker (full)")
    checker = _check(model_path)
    if not checker["ok"]:
        raise ExportError(f"the variant fails onnx.checker: {checker['error']}")
    ctx.check()
    ctx.report(0.2, "measuring fidelity")
    if data is not None and len(data) == 0:
        raise DatasetError(f"{data.source}: holds no samples")
    metrics, ds = measure_fidelity(original.proto, model_path, data, n_samples, ctx.sub(0.2, 0.7))
    ctx.report(0.7, "loading on providers")
    feed = {k: v[:1] for k, v in ds.inputs.items()}
    tmp = stage / ".profile"
    tmp.mkdir()
    prov_results, ops = verify_providers(model_path, proto, providers, feed, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    ctx.check()
    src = source_onnx_path(original)
    orig_bytes = files_on_disk_bytes(src) if src is not None else None
    var_bytes = files_on_disk_bytes(model_path)
    sizes = {
        "original_bytes": orig_bytes,
        "original_file": str(src) if src else None,
        "variant_bytes": var_bytes,
        "ratio": (orig_bytes / var_bytes) if orig_bytes else None,
        "kind": "measured",
        "source": "file on disk",
    }
    if var_bytes <= ZIP_MAX_BYTES and (orig_bytes or 0) <= ZIP_MAX_BYTES:
        vz = len(zlib.compress(model_path.read_bytes(), 6))
        sizes["variant_zipped_bytes"] = vz
        if src is not None:
            sizes["original_zipped_bytes"] = len(zlib.compress(Path(src).read_bytes(), 6))
    flagged = sorted({op for r in prov_results.values() for op in r["unsupported_ops"]})
    by_name = {m.name: m for m in metrics}
    fid = {
        "data": ds.source,
        "synthetic": bool(ds.meta.get("synthetic")),
        "n_samples": len(ds),
        "metrics": [m.to_dict() for m in metrics],
    }
    for k in ("cosine_mean", "cosine_min", "sqnr_db", "top1_agreement", "top1", "original_top1"):
        if k in by_name:
            v = by_name[k].value
            fid[k] = None if not np.isfinite(v) else v
    if not np.isfinite(by_name["sqnr_db"].value):
        fid["sqnr_db_note"] = "outputs identical (infinite SQNR)"
    verification = {
        "ok": checker["ok"] and all(r["ok"] and not r["unsupported_ops"] for r in prov_results.values()),
        "studio_version": __version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": _ort_version(),
        "created": time.time(),
        "recipe_sha256": recipe_sha256(variant.recipe),
        "source_sha256": original.sha256,
        "variant_id": variant.provenance.get("id") if isinstance(variant.provenance, dict) else None,
        "provenance": variant.provenance,
        "checker": checker,
        "providers": prov_results,
        "ops": ops,
        "flagged_ops": flagged,
        "fidelity": fid,
        "sizes": sizes,
        "warnings": list(getattr(variant, "warnings", [])),
    }
    ctx.report(0.85, "writing recipe and report")
    if "recipe" in formats:
        (stage / RECIPE_FILE).write_text(variant.recipe.dump("yaml"))
    if "report" in formats:
        from studio.core.report_md import render_markdown

        size_metrics = [Metric("size_bytes", float(var_bytes), "measured", "file on disk", unit="B")]
        text = render_markdown(
            variant,
            original,
            metrics=size_metrics + metrics,
            verification=verification,
            reproduce=reproduce,
        )
        (stage / REPORT_FILE).write_text(text)
    if "onnx" not in formats:
        os.unlink(model_path)
        data_file = model_path.with_name(MODEL_FILE + ".data")
        if data_file.exists():
            os.unlink(data_file)
    verification["seconds"] = round(time.time() - t0, 3)
    verification = _finite(verification)
    (stage / VERIFICATION_FILE).write_text(json.dumps(verification, indent=2, default=_json_default))
    return verification


def _move_into_place(stage: Path, out_dir: Path) -> dict[str, Path]:
    """Rename the staging folder to out_dir, or (existing folder) each file into it."""
    names = sorted(p.name for p in stage.iterdir())
    if not out_dir.exists():
        os.replace(stage, out_dir)
    else:
        # Data files first, the model last: a reader never sees a model without its data.
        order = sorted(names, key=lambda n: (n == MODEL_FILE, n))
        for n in order:
            os.replace(stage / n, out_dir / n)
        stage.rmdir()
    return {n: out_dir / n for n in names}


def _apply_umask(stage: Path) -> None:
    # mkdtemp/mkstemp create owner-only entries; exported files get the user's usual permissions.
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(stage, 0o777 & ~mask)
    for p in stage.iterdir():
        os.chmod(p, 0o666 & ~mask)


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except Exception:  # noqa: BLE001
        return "unavailable"


def _finite(o):
    """JSON has no inf/nan: write them as null (strict parsers reject `Infinity`)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return None
    return o


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


__all__ = [
    "ExportResult",
    "embed_recipe",
    "embedded_recipe",
    "export_variant",
    "files_on_disk_bytes",
    "recipe_sha256",
    "refuse_source_target",
    "verify_providers",
]
