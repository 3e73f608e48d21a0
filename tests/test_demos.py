"""Digits demo assets and the PyTorch -> ONNX loader."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
FACTORY = "studio.demos.digits:build_model"


@pytest.fixture(scope="module")
def assets() -> Path:
    """The committed digits assets; rebuilt (about 10 s) only if missing or invalid."""
    spec = importlib.util.spec_from_file_location("build_digits", ASSETS / "build_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ok, _ = mod.check(ASSETS)
    if not ok:
        pytest.importorskip("torch")
        assert mod.main(["--check"]) == 0
    return ASSETS


def test_digits_assets_onnxruntime_accuracy(assets):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(assets / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    with np.load(assets / "digits_eval.npz") as ev:
        x, y = ev["input"], ev["labels"]
    assert x.shape == (360, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (360,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    logits = sess.run(None, {"input": x})[0]
    assert logits.shape == (360, 10)
    assert (logits.argmax(1) == y).mean() >= 0.97
    # dynamic batch axis
    assert sess.run(None, {"input": x[:3]})[0].shape == (3, 10)


def test_digits_calib_has_no_labels(assets):
    with np.load(assets / "digits_calib.npz") as cal:
        assert list(cal.keys()) == ["input"]
        assert cal["input"].shape == (128, 1, 8, 8) and cal["input"].dtype == np.float32


def test_digits_split_is_deterministic_and_stratified():
    from studio.demos.digits import load_digits_split

    a = load_digits_split(0)
    b = load_digits_split(0)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    _, _, _, y_te = a
    assert len(y_te) == 360
    counts = np.bincount(y_te, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


# ---------------------------------------------------------------------------------------------
# torch loader

try:
    import torch
except ImportError:  # the ORT-only tests above still run
    torch = None


def needs_torch(fn):
    fn = pytest.mark.torch(fn)
    return pytest.mark.skipif(torch is None, reason="needs torch (the torch extra)")(fn)


@pytest.fixture()
def trained(assets):
    from studio.demos.digits import build_model

    model = build_model()
    model.load_state_dict(torch.load(assets / "digits_cnn.pt", weights_only=True))
    return model.eval()


def _onnx_matches(onnx_path: Path, model, atol: float = 1e-4) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)


@needs_torch
def test_state_dict_with_factory_exports_matching_onnx(assets, trained, tmp_path):
    from studio.backends.torch_loader import export_torch_to_onnx

    out = export_torch_to_onnx(assets / "digits_cnn.pt", factory=FACTORY, cache_dir=tmp_path)
    assert out.suffix == ".onnx" and out.parent == tmp_path
    _onnx_matches(out, trained)


@needs_torch
def test_state_dict_pytorch_file_is_weights_only(assets, monkeypatch, tmp_path):
    """A state_dict must be read with weights_only=True even when trust_pickle is False."""
    from studio.backends import torch_loader

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch_loader.load_torch_module(assets / "digits_cnn.pt", factory=FACTORY)
    assert calls == [True]


@needs_torch
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_file(trained, tmp_path):
    from studio.backends.torch_loader import detect_torch_file_kind, export_torch_to_onnx
    from studio.core.errors import ModelLoadError

    ts = tmp_path / "digits_ts.pt"
    torch.jit.save(torch.jit.script(trained), ts)
    assert detect_torch_file_kind(ts) == "torchscript"
    with pytest.raises(ModelLoadError, match="--input-shape"):
        export_torch_to_onnx(ts, cache_dir=tmp_path / "cache")
    out = export_torch_to_onnx(ts, input_shape=(1, 1, 8, 8), cache_dir=tmp_path / "cache")
    _onnx_matches(out, trained)


@needs_torch
def test_pickled_module_needs_trust(trained, tmp_path):
    from studio.backends.torch_loader import detect_torch_file_kind, export_torch_to_onnx
    from studio.core.errors import ModelLoadError

    full = tmp_path / "full_model.pt"
    torch.save(trained, full)
    assert detect_torch_file_kind(full) == "pickled"
    with pytest.raises(ModelLoadError, match="--trust-pickle") as info:
        export_torch_to_onnx(full, cache_dir=tmp_path / "cache")
    assert "arbitrary" in str(info.value)
    assert "\n" not in str(info.value)
    out = export_torch_to_onnx(full, trust_pickle=True, cache_dir=tmp_path / "cache")
    _onnx_matches(out, trained)


@needs_torch
@pytest.mark.parametrize(
    "factory, match",
    [
        ("no_such_package.models:build", "no_such_package"),
        ("studio.demos.digits:no_such_function", "no_such_function"),
        ("studio.demos.digits:load_digits_split", "not a torch.nn.Module"),
    ],
)
def test_bad_factory(assets, tmp_path, factory, match):
    from studio.backends.torch_loader import export_torch_to_onnx
    from studio.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=match):
        export_torch_to_onnx(assets / "digits_cnn.pt", factory=factory, cache_dir=tmp_path)


@needs_torch
def test_state_dict_without_factory(assets, tmp_path):
    from studio.backends.torch_loader import export_torch_to_onnx
    from studio.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="--factory"):
        export_torch_to_onnx(assets / "digits_cnn.pt", cache_dir=tmp_path)


@needs_torch
def test_wrong_state_dict_keys(assets, tmp_path):
    from studio.backends.torch_loader import export_torch_to_onnx
    from studio.core.errors import ModelLoadError

    sd = torch.load(assets / "digits_cnn.pt", weights_only=True)
    sd["head.weight"] = sd.pop("fc2.weight")
    bad = tmp_path / "renamed.pt"
    torch.save(sd, bad)
    with pytest.raises(ModelLoadError) as info:
        export_torch_to_onnx(bad, factory=FACTORY, cache_dir=tmp_path)
    msg = str(info.value)
    assert "fc2.weight" in msg and "head.weight" in msg


@needs_torch
def test_not_a_torch_file(tmp_path):
    from studio.backends.torch_loader import export_torch_to_onnx
    from studio.core.errors import ModelLoadError

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a PyTorch file"):
        export_torch_to_onnx(junk, cache_dir=tmp_path)


@needs_torch
def test_export_cache(assets, tmp_path):
    from studio.backends.torch_loader import export_torch_to_onnx

    first = export_torch_to_onnx(assets / "digits_cnn.pt", factory=FACTORY, cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    t0 = time.perf_counter()
    second = export_torch_to_onnx(assets / "digits_cnn.pt", factory=FACTORY, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 0.5
    assert second == first and second.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp"))
    # a different input shape is a different cache entry
    third = export_torch_to_onnx(
        assets / "digits_cnn.pt", factory=FACTORY, input_shape=(2, 1, 8, 8), cache_dir=tmp_path
    )
    assert third != first
