"""Opening models: ONNX files (with external data), PyTorch files, and everything that is not a
model — each refused with a ModelLoadError whose message says what is wrong."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core.errors import ModelLoadError, StudioError
from studio.core.evaluate import make_session
from studio.core.graph import analyze
from studio.core.model import load_model, normalize, save_model
from tests.reliability.corpus import external_matmul


def test_onnx_file_loads_with_provenance(digits_onnx):
    h = load_model(digits_onnx)
    assert h.sha256 == hashlib.sha256(digits_onnx.read_bytes()).hexdigest()
    assert h.source_kind == "onnx" and h.onnx_path == digits_onnx and h.torch_source is None
    assert h.input_names() == ["input"] and h.output_names() == ["logits"]
    assert h.warnings == []
    assert len({n.name for n in h.proto.graph.node}) == len(h.proto.graph.node)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "the file is empty"),
        ("truncated", "not a valid ONNX file"),
        ("random", "not a valid ONNX file"),
    ],
)
def test_bad_files_are_model_load_errors(tmp_path, digits_onnx, case, message):
    p = tmp_path / "model.onnx"
    if case == "directory":
        p.mkdir()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        p.write_bytes(digits_onnx.read_bytes()[: digits_onnx.stat().st_size // 2])
    elif case == "random":
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match=message) as ei:
        load_model(p)
    assert str(p) in str(ei.value)
    assert "\n" not in str(ei.value)


def test_external_data_model(tmp_path, digits_onnx):
    h = load_model(digits_onnx)
    path = save_model(h.proto, tmp_path / "ext" / "m.onnx", external_data=True)
    assert path.stat().st_size < 100_000  # the weights live in the data file
    h2 = load_model(path)
    assert analyze(h2.proto).total_weight_bytes == analyze(h.proto).total_weight_bytes
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    # make_session: h2's weights stay in their file, ORT is told the folder to read them from.
    run = lambda m: make_session(m).run(None, {"input": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(h.proto), run(h2.proto))


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    (tmp_path / "m").mkdir()
    p = tmp_path / "m" / "m.onnx"
    p.write_bytes(external_matmul("../secret.bin").SerializeToString())
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(p)


def test_normalize_gives_unique_node_names():
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"], name="r"),
            helper.make_node("Relu", ["b"], ["c"], name="r"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    normalize(m)
    names = [n.name for n in m.graph.node]
    assert len(set(names)) == 3 and all(names)


@pytest.mark.torch
def test_state_dict_with_factory_matches_the_onnx_demo(digits_onnx, digits_eval):
    from tests.conftest import ASSETS

    h = load_model(ASSETS / "digits_cnn.pt", factory="studio.demos.digits:build_model")
    assert h.source_kind == "state_dict" and h.torch_source["factory"] == "studio.demos.digits:build_model"
    x = np.load(digits_eval)["input"][:32]
    ours = ort.InferenceSession(h.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    a = ours.run(None, {ours.get_inputs()[0].name: x})[0]
    b = ref.run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert {la.op_type for la in analyze(h.proto).layers} == {"Conv", "Gemm"}


@pytest.mark.torch
def test_torch_files_that_need_trust_or_code(tmp_path):
    import torch

    from tests.conftest import ASSETS

    torch.manual_seed(0)
    from studio.demos.digits import build_model

    p = tmp_path / "whole_module.pt"
    torch.save(build_model(), p)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(p)
    with pytest.raises(ModelLoadError, match="no_such_pkg_abc"):
        load_model(ASSETS / "digits_cnn.pt", factory="no_such_pkg_abc.models:build")
    with pytest.raises(ModelLoadError, match="--factory"):
        load_model(ASSETS / "digits_cnn.pt")


def test_protobuf_that_is_not_a_model(tmp_path):
    """A valid protobuf message of another kind (a bare tensor) is not mistaken for a model."""
    p = tmp_path / "tensor.onnx"
    p.write_bytes(numpy_helper.from_array(np.arange(10, dtype=np.float32), "t").SerializeToString())
    with pytest.raises(StudioError):
        load_model(p)


def test_saving_with_external_data_leaves_the_model_intact(tmp_path, digits_onnx):
    h = load_model(digits_onnx)
    before = h.proto.SerializeToString()
    save_model(h.proto, tmp_path / "x.onnx", external_data=True)
    assert h.proto.SerializeToString() == before
    onnx.checker.check_model(h.proto)
