"""External-data models: opening keeps the weights in their files (memory-mapped, read-only),
and every consumer still works end to end: analyse, compress, evaluate, export."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from studio.core.errors import ModelLoadError
from studio.core.evaluate import evaluate, load_npz, make_session, run_model
from studio.core.export import export_variant
from studio.core.graph import analyze
from studio.core.jobs import drive
from studio.core.model import load_external_into, load_model, save_model
from studio.core.onnx_utils import external_tensors, tensor_array
from studio.core.pipeline import compress
from studio.core.recipe import Recipe
from tests.reliability.corpus import external_matmul


@pytest.fixture(scope="module")
def digits_external(tmp_path_factory, digits_onnx):
    """The digits CNN saved with every initializer in `digits.onnx.data` beside it."""
    folder = tmp_path_factory.mktemp("ext")
    proto = onnx.load(str(digits_onnx))
    path = folder / "digits.onnx"
    onnx.save_model(
        proto, str(path), save_as_external_data=True, location="digits.onnx.data", size_threshold=0
    )
    return path


def test_open_keeps_weights_in_their_file(digits_external, digits_onnx):
    h = load_model(digits_external)
    ref = load_model(digits_onnx)
    assert h.base_dir == digits_external.parent
    assert h.has_external_data() and not ref.has_external_data()
    ext = {t.name for t in external_tensors(h.proto)}
    assert ext == {t.name for t in h.proto.graph.initializer}
    # Views onto the file: equal to the inline model's weights, read-only, not copies.
    for t in h.proto.graph.initializer:
        a = tensor_array(t)
        b = tensor_array(next(r for r in ref.proto.graph.initializer if r.name == t.name))
        np.testing.assert_array_equal(a, b)
        assert not a.flags.writeable
        assert isinstance(a.base, np.memmap) or a.size == 0
    an, an_ref = analyze(h.proto), analyze(ref.proto)
    assert an.total_weight_bytes == an_ref.total_weight_bytes
    assert [la.stats.std for la in an.layers] == [la.stats.std for la in an_ref.layers]


def test_session_reads_external_data_from_the_model_folder(digits_external, digits_onnx, digits_eval):
    h = load_model(digits_external)
    ds = load_npz(digits_eval).subset(range(64))
    out = run_model(h.proto, ds)[0]
    np.testing.assert_array_equal(out, run_model(load_model(digits_onnx).proto, ds)[0])
    assert h.has_external_data()  # the session did not load the weights into the proto
    # Works from another working directory too (ORT is told the folder, not the cwd).
    cwd = os.getcwd()
    try:
        os.chdir("/")
        make_session(h.proto, threads=1)
    finally:
        os.chdir(cwd)


def test_save_and_materialize_write_standalone_models(digits_external, tmp_path, digits_eval):
    h = load_model(digits_external)
    saved = save_model(h.proto, tmp_path / "copy.onnx")
    assert h.has_external_data()  # saving did not change the caller's proto
    assert not external_tensors(onnx.load(str(saved), load_external_data=False))
    assert saved.stat().st_size > digits_external.stat().st_size
    ds = load_npz(digits_eval).subset(range(32))
    np.testing.assert_array_equal(run_model(h.proto, ds)[0], run_model(load_model(saved).proto, ds)[0])
    h.materialize()
    assert not h.has_external_data()
    assert all(t.HasField("raw_data") for t in h.proto.graph.initializer)


def test_external_end_to_end_int8_static(digits_external, digits_onnx, digits_eval, digits_calib, tmp_path):
    h = load_model(digits_external)
    analysis = analyze(h.proto)
    assert len(analysis.layers) == 5
    recipe = Recipe.from_dict(
        {"calibration": {"data": str(digits_calib), "n_samples": 32}, "defaults": {"quantize": "int8_static"}}
    )
    variant = drive(compress(h, recipe))
    assert h.has_external_data()  # the original stays mapped; the variant holds its own data
    assert not external_tensors(variant.proto)
    ds = load_npz(digits_eval).subset(range(120))
    ms = {m.name: m for m in evaluate(variant.proto, ds, reference=h.proto)}
    assert ms["top1"].kind == "measured" and ms["top1"].value >= 0.95
    assert ms["top1_agreement"].value >= 0.97
    # Same variant from the inline model: external data changes nothing about the result.
    inline = drive(compress(load_model(digits_onnx), recipe))
    np.testing.assert_array_equal(run_model(variant.proto, ds)[0], run_model(inline.proto, ds)[0])
    res = export_variant(variant, h, tmp_path / "out", data=ds, n_samples=64)
    assert res.verification["ok"], res.verification
    exported = onnx.load(str(res.onnx_path), load_external_data=False)
    assert not external_tensors(exported)
    sizes = res.verification["sizes"]
    assert (
        sizes["original_bytes"]
        == digits_external.stat().st_size + (digits_external.parent / "digits.onnx.data").stat().st_size
    )
    assert sizes["ratio"] > 2.5  # int8 weights, measured on the files


def _tiny_external(folder, location: str, data: bytes, length: int = 64):
    folder.mkdir(parents=True, exist_ok=True)
    if data:
        (folder / "w.bin").write_bytes(data)
    p = folder / "m.onnx"
    p.write_bytes(external_matmul(location, length).SerializeToString())
    return p


def test_truncated_or_missing_data_is_refused_on_open(tmp_path):
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(_tiny_external(tmp_path / "short", "w.bin", b"\0" * 8))
    with pytest.raises(ModelLoadError, match="is missing"):
        load_model(_tiny_external(tmp_path / "none", "w.bin", b""))


def test_basepath_in_the_file_is_not_trusted(tmp_path):
    """A `basepath` written into the model cannot redirect reads out of the model's folder."""
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "w.bin").write_bytes(np.full(16, 7, np.float32).tobytes())
    p = _tiny_external(tmp_path / "m", "w.bin", np.arange(16, dtype=np.float32).tobytes())
    m = onnx.load(str(p), load_external_data=False)
    e = m.graph.initializer[0].external_data.add()
    e.key, e.value = "basepath", str(outside)
    p.write_bytes(m.SerializeToString())
    h = load_model(p)
    assert tensor_array(h.proto.graph.initializer[0]).ravel().tolist() == list(range(16))
    # A location edited after opening is checked again when read.
    t = h.proto.graph.initializer[0]
    next(x for x in t.external_data if x.key == "location").value = "../secret/w.bin"
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        tensor_array(t)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_external_into(h.proto)


def test_model_nbytes_counts_external_tensors(digits_external, digits_onnx):
    from studio.core.onnx_utils import model_nbytes

    ext, inline = load_model(digits_external).proto, load_model(digits_onnx).proto
    assert ext.ByteSize() < 10_000  # references only
    assert abs(model_nbytes(ext) - inline.ByteSize()) < 0.01 * inline.ByteSize()
    assert model_nbytes(inline) == inline.ByteSize()
