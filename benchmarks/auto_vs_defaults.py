"""Auto-compress front vs one-click defaults, on the digits CNN and MiniLM.

For each model: the measured Pareto front of `studio.core.search.auto_compress` printed beside
ONNX Runtime's `quantize_dynamic` defaults, NNCF's int8 defaults (when `nncf` is importable) and
uniform channel pruning at the same ratio on every prunable layer; which front points dominate
each baseline (no larger, no lossier, one strictly better); and the sensitivity sweep's cost
against the naive sweep. Digits also runs a real naive sweep on a sample of pairs to give a
measured wall-clock multiple (MiniLM on fewer pairs). Writes benchmarks/results/auto_vs_defaults.json.

    .venv/bin/python benchmarks/auto_vs_defaults.py [--skip-minilm] [--max-evals N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from studio.core.evaluate import Dataset, load_npz, make_session
from studio.core.jobs import drive
from studio.core.model import load_model
from studio.core.onnx_utils import model_nbytes
from studio.core.pipeline import compress
from studio.core.recipe import Recipe
from studio.core.search import auto_compress, ort_int8_defaults, parse_target
from studio.core.sensitivity import cosine_mean, metric_drop, parse_settings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "auto_vs_defaults.json"


def measure(proto, handle, calib: Dataset, held: Dataset, metric: str, lat_batch: int | None) -> dict:
    """Same measurements the search takes, for a baseline model."""
    ref_c = make_session(handle.proto).run(None, calib.inputs)[0]
    s = make_session(proto)
    out_c = s.run(None, calib.inputs)[0]
    mask_c = calib.inputs.get("attention_mask")
    row = {
        "size_bytes": model_nbytes(proto),
        "calib_drop": metric_drop(metric, ref_c, out_c, calib.labels, mask_c),
    }
    ref_h = make_session(handle.proto).run(None, held.inputs)[0]
    out_h = s.run(None, held.inputs)[0]
    row["heldout_cosine"] = cosine_mean(ref_h, out_h, held.inputs.get("attention_mask"))
    if held.labels is not None:
        a0 = float((ref_h.argmax(1) == held.labels).mean())
        row["heldout_drop"] = a0 - float((out_h.argmax(1) == held.labels).mean())
    if lat_batch:
        from studio.core.bench import interleaved_ab

        idx = np.arange(min(len(calib), lat_batch))
        ds = Dataset({k: v[idx] for k, v in calib.inputs.items()}, source=calib.source)
        m = interleaved_ab(handle.proto, proto, batch_size=lat_batch, threads=1, repeats=20, inputs=ds)
        row["latency_ratio"] = m.value
    return row


def nncf_int8(handle, calib: Dataset):
    try:
        import nncf  # noqa: F401
    except ImportError:
        return None, "nncf not importable"
    try:
        import nncf as n

        ds = n.Dataset([{k: v[i : i + 1] for k, v in calib.inputs.items()} for i in range(len(calib))])
        return n.quantize(handle.proto, ds, subset_size=len(calib)), ""
    except Exception as e:  # noqa: BLE001 - a baseline that fails is reported, not fatal
        return None, f"nncf failed: {type(e).__name__}: {e}"[:200]


def uniform_channels(handle, calib, ratio: float):
    """Channel pruning at one ratio on every layer the plugin accepts (others skipped)."""
    from studio.core.graph import analyze
    from studio.plugin_api.registry import default_registry

    tech = default_registry().get("channels")
    names = [la.name for la in analyze(handle.proto, with_stats=False).layers if tech.applies_to(la)]
    kept = []
    for name in names:  # keep only the layers whose pruning the plugin actually performs
        try:
            drive(compress(handle, Recipe(layers={name: {"prune": {"channels": {"ratio": ratio}}}}),
                           calibration=calib.inputs, check=False))  # fmt: skip
            kept.append(name)
        except Exception:  # noqa: BLE001,S112 - refused layer (e.g. attention heads): not uniform-prunable
            continue
    if not kept:
        return None, []
    r = Recipe(layers={n: {"prune": {"channels": {"ratio": ratio}}} for n in kept})
    return drive(compress(handle, r, calibration=calib.inputs)).proto, kept


def dominated_by(front: list[dict], base: dict, axis: str) -> list[int]:
    out = []
    for p in front:
        if axis not in p or axis not in base:
            continue
        if (
            p[axis] <= base[axis]
            and p["calib_drop"] <= base["calib_drop"]
            and (p[axis] < base[axis] or p["calib_drop"] < base["calib_drop"])
        ):
            out.append(p["id"])
    return out


def run_model(name, handle, calib, held, targets, settings, max_evals, lat_batch, naive_pairs=0) -> dict:
    print(f"\n=== {name}: targets {[t.text for t in targets]} ===", flush=True)
    t0 = time.perf_counter()
    r = drive(auto_compress(handle, calib, targets, max_drop=0.01, heldout=held, settings=parse_settings(settings),
                            max_evals=max_evals))  # fmt: skip
    search_s = time.perf_counter() - t0
    metric = r.baseline["metric"]
    axis = "size_bytes"
    front = []
    for c in r.front_candidates():
        p = {"id": c.id, "origin": c.origin, "size_bytes": c.value("size_bytes"), "calib_drop": c.loss,
             "heldout_cosine": c.value("heldout_cosine"), "heldout_drop": c.value("heldout_drop"),
             "latency_ratio": c.value("latency_ratio"), "recipe": c.recipe.summary()}  # fmt: skip
        front.append(p)
    baselines = {}
    baselines["ort_int8_defaults"] = measure(
        ort_int8_defaults(handle.proto), handle, calib, held, metric, lat_batch
    )
    proto, why = nncf_int8(handle, calib)
    baselines["nncf_int8_defaults"] = (
        measure(proto, handle, calib, held, metric, lat_batch) if proto else {"skipped": why}
    )
    best = r.best
    ratio = None
    if best is not None:
        ratios = [float(dict(s.params).get("ratio", 0)) for s in _struct_settings(best)]
        ratio = max(ratios) if ratios else 0.5
    up, kept = uniform_channels(handle, calib, ratio or 0.5)
    baselines[f"uniform_channels_{ratio or 0.5:g}"] = (
        {**measure(up, handle, calib, held, metric, lat_batch), "layers": len(kept)} if up is not None else {"skipped": "no prunable layer"}
    )  # fmt: skip
    for b in baselines.values():
        if "skipped" not in b:
            b["dominated_by_front_points"] = dominated_by(front, b, axis)
    cost = r.table.cost
    res = {"model": name, "targets": [t.text for t in targets], "reached": r.reached, "message": r.message,
           "best": None if best is None else best.id, "baseline": r.baseline, "front": front,
           "baselines": baselines, "sweep_cost": cost, "search_seconds": round(search_s, 1),
           "candidates": [c.to_dict() for c in r.candidates]}  # fmt: skip
    if naive_pairs:
        res["naive_wall"] = naive_sample(handle, calib, r.table, naive_pairs, metric)
    _print(res, r.baseline["size_bytes"])
    return res


def _struct_settings(c):
    from studio.core.sensitivity import Setting  # noqa: F401

    return [
        o.struct
        for o in c.options.values()
        if o is not None and o.struct is not None and o.struct.technique == "channels"
    ]


def naive_sample(handle, calib, table, k: int, metric: str) -> dict:
    """Time k naive pairs (compress the full model with one layer change + evaluate it fully) and
    extrapolate to every pair of the sweep: a measured wall-clock baseline for its cost."""
    ref = make_session(handle.proto).run(None, calib.inputs)[0]
    every = [(la, key) for la in table.layers for key in table.drops.get(la, {})]
    # Evenly spread over the table (the first pairs would all be one layer's, e.g. embeddings).
    pairs = [every[int(i)] for i in np.unique(np.linspace(0, len(every) - 1, min(k, len(every))).astype(int))]
    settings = {s.key: s for s in table.setting_objects()}
    t0 = time.perf_counter()
    for la, key in pairs:
        v = drive(
            compress(handle, Recipe(layers={la: settings[key].plan()}), calibration=calib.inputs, check=False)
        )
        out = make_session(v.proto).run(None, calib.inputs)[0]
        metric_drop(metric, ref, out, calib.labels, calib.inputs.get("attention_mask"))
    per = (time.perf_counter() - t0) / max(len(pairs), 1)
    total = per * table.cost["pairs"]
    return {"pairs_timed": len(pairs), "seconds_per_pair": round(per, 3), "naive_wall_s_extrapolated": round(total, 1),
            "sweep_wall_s": table.cost["wall_s"], "wall_multiple": round(table.cost["wall_s"] / total, 3) if total else None}  # fmt: skip


def _print(res: dict, size0: int) -> None:
    print(f"{res['message']}  (search {res['search_seconds']} s)")
    print(f"{'point':<34}{'size':>12}{'×smaller':>10}{'calib drop pt':>15}{'held-out':>22}{'latency ×':>11}")

    def line(label, p):  # noqa: E306
        held = ""
        if p.get("heldout_drop") is not None:
            held = f"acc {-p['heldout_drop'] * 100 + 0.0:+.2f} pt"
        elif p.get("heldout_cosine") is not None:
            held = f"cos {p['heldout_cosine']:.4f}"
        lat = "" if p.get("latency_ratio") is None else f"{p['latency_ratio']:.2f}"
        print(
            f"{label:<34}{p['size_bytes'] / 1e3:>10,.1f}kB{size0 / p['size_bytes']:>10.2f}{p['calib_drop'] * 100:>15.2f}{held:>22}{lat:>11}"
        )

    for p in res["front"]:
        line(f"front #{p['id']}" + (" (best)" if p["id"] == res["best"] else ""), p)
    for k, b in res["baselines"].items():
        if "skipped" in b:
            print(f"{k:<34}skipped: {b['skipped']}")
            continue
        line(k, b)
        d = b["dominated_by_front_points"]
        print(f"{'':<34}dominated by front point(s): {d if d else 'none'}")
    c = res["sweep_cost"]
    print(f"sweep cost: {c['multiple']:.2f}× naive (MAC-weighted forwards; {c['pairs']} pairs, {c['measured']} measured, "
          f"{c['inferred']} inferred, {c['skipped_early']} skipped, {c['quick_exits']} quick exits, "
          f"{c.get('weight_fed', 0)} weight-fed), {c['wall_s']} s wall")  # fmt: skip
    if "naive_wall" in res:
        n = res["naive_wall"]
        print(f"naive sweep (measured on {n['pairs_timed']} pairs, extrapolated): {n['naive_wall_s_extrapolated']} s "
              f"→ wall multiple {n['wall_multiple']}")  # fmt: skip
    print("size = serialized ONNX bytes; calib drop on the calibration data (search decisions); held-out measured "
          "separately; latency × = interleaved A/B vs fp32, 1 thread (measured)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--max-evals", type=int, default=10)
    args = ap.parse_args()
    results = []
    # Warm the heavy imports (scikit-learn k-means, ORT quantization) first: the naive sample runs
    # after the search in this process, so the sweep must not be the one paying them.
    import onnxruntime.quantization  # noqa: F401
    import sklearn.cluster  # noqa: F401

    h = load_model(ROOT / "assets" / "digits_cnn.onnx")
    calib = load_npz(ROOT / "assets" / "digits_calib.npz")
    held = load_npz(ROOT / "assets" / "digits_eval.npz")
    results.append(run_model("digits_cnn", h, calib, held, [parse_target("size=10x")],
                             "channels:0.25,0.5,0.75 svd:0.5,0.25,0.125 int8 kmeans:8,4", args.max_evals, None,
                             naive_pairs=12))  # fmt: skip
    if not args.skip_minilm:
        from studio.demos.minilm import build_minilm

        onnx_path, npz = build_minilm()
        hm = load_model(onnx_path)
        data = load_npz(npz)
        # 128 calibration sentences: channel-pruning refits on fewer tokens overfit
        mcal = data.subset(range(128))
        mheld = data.subset(range(128, len(data)))
        results.append(run_model("minilm", hm, mcal, mheld,
                                 [parse_target("latency=1.3x", batch_size=8), parse_target("size<=ort-int8")],
                                 "channels@*intermediate*:0.25 int8 kmeans:8,4", args.max_evals, 8, naive_pairs=6))  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    from studio.core.sensitivity import _json_safe

    OUT.write_text(json.dumps(_json_safe(results), indent=1))
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
