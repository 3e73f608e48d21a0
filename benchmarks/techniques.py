"""Each technique alone and the mixed recipes vs ONNX Runtime's quantize_dynamic defaults (and
NNCF's quantize defaults when nncf is importable), on the digits CNN and (when the nlp extra is
installed) MiniLM-L6.

Per configuration: file size on disk (measured) and zipped, latency relative to the fp32 model
(measured in the same run, interleaved A/B, 1 thread, batch 1), accuracy on the 360 held-out
digits (measured) or cosine fidelity to the fp32 MiniLM outputs.

    .venv/bin/python benchmarks/techniques.py [--skip-minilm] [--quick]

Prints a table and writes benchmarks/results/techniques.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from studio import __version__  # noqa: E402
from studio.core.bench import interleaved_ab, size_on_disk  # noqa: E402
from studio.core.evaluate import calibration_subset, evaluate, load_npz  # noqa: E402
from studio.core.jobs import drive  # noqa: E402
from studio.core.model import load_model, save_model  # noqa: E402
from studio.core.pipeline import compress  # noqa: E402
from studio.core.recipe import Recipe  # noqa: E402

ASSETS = ROOT / "assets"
EXAMPLES = ROOT / "examples"
RESULTS = ROOT / "benchmarks" / "results" / "techniques.json"

DIGITS_CONFIGS: dict[str, dict | Path] = {
    "int8_dynamic": {"defaults": {"quantize": "int8_dynamic"}},
    "int8_static": {"defaults": {"quantize": "int8_static"}},
    "int4_weight": {"defaults": {"quantize": "int4_weight"}},
    "fp16": {"defaults": {"quantize": "fp16"}},
    "magnitude 50%": {"defaults": {"prune": {"magnitude": {"ratio": 0.5}}}},
    "channels 50% (conv2, conv3, fc1)": {
        "layers": {
            n: {"prune": {"channels": {"ratio": 0.5}}}
            for n in ("/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv", "/fc1/Gemm")
        }
    },
    "svd rank 25% (fc1)": {"layers": {"/fc1/Gemm": {"decompose": {"svd": {"rank_ratio": 0.25}}}}},
    "tucker rank 50% (conv2, conv3)": {
        "layers": {
            n: {"decompose": {"tucker": {"rank_ratio": 0.5}}}
            for n in ("/conv2/conv2.0/Conv", "/conv3/conv3.0/Conv")
        }
    },
    "kmeans 4 bit": {"defaults": {"encode": {"kmeans": {"bits": 4}}}},
    "mixed (examples/digits_mixed.yaml)": EXAMPLES / "digits_mixed.yaml",
}

ENC = "/encoder/layer.*"
MINILM_CONFIGS: dict[str, dict | Path] = {
    "int8_dynamic": {"defaults": {"quantize": "int8_dynamic"}},
    "int4_weight": {"defaults": {"quantize": "int4_weight"}},
    "fp16": {"defaults": {"quantize": "fp16"}},
    "svd rank 50% (FFN)": {
        "layers": {
            f"{ENC}/intermediate/dense/MatMul": {"decompose": {"svd": {"rank_ratio": 0.5}}},
            "/encoder/layer.?/output/dense/MatMul": {"decompose": {"svd": {"rank_ratio": 0.5}}},
        }
    },
    "kmeans 8 bit (word embeddings)": {
        "layers": {"/embeddings/word_embeddings/Gather": {"encode": {"kmeans": {"bits": 8}}}}
    },
    "mixed (examples/minilm_mixed.yaml)": EXAMPLES / "minilm_mixed.yaml",
}


def _recipe(cfg) -> Recipe:
    return Recipe.load(cfg) if isinstance(cfg, Path) else Recipe.from_dict(cfg)


def _sizes(path: Path) -> dict:
    ms = {m.name: m for m in size_on_disk(path)}
    return {"size_bytes": int(ms["size_bytes"].value), "zipped_bytes": int(ms["zipped_bytes"].value)}


def _latency(ref: Path, path: Path, inputs, repeats: int) -> dict:
    m = interleaved_ab(ref, path, threads=1, warmup=5, repeats=repeats, batch_size=1, inputs=inputs)
    return {
        "latency_ratio": m.value,
        "latency_p50_ms": m.extra["b_p50_ms"],
        "fp32_p50_ms": m.extra["a_p50_ms"],
        "latency_source": m.source,
        "latency_pairs": m.n_samples,
    }


def _quality(path: Path, ref_proto, ds, task: str) -> dict:
    ms = {m.name: m for m in evaluate(path, ds, reference=ref_proto)}
    if task == "accuracy":
        return {"top1": ms["top1"].value, "top1_agreement": ms["top1_agreement"].value, "n_samples": len(ds)}
    return {"cosine_mean": ms["cosine_mean"].value, "sqnr_db": ms["sqnr_db"].value, "n_samples": len(ds)}


def _ort_quantize_dynamic(src: Path, out: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(out))  # library defaults, nothing tuned


def _nncf_quantize(src: Path, out: Path, calib: dict) -> None:
    import nncf
    import onnx

    model = onnx.load(str(src))
    n = len(next(iter(calib.values())))
    items = [{k: v[i : i + 1] for k, v in calib.items()} for i in range(n)]
    q = nncf.quantize(model, nncf.Dataset(items))  # defaults
    onnx.save(q, str(out))


def run_model_suite(
    name: str,
    src: Path,
    configs: dict,
    eval_ds,
    calib: dict | None,
    task: str,
    repeats: int,
    work: Path,
    log,
) -> list[dict]:
    handle = load_model(src)
    lat_inputs = eval_ds.subset(range(min(8, len(eval_ds))))
    rows = []

    def measure(label: str, kind: str, path: Path, seconds: float, extra: dict | None = None):
        row = {"model": name, "config": label, "kind": kind, "seconds_to_make": round(seconds, 2)}
        row.update(_sizes(path))
        row["size_ratio"] = rows[0]["size_bytes"] / row["size_bytes"] if rows else 1.0
        row.update(_quality(path, handle.proto, eval_ds, task))
        row.update(_latency(src, path, lat_inputs, repeats))
        row.update(extra or {})
        rows.append(row)
        log(row)

    measure("fp32 (original)", "reference", src, 0.0)
    for label, cfg in configs.items():
        out = work / f"{name}-{len(rows)}.onnx"
        t0 = time.time()
        try:
            recipe = _recipe(cfg)
            variant = drive(compress(handle, recipe, calibration=calib))
            save_model(variant.proto, out)
            measure(label, "studio", out, time.time() - t0, {"recipe": recipe.summary()})
        except Exception as e:  # noqa: BLE001 - a failing technique is a result, not a crash
            rows.append(
                {"model": name, "config": label, "kind": "studio", "error": f"{type(e).__name__}: {e}"}
            )
            log(rows[-1])
            traceback.print_exc(limit=2, file=sys.stderr)
        finally:
            out.unlink(missing_ok=True)
    out = work / f"{name}-ort.onnx"
    t0 = time.time()
    try:
        _ort_quantize_dynamic(src, out)
        measure("ORT quantize_dynamic (defaults)", "baseline", out, time.time() - t0)
    except Exception as e:  # noqa: BLE001
        rows.append(
            {"model": name, "config": "ORT quantize_dynamic (defaults)", "kind": "baseline", "error": str(e)}
        )
    out.unlink(missing_ok=True)
    label = "NNCF quantize (defaults)"
    if importlib.util.find_spec("nncf") is None:
        rows.append({"model": name, "config": label, "kind": "baseline", "skipped": "nncf is not installed"})
        log(rows[-1])
    else:
        out = work / f"{name}-nncf.onnx"
        t0 = time.time()
        try:
            _nncf_quantize(src, out, calib if calib is not None else calibration_subset(eval_ds, 64).inputs)
            measure(label, "baseline", out, time.time() - t0)
        except Exception as e:  # noqa: BLE001
            rows.append({"model": name, "config": label, "kind": "baseline", "error": str(e)})
        out.unlink(missing_ok=True)
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Techniques vs baselines (● measured · ◐ fidelity)", title_justify="left")
    for c in ("model", "config", "size", "× smaller", "zipped", "quality", "latency × fp32"):
        t.add_column(c, justify="left" if c in ("model", "config") else "right")
    for r in rows:
        if "error" in r or "skipped" in r:
            t.add_row(
                r["model"], r["config"], "—", "—", "—", r.get("skipped") or f"error: {r['error'][:60]}", "—"
            )
            continue
        if "top1" in r:
            q = f"● top-1 {r['top1']:.4f} ({r['n_samples']})"
        else:
            q = f"◐ cos {r['cosine_mean']:.4f} ({r['n_samples']})"
        t.add_row(
            r["model"],
            r["config"],
            f"{r['size_bytes'] / 1e6:.3f} MB",
            f"{r['size_ratio']:.2f}",
            f"{r['zipped_bytes'] / 1e6:.3f} MB",
            q,
            f"● {r['latency_ratio']:.2f}",
        )
    Console(width=150).print(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer latency pairs and MiniLM samples")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    t0 = time.time()

    def log(row):
        what = row.get("error") or row.get("skipped") or f"{row.get('size_ratio', 0):.2f}x"
        print(f"  {row['model']:7s} {row['config']:40s} {what}", file=sys.stderr, flush=True)

    rows: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
        work = Path(tmp)
        digits_eval = load_npz(ASSETS / "digits_eval.npz")
        digits_calib = load_npz(ASSETS / "digits_calib.npz").inputs
        rows += run_model_suite(
            "digits", ASSETS / "digits_cnn.onnx", DIGITS_CONFIGS, digits_eval, digits_calib,
            "accuracy", 100 if args.quick else 300, work, log,
        )  # fmt: skip
        have_nlp = importlib.util.find_spec("transformers") is not None
        if args.skip_minilm:
            notes.append("MiniLM skipped (--skip-minilm)")
        elif not have_nlp:
            notes.append("MiniLM skipped: transformers (nlp extra) not installed")
        else:
            from studio.demos.minilm import build_minilm

            onnx_path, npz = build_minilm()
            text = load_npz(npz)
            n = 32 if args.quick else 64
            ds = text.subset(range(min(n, len(text))))
            calib = text.subset(range(len(text) - 32, len(text))).inputs  # disjoint from ds
            rows += run_model_suite(
                "minilm", Path(onnx_path), MINILM_CONFIGS, ds, calib, "fidelity",
                20 if args.quick else 40, work, log,
            )  # fmt: skip
    print_table(rows)
    for n in notes:
        print(n)
    import onnxruntime

    result = {
        "studio_version": __version__,
        "onnxruntime_version": onnxruntime.__version__,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "how": {
            "size": "measured: file on disk (+ zlib -6)",
            "latency": "measured: interleaved A/B vs fp32 in the same run, ORT CPU, 1 thread, batch 1; ratio < 1 = faster",
            "digits quality": "measured: top-1 accuracy on assets/digits_eval.npz (360 held-out)",
            "minilm quality": "fidelity: per-token cosine to the fp32 model's last_hidden_state",
        },
        "notes": notes,
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(
        f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} ({result['seconds']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
