"""Layer analysis on real models: the digits CNN, Constant-node weights, an LSTM, an If subgraph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core.graph import analyze
from studio.core.model import load_model, normalize, save_model
from studio.core.onnx_utils import tensor_nbytes

DIGITS_LAYERS = {
    "/conv1/conv1.0/Conv",
    "/conv2/conv2.0/Conv",
    "/conv3/conv3.0/Conv",
    "/fc1/Gemm",
    "/fc2/Gemm",
}


@pytest.fixture(scope="module")
def digits(digits_onnx):
    h = load_model(digits_onnx)
    return h, analyze(h.proto, file_bytes=digits_onnx.stat().st_size)


def _runtime_shapes(proto: onnx.ModelProto, names: list[str], batch: int) -> dict[str, tuple]:
    """Shapes ORT actually produces for the given values (exposed as extra graph outputs)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, 1, 8, 8), dtype=np.float32)
    outs = sess.run(names, {"input": x})
    return {n: o.shape for n, o in zip(names, outs)}


def test_digits_every_weighted_layer_with_shapes_params_macs(digits):
    h, an = digits
    assert {la.name for la in an.layers} == DIGITS_LAYERS
    nodes = {n.name: n for n in h.proto.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in h.proto.graph.initializer}
    out_names = [nodes[la.name].output[0] for la in an.layers]
    runtime = _runtime_shapes(h.proto, out_names, batch=3)
    for la in an.layers:
        node = nodes[la.name]
        w = inits[node.input[1]]
        b = inits[node.input[2]]
        assert la.weight_name == node.input[1]
        assert la.weight_shape == list(w.shape)
        assert la.params == w.size + b.size
        assert la.weight_bytes == w.nbytes + b.nbytes
        assert la.dtype == "float"
        # Static dims of the analysed output shape agree with what ORT computes; batch is symbolic.
        got = runtime[node.output[0]]
        shape = la.output_shapes[0]
        assert len(shape) == len(got)
        assert [d for d in shape[1:]] == list(got[1:])
        per_sample_out = int(np.prod(got[1:]))
        if la.op_type == "Conv":
            assert la.macs == per_sample_out * int(np.prod(w.shape[1:]))
        else:  # Gemm with transB: out features x in features
            assert la.macs == w.shape[0] * w.shape[1]
    assert an.total_macs == sum(la.macs for la in an.layers)


def test_totals_identity_and_file_size(digits, digits_onnx):
    h, an = digits
    all_init = sum(tensor_nbytes(t) for t in h.proto.graph.initializer)
    assert an.total_weight_bytes == all_init
    assert an.total_weight_bytes == an.layer_weight_bytes + an.other_initializer_bytes
    assert an.layer_weight_bytes == sum(la.weight_bytes for la in an.layers)
    size = digits_onnx.stat().st_size
    assert abs(size - an.total_weight_bytes) / size < 0.01
    assert an.file_bytes == size


def test_groups_follow_the_name_hierarchy(digits):
    _, an = digits
    groups = an.groups()
    assert len(groups[()]) == len(an.layers)
    assert [la.name for la in groups[("conv2",)]] == ["/conv2/conv2.0/Conv"]
    assert [la.name for la in groups[("conv2", "conv2.0")]] == ["/conv2/conv2.0/Conv"]
    assert [la.name for la in groups[("fc1",)]] == ["/fc1/Gemm"]


