"""How long opening a model takes: load (parse + normalise + shape inference) and layer analysis
(with and without weight statistics), for the digits CNN and, when available, MiniLM-L6.

Usage: .venv/bin/python benchmarks/load_and_analyze.py [--repeats 5]
Prints a table and writes benchmarks/results/load_and_analyze.json (medians over the repeats).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.core.graph import analyze  # noqa: E402
from studio.core.model import load_model  # noqa: E402


def _models() -> list[tuple[str, Path]]:
    models = [("digits_cnn", ROOT / "assets" / "digits_cnn.onnx")]
    has_minilm = importlib.util.find_spec("transformers") is not None and (
        importlib.util.find_spec("studio.demos.minilm") is not None
    )
    if has_minilm:
        try:
            from studio.demos.minilm import build_minilm

            onnx_path, _ = build_minilm()
            models.append(("minilm_l6", Path(onnx_path)))
        except Exception as e:  # noqa: BLE001 - the benchmark still reports digits
            print(f"MiniLM skipped: {type(e).__name__}: {e}", file=sys.stderr)
    else:
        print("MiniLM skipped: transformers or studio.demos.minilm not installed", file=sys.stderr)
    return models


def _time(fn, repeats: int) -> tuple[list[float], object]:
    out = None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, out


def measure(name: str, path: Path, repeats: int) -> dict:
    load_ms, handle = _time(lambda: load_model(path), repeats)
    stats_ms, an = _time(lambda: analyze(handle.proto, file_bytes=path.stat().st_size), repeats)
    plain_ms, _ = _time(lambda: analyze(handle.proto, with_stats=False), repeats)
    return {
        "model": name,
        "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
        "file_bytes": path.stat().st_size,
        "nodes": len(handle.proto.graph.node),
        "weighted_layers": len(an.layers),
        "params": an.total_params,
        "repeats": repeats,
        "load_ms_median": statistics.median(load_ms),
        "analyze_ms_median": statistics.median(stats_ms),
        "analyze_no_stats_ms_median": statistics.median(plain_ms),
        "load_ms_all": load_ms,
        "analyze_ms_all": stats_ms,
        "analyze_no_stats_ms_all": plain_ms,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load_and_analyze.json"))
    args = ap.parse_args(argv)

    rows = [measure(name, path, args.repeats) for name, path in _models()]

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"load + analysis time (measured, median of {args.repeats} runs)")
    for col in ("model", "file", "nodes", "layers", "load ms", "analyze ms", "analyze ms (no stats)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(
            r["model"], f"{r['file_bytes'] / 2**20:.1f} MiB", str(r["nodes"]), str(r["weighted_layers"]),
            f"{r['load_ms_median']:.1f}", f"{r['analyze_ms_median']:.1f}", f"{r['analyze_no_stats_ms_median']:.1f}",
        )  # fmt: skip
    Console().print(t)

    import onnx
    import onnxruntime

    result = {
        "what": "wall-clock ms of studio.core.model.load_model and studio.core.graph.analyze; "
        "kind measured, median over `repeats` runs in one process",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
