"""Evaluation on real data: digits accuracy, fidelity, image folders, Python data sets and
evaluators, and the Metric honesty rules."""

from __future__ import annotations

import json
import struct
import textwrap
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from studio.core.datasets import load_image_folder, load_python_dataset, read_png, resize_bilinear
from studio.core.errors import DatasetError
from studio.core.evaluate import evaluate, load_dataset, load_npz
from studio.core.metrics import SAMPLE_FREE, Metric
from studio.core.model import load_model
from studio.core.onnx_utils import replace_initializer, tensor_array

# ------------------------------------------------------------------ a tiny PNG writer for tests


def _filter_row(row: np.ndarray, prev: np.ndarray, f: int, bpp: int) -> bytes:
    r, p = row.astype(np.int32), prev.astype(np.int32)
    left = np.concatenate([np.zeros(bpp, np.int32), r[:-bpp]])
    upleft = np.concatenate([np.zeros(bpp, np.int32), p[:-bpp]])
    if f == 0:
        pred = np.zeros_like(r)
    elif f == 1:
        pred = left
    elif f == 2:
        pred = p
    elif f == 3:
        pred = (left + p) >> 1
    else:
        pa, pb, pc = np.abs(p - upleft), np.abs(left - upleft), np.abs(left + p - 2 * upleft)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, p, upleft))
    return bytes([f]) + ((r - pred) & 0xFF).astype(np.uint8).tobytes()


def write_png(path, img: np.ndarray, filters=(0, 1, 2, 3, 4)) -> None:
    """Encode [H,W] / [H,W,3] uint8 or uint16 with the given row filters (cycled)."""
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else img.shape[2]
    depth = 16 if img.dtype == np.uint16 else 8
    raw = img.astype(">u2").tobytes() if depth == 16 else img.astype(np.uint8).tobytes()
    stride = w * ch * depth // 8
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride)
    bpp = ch * depth // 8
    prev = np.zeros(stride, np.uint8)
    body = b""
    for y in range(h):
        body += _filter_row(rows[y], prev, filters[y % len(filters)], bpp)
        prev = rows[y]

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ctype = {1: 0, 3: 2}[ch]
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(body))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------ accuracy and fidelity


def test_digits_accuracy_matches_a_direct_ort_run(digits_onnx, digits_eval):
    ds = load_npz(digits_eval)
    metrics = {m.name: m for m in evaluate(load_model(digits_onnx).proto, ds, batch_size=100)}
    sess = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": ds.inputs["input"]})[0]
    expected = float((logits.argmax(1) == ds.labels).mean())
    top1 = metrics["top1"]
    assert top1.value == expected
    assert top1.value > 0.95  # the demo CNN is a good classifier; a broken pipeline is not
    assert top1.kind == "measured" and top1.n_samples == len(ds) == 360
    assert top1.source == str(digits_eval)


def test_fidelity_against_itself_is_exactly_one(digits_onnx, digits_calib):
    proto = load_model(digits_onnx).proto
    ds = load_npz(digits_calib)
    ms = {m.name: m for m in evaluate(proto, ds, reference=proto)}
    assert ms["cosine_mean"].value == 1.0
    assert ms["cosine_min"].value == 1.0
    assert ms["top1_agreement"].value == 1.0
    assert ms["sqnr_db"].value == float("inf")
    assert all(m.kind == "fidelity" and m.n_samples == len(ds) for m in ms.values())


def test_fidelity_drops_when_weights_change(digits_onnx, digits_calib):
    proto = load_model(digits_onnx).proto
    noisy = onnx.ModelProto()
    noisy.CopyFrom(proto)
    w = next(t for t in noisy.graph.initializer if t.name == "fc1.weight")
    arr = tensor_array(w)
    rng = np.random.default_rng(0)
    replace_initializer(
        noisy, "fc1.weight", arr + rng.standard_normal(arr.shape).astype(np.float32) * arr.std()
    )
    ms = {m.name: m for m in evaluate(noisy, load_npz(digits_calib), reference=proto)}
    assert 0.0 < ms["cosine_mean"].value < 0.999
    assert ms["sqnr_db"].value < 40


# ------------------------------------------------------------------ image folders


def _digits_as_pngs(root, digits_eval, n_per_class=6, rgb=False, up=1):
    """Write digits eval images as PNGs in class folders; pixel = k * 15 for value k/16."""
    z = np.load(digits_eval)
    x, y = z["input"], z["labels"]
    picked = []
    for c in range(10):
        for i in np.flatnonzero(y == c)[:n_per_class]:
            img = np.rint(x[i, 0] * 16).astype(np.uint8) * 15
            if up > 1:
                img = np.kron(img, np.ones((up, up), np.uint8))
            if rgb:
                img = np.stack([img] * 3, axis=-1)
            d = root / str(c)
            d.mkdir(parents=True, exist_ok=True)
            write_png(d / f"{i:04d}.png", img)
            picked.append(i)
    return x[picked], y[picked]


def test_png_decoder_round_trips_all_filters(tmp_path):
    rng = np.random.default_rng(5)
    cases = [
        rng.integers(0, 256, (16, 24), dtype=np.uint8),
        rng.integers(0, 256, (12, 10, 3), dtype=np.uint8),
        rng.integers(0, 65536, (8, 12), dtype=np.uint16),
    ]
    for k, img in enumerate(cases):
        for filters in ((0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)):
            p = tmp_path / f"img{k}_{len(filters)}_{filters[0]}.png"
            write_png(p, img, filters)
            got = read_png(p)
            assert got.dtype == img.dtype
            np.testing.assert_array_equal(got, img, err_msg=f"filters {filters}")