def _constant_weight_model() -> onnx.ModelProto:
    """x[N,4] -> MatMul(W as a Constant node) -> Add(b as a Constant node) -> y[N,3]."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")),
        helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(b, "B")),
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="fc/MatMul"),
        helper.make_node("Add", ["xw", "B"], ["y"], name="fc/Add"),
    ]
    g = helper.make_graph(
        nodes,
        "constants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_constant_node_weights_become_visible_after_normalize():
    m = _constant_weight_model()
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    before = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    assert analyze(m).layers == []  # weights hidden in Constant nodes: nothing to see yet
    normalize(m)
    an = analyze(m)
    assert [la.name for la in an.layers] == ["fc/MatMul"]
    assert an.layers[0].weight_shape == [4, 3]
    assert an.layers[0].params == 12
    assert {t.name for t in m.graph.initializer} == {"W", "B"}
    assert not any(n.op_type == "Constant" for n in m.graph.node)
    after = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    np.testing.assert_array_equal(before[0], after[0])


def test_lstm_layer_found(tmp_path):
    hidden, inp, seq = 5, 3, 7
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1, 4 * hidden, inp)).astype(np.float32)
    r = rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)
    b = rng.standard_normal((1, 8 * hidden)).astype(np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h"], name="rnn/LSTM", hidden_size=hidden)
    g = helper.make_graph(
        [node],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "N", inp])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None),
        ],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))],
    )
    path = save_model(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), tmp_path / "lstm.onnx"
    )
    h = load_model(path)
    an = analyze(h.proto)
    assert [la.name for la in an.layers] == ["rnn/LSTM"]
    la = an.layers[0]
    assert la.op_type == "LSTM" and la.kind == "recurrent"
    assert la.params == w.size + r.size + b.size
    assert set(la.owned_initializers) == {"W", "R", "B"}
    assert la.macs == 4 * hidden * (inp + hidden)  # per time step
    assert an.other_initializer_bytes == 0
    # It runs in ORT as analysed.
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": rng.standard_normal((seq, 2, inp)).astype(np.float32)}
    )
    assert y[0].shape == (seq, 1, 2, hidden)


def test_if_subgraph_loads_and_analyses(tmp_path):
    rng = np.random.default_rng(4)
    w_then = rng.standard_normal((4, 2)).astype(np.float32)
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wt"], ["yt"], name="then/MatMul")],
        "then",
        [],
        [helper.make_tensor_value_info("yt", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(w_then, "Wt")],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "We"], ["ye"], name="else/MatMul")],
        "else",
        [],
        [helper.make_tensor_value_info("ye", TensorProto.FLOAT, ["N", 2])],
    )
    w_else = rng.standard_normal((4, 2)).astype(np.float32)
    w_main = rng.standard_normal((4, 4)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["inp", "Wm"], ["x"], name="main/MatMul"),
            helper.make_node("If", ["cond"], ["y"], name="branch/If", then_branch=then_g, else_branch=else_g),
        ],
        "with_if",
        [
            helper.make_tensor_value_info("inp", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(w_main, "Wm"), numpy_helper.from_array(w_else, "We")],
    )
    path = save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "if.onnx")
    h = load_model(path)
    an = analyze(h.proto)
    assert "main/MatMul" in {la.name for la in an.layers}
    assert an.total_weight_bytes == an.layer_weight_bytes + an.other_initializer_bytes
    x = rng.standard_normal((3, 4)).astype(np.float32)
    sess = ort.InferenceSession(h.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y_then = sess.run(None, {"inp": x, "cond": np.array(True)})[0]
    y_else = sess.run(None, {"inp": x, "cond": np.array(False)})[0]
    np.testing.assert_allclose(y_then, x @ w_main @ w_then, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_else, x @ w_main @ w_else, rtol=1e-4, atol=1e-5)


@pytest.mark.nlp
def test_minilm_layers(minilm_paths):
    onnx_path, _ = minilm_paths
    h = load_model(onnx_path)
    an = analyze(h.proto, with_stats=False)
    names = {la.name for la in an.layers}
    for i in range(6):
        for sub in ("attention/self/query", "attention/self/key", "attention/self/value",
                    "attention/output/dense", "intermediate/dense", "output/dense"):  # fmt: skip
            assert f"/encoder/layer.{i}/{sub}/MatMul" in names
    emb = [la for la in an.layers if la.op_type == "Gather"]
    assert any(la.weight_shape[1] == 384 and la.weight_shape[0] > 30000 for la in emb)
    assert an.total_weight_bytes == an.layer_weight_bytes + an.other_initializer_bytes
    size = onnx_path.stat().st_size
    assert abs(size - an.total_weight_bytes) / size < 0.01
