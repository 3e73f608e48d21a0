"""Build the bundled digits demo: train the small CNN and write its ONNX, weights and data.

Deterministic (seeded, one thread, deterministic algorithms): two runs write byte-identical files.

    python assets/build_digits.py            # (re)build everything into assets/
    python assets/build_digits.py --check    # do nothing if the files exist and are valid

Writes into ``assets/`` (or ``--out``):
  digits_cnn.onnx    opset 17, input ``input`` [N,1,8,8] float32 in [0,1], output ``logits`` [N,10]
  digits_cnn.pt      state_dict for ``studio.demos.digits:build_model``
  digits_eval.npz    held-out set: ``input`` float32 [360,1,8,8], ``labels`` int64 [360]
  digits_calib.npz   128 training samples: ``input`` only (for static quantization calibration)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # allow running without an installed package
    sys.path.insert(0, str(ROOT))

from studio.demos import digits  # noqa: E402

SEED = 0
EPOCHS = 20
N_CALIB = 128
MIN_ACCURACY = 0.97
FILES = ("digits_cnn.onnx", "digits_cnn.pt", "digits_eval.npz", "digits_calib.npz")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io
    import zipfile

    # np.savez stamps the current time into the zip entries; write the entries ourselves with a
    # fixed date so the file is byte-identical between runs.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            arr_buf = io.BytesIO()
            np.lib.format.write_array(arr_buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, arr_buf.getvalue())
    return buf.getvalue()


def check(out: Path) -> tuple[bool, str]:
    """Return (ok, reason). Valid means: all files exist, the ONNX loads in ORT and scores >= 0.97."""
    missing = [f for f in FILES if not (out / f).is_file()]
    if missing:
        return False, f"missing {', '.join(missing)}"
    try:
        import onnxruntime as ort

        with np.load(out / "digits_eval.npz") as ev:
            x, y = ev["input"], ev["labels"]
        with np.load(out / "digits_calib.npz") as cal:
            if cal["input"].shape != (N_CALIB, 1, 8, 8):
                return False, "digits_calib.npz has the wrong shape"
        sess = ort.InferenceSession(str(out / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
        logits = sess.run(["logits"], {"input": x})[0]
        acc = float((logits.argmax(1) == y).mean())
    except Exception as exc:  # any corruption means: rebuild
        return False, f"invalid files ({type(exc).__name__}: {exc})"
    if acc < MIN_ACCURACY:
        return False, f"accuracy {acc:.4f} < {MIN_ACCURACY}"
    return True, f"accuracy {acc:.4f}"


def build(out: Path, *, epochs: int = EPOCHS, seed: int = SEED, verbose: bool = True) -> float:
    import torch

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    X_tr, y_tr, X_te, y_te = digits.load_digits_split(seed)
    model = digits.build_model()
    digits.train(model, X_tr, y_tr, epochs=epochs, seed=seed)
    acc = digits.accuracy(model, X_te, y_te)
    t_train = time.perf_counter() - t0
    if acc < MIN_ACCURACY:
        raise SystemExit(f"held-out accuracy {acc:.4f} is below {MIN_ACCURACY}; not writing assets")

    out.mkdir(parents=True, exist_ok=True)
    # Calibration samples: a fixed, class-balanced-ish pick from the training part.
    rng = np.random.default_rng(seed)
    calib_idx = np.sort(rng.choice(len(X_tr), size=N_CALIB, replace=False))

    # State dict: serialize to memory first, then write atomically.
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    _atomic_write_bytes(out / "digits_cnn.pt", buf.getvalue())

    onnx_tmp = out / "digits_cnn.onnx.tmp"
    example = torch.from_numpy(X_te[:1])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen on purpose
        torch.onnx.export(
            model,
            (example,),
            str(onnx_tmp),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    _normalize_onnx(onnx_tmp)
    os.replace(onnx_tmp, out / "digits_cnn.onnx")

    _atomic_write_bytes(
        out / "digits_eval.npz",
        _npz_bytes(input=X_te.astype(np.float32), labels=y_te.astype(np.int64)),
    )
    _atomic_write_bytes(out / "digits_calib.npz", _npz_bytes(input=X_tr[calib_idx].astype(np.float32)))

    if verbose:
        print(f"held-out accuracy (torch): {acc:.4f} on {len(y_te)} samples")
        print(f"trained {epochs} epochs in {t_train:.1f} s; total {time.perf_counter() - t0:.1f} s")
        for f in FILES:
            p = out / f
            print(f"  {p}  {p.stat().st_size / 1024:.1f} KiB  sha256 {_sha(p)[:12]}")
    return acc


def _normalize_onnx(path: Path) -> None:
    """Set a stable producer string and docstring so the bytes do not depend on the torch build."""
    import onnx

    m = onnx.load(str(path))
    # The exporter names folded Conv+BN weights "onnx::Conv_38"; give them the layer's name instead.
    inits = {t.name: t for t in m.graph.initializer}
    for node in m.graph.node:
        layer = node.name.strip("/").split("/")[-2] if node.name.count("/") >= 2 else node.name
        for inp, suffix in zip(node.input[1:], ("weight", "bias")):
            if inp.startswith("onnx::") and inp in inits:
                new = f"{layer}.{suffix}"
                inits[inp].name = new
                for n2 in m.graph.node:
                    n2.input[:] = [new if i == inp else i for i in n2.input]
    m.producer_name = "pareto-studio"
    m.producer_version = "digits-demo"
    m.doc_string = "Digits CNN demo (assets/build_digits.py). Input: [N,1,8,8] pixel/16; output: logits."
    onnx.checker.check_model(m)
    path.write_bytes(m.SerializeToString())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do nothing if the assets exist and are valid")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: assets/)")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args(argv)
    if args.check:
        ok, why = check(args.out)
        if ok:
            print(f"digits demo assets are up to date ({why})")
            return 0
        print(f"rebuilding digits demo assets: {why}")
    build(args.out, epochs=args.epochs)
    ok, why = check(args.out)
    print(f"onnxruntime check: {why}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
