"""Architecture zoo: inspect -> default mixed recipe -> export -> verification on seven small
architectures (residual, inverted-residual, fire, shuffle, LSTM/GRU, transformer, YOLO head).

Per model: size on disk before / after (measured), fidelity of the exported variant vs the
original (cosine, SQNR; measured on N synthetic inputs), whether verification passed, ops without
a kernel, and every layer a technique refused with its reason.

    .venv/bin/python benchmarks/zoo.py [--models resnet,rnn] [--n-samples 32]

Prints a table and writes benchmarks/results/zoo.json. Models are exported once into the user
cache (~/.cache/pareto-studio/zoo), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio import __version__  # noqa: E402
from studio.demos.zoo import NAMES, build_zoo, run_zoo_model  # noqa: E402


def _kb(n) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


def _table(rows: list[dict], n: int) -> str:
    head = (
        f"{'model':<12} {'layers':>6} {'before':>12} {'after':>12} {'ratio':>6} "
        f"{'cosine':>8} {'SQNR dB':>8} {'verified':>8} {'refused':>7}  unsupported ops"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<12} FAILED: {r['error']}")
            continue
        f = r["fidelity"]
        ratio = r["size_before_bytes"] / r["size_after_bytes"]
        lines.append(
            f"{r['model']:<12} {r['layers']:>6} {_kb(r['size_before_bytes']):>12} "
            f"{_kb(r['size_after_bytes']):>12} {ratio:>5.2f}x {f['cosine_mean']:>8.4f} "
            f"{f['sqnr_db']:>8.1f} {'yes' if r['verified'] else 'NO':>8} {len(r['refused']):>7}  "
            f"{', '.join(r['unsupported_ops']) or 'none'}"
        )
    lines.append(
        f"sizes: measured, file on disk; cosine / SQNR: fidelity of the exported variant vs the "
        f"original on {n} synthetic inputs; refused: layers where a step did not apply (reasons below)"
    )
    return "\n".join(lines)


def _reasons(rows: list[dict]) -> str:
    out = []
    for r in rows:
        for layer, reasons in r.get("refused", {}).items():
            for why in reasons:
                out.append(f"  {r['model']:<12} {layer}: {why}")
    return "refused layers:\n" + "\n".join(out) if out else "refused layers: none"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(NAMES), help=f"comma-separated subset of {NAMES}")
    ap.add_argument("--n-samples", type=int, default=32, help="calibration and fidelity samples")
    ap.add_argument("--cache-dir", default=None, help="where the exported zoo models are kept")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zoo.json"))
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    t0 = time.time()
    zoo = build_zoo(names, cache_dir=args.cache_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="studio-zoo-") as tmp:
        for name, model in zoo.items():
            try:
                rows.append(run_zoo_model(model, Path(tmp) / name, n_samples=args.n_samples))
            except Exception as e:  # noqa: BLE001 - a failing model is a row, not the end
                rows.append(
                    {"model": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
                )
    print(_table(rows, args.n_samples))
    print(_reasons(rows))
    result = {
        "studio_version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "n_samples": args.n_samples,
        "seconds": round(time.time() - t0, 1),
        "notes": "weights are seeded random (BatchNorm calibrated on one random batch): random "
        "matrices have flat singular spectra, so SVD fidelity here is a worst case",
        "models": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