def test_image_folder_gives_the_same_inputs_and_accuracy(tmp_path, digits_onnx, digits_eval):
    x, y = _digits_as_pngs(tmp_path / "imgs", digits_eval)
    (tmp_path / "imgs" / "preprocess.json").write_text(json.dumps({"grayscale": True, "scale": 1 / 240}))
    ds = load_image_folder(tmp_path / "imgs")
    assert ds.meta["classes"] == [str(c) for c in range(10)]
    np.testing.assert_array_equal(ds.labels, y)
    np.testing.assert_allclose(ds.inputs["input"], x, atol=1e-6)
    proto = load_model(digits_onnx).proto
    acc = {m.name: m for m in evaluate(proto, ds)}["top1"]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    direct = float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())
    assert acc.value == direct and acc.n_samples == len(y) == 60


def test_image_folder_rgb_resize_and_nhwc(tmp_path, digits_eval):
    x, _ = _digits_as_pngs(tmp_path / "imgs", digits_eval, n_per_class=1, rgb=True, up=2)
    ds = load_image_folder(
        tmp_path / "imgs", size=(8, 8), grayscale=True, scale=1 / 240, layout="NHWC", input_name="img"
    )
    arr = ds.inputs["img"]
    assert arr.shape == (10, 8, 8, 1)
    # 2x nearest upscale then bilinear halving lands between neighbours: close to the original.
    assert np.abs(arr[..., 0] - x[:, 0]).mean() < 0.08
    np.testing.assert_allclose(resize_bilinear(np.eye(4, dtype=np.float32), (4, 4)), np.eye(4))


def test_image_folder_npy_files_and_mean_std(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            np.save(tmp_path / c / f"{i}.npy", np.full((4, 4, 3), 255 if c == "dog" else 0, np.uint8))
    ds = load_image_folder(tmp_path, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert ds.inputs["input"].shape == (4, 3, 4, 4)
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    assert ds.inputs["input"][:2].max() == -1.0 and ds.inputs["input"][2:].min() == 1.0


def test_empty_image_folder_is_a_dataset_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images found in"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="no images found in"):
        load_dataset(tmp_path)


# ------------------------------------------------------------------ python data sets and evaluators

MODULE = textwrap.dedent(
    """
    import numpy as np
    from studio.core.evaluate import Dataset
    from studio.core.metrics import Metric

    def as_tuple():
        z = np.load({eval!r})
        return {{"input": z["input"][:40]}}, z["labels"][:40]

    def as_dataset():
        z = np.load({eval!r})
        return Dataset({{"input": z["input"][40:60]}}, z["labels"][40:60], source="my digits")

    def broken():
        raise RuntimeError("database offline")

    def mean_max_logit(outputs, ds):
        v = float(outputs[0].max(1).mean())
        return [Metric("mean_max_logit", v, "measured", ds.source, n_samples=len(ds))]

    def not_metrics(outputs, ds):
        return {{"acc": 1.0}}
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch, digits_eval):
    (tmp_path / "my_digits_data.py").write_text(MODULE.format(eval=str(digits_eval)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_digits_data"


def test_python_dataset_and_evaluator(user_module, digits_onnx):
    ds = load_python_dataset(f"{user_module}:as_tuple")
    assert len(ds) == 40 and ds.labels is not None
    ds2 = load_dataset(f"{user_module}:as_dataset")
    assert len(ds2) == 20 and ds2.source == "my digits"
    ds.meta["evaluator"] = f"{user_module}:mean_max_logit"
    ms = {m.name: m for m in evaluate(load_model(digits_onnx).proto, ds)}
    assert ms["top1"].n_samples == 40
    assert ms["mean_max_logit"].value > 0


def test_python_dataset_errors_name_the_spec(user_module, digits_onnx):
    with pytest.raises(DatasetError, match="no_such_module_xyz:data"):
        load_python_dataset("no_such_module_xyz:data")
    with pytest.raises(DatasetError, match="has no function 'missing'"):
        load_python_dataset(f"{user_module}:missing")
    with pytest.raises(DatasetError, match="database offline"):
        load_python_dataset(f"{user_module}:broken")
    ds = load_python_dataset(f"{user_module}:as_tuple")
    ds.meta["evaluator"] = f"{user_module}:not_metrics"
    with pytest.raises(DatasetError, match="list of studio.core.metrics.Metric"):
        evaluate(load_model(digits_onnx).proto, ds)


# ------------------------------------------------------------------ honesty


def test_metric_without_provenance_is_refused():
    with pytest.raises(ValueError, match="no source"):
        Metric("top1", 0.9, "measured", "", n_samples=10)
    with pytest.raises(ValueError, match="needs n_samples"):
        Metric("top1", 0.9, "measured", "data.npz")
    with pytest.raises(ValueError, match="needs n_samples"):
        Metric("cosine_mean", 0.9, "fidelity", "data.npz")
    with pytest.raises(ValueError, match="kind"):
        Metric("top1", 0.9, "guessed", "data.npz", n_samples=3)
    for name in SAMPLE_FREE:  # a file size is not taken over samples
        assert Metric(name, 10.0, "measured", "file on disk").n_samples is None
    assert Metric("size_bytes", 10.0, "estimated", "formula").kind == "estimated"


def test_every_evaluate_metric_says_what_it_is(digits_onnx, digits_eval):
    proto = load_model(digits_onnx).proto
    ds = load_npz(digits_eval).subset(np.arange(50))
    ms = evaluate(proto, ds, reference=proto)
    assert {m.name for m in ms} >= {"top1", "top5", "cosine_mean", "sqnr_db"}
    for m in ms:
        assert m.kind in ("measured", "fidelity") and m.source and m.n_samples == 50
        assert "50 samples" in m.label()
