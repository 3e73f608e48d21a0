"""Generators of bad (and valid-but-odd) inputs for the hardening suites.

Every case writes its file(s) into a folder it is given and returns the path a user would pass.
`expect` says what the studio must do with it:

* ``"error"``: refused with a StudioError (never another exception type, never a traceback);
* ``"odd"``: valid but unusual: it opens and analyses fine; later steps may still refuse it, but
  only with a StudioError.

`TRIED` counts the cases the suites actually ran; tests/reliability/conftest.py prints it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "assets" / "digits_cnn.onnx"
DIGITS_EVAL = ROOT / "assets" / "digits_eval.npz"
MARKER_NAME = "PWNED_BY_PICKLE"

TRIED: Counter = Counter()


def record(kind: str, n: int = 1) -> None:
    """Count `n` cases of `kind` as tried (summed up at the end of the session)."""
    TRIED[kind] += n


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # model | torch | dataset | recipe
    expect: str  # error | odd
    build: Callable[[Path], Path]
    needs_torch: bool = False
    factory: str | None = None  # for torch cases: the --factory a user would give


# ---------------------------------------------------------------------------- model helpers


def _vi(name, shape, dt=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dt, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=(), ir_version=None):
    g = helper.make_graph(list(nodes), "fuzz", list(inputs), list(outputs), initializer=list(inits))
    ops = [helper.make_opsetid("", opset), *extra_opsets]
    m = helper.make_model(g, opset_imports=ops, producer_name="fuzz")
    m.ir_version = ir_version or min(onnx.IR_VERSION, 10 if opset <= 21 else onnx.IR_VERSION)
    return m


def _w(shape, seed=0, name="W"):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _linear(opset=17, k=16, n=8):
    """x[N,k] @ W[k,n] + b -> Relu: the smallest model with one weighted layer."""
    b = numpy_helper.from_array(np.zeros(n, np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"], name="fc/MatMul"),
        helper.make_node("Add", ["mm", "b"], ["pre"], name="fc/Add"),
        helper.make_node("Relu", ["pre"], ["y"], name="relu"),
    ]
    return _model(nodes, [_vi("x", ["N", k])], [_vi("y", ["N", n])], [_w((k, n)), b], opset=opset)


def _matmul(inits=(), x_features=4, y_features=4):
    """y = x @ W: one MatMul node named "mm" (W from `inits`, or left missing)."""
    mm = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return _model([mm], [_vi("x", ["N", x_features])], [_vi("y", ["N", y_features])], inits)


def _save(m: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    p = folder / name
    p.write_bytes(m.SerializeToString())
    return p


def _bytes(data: bytes, name: str = "model.onnx") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        p = folder / name
        p.write_bytes(data)
        return p

    return build


def external_matmul(location: str, length: int = 64) -> onnx.ModelProto:
    """A MatMul whose 4x4 float weight points at `location` (offset 0, `length` bytes) as
    external data; nothing is written."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        e = w.external_data.add()
        e.key, e.value = k, v
    return _matmul([w])


def _external(location: str, *, length: int = 64, make_target: Callable[[Path], None] | None = None):
    """A MatMul whose 4x4 weight points at `location` as external data."""

    def build(folder: Path) -> Path:
        if make_target is not None:
            make_target(folder)
        return _save(external_matmul(location, length), folder)

    return build


def _outside_secret(folder: Path) -> Path:
    """A file beside (not inside) the model's folder: what an escape would read."""
    secret = folder.parent / f"{folder.name}-secret.bin"
    secret.write_bytes(b"S" * 64)
    return secret


def _symlink_escape(folder: Path) -> None:
    os.symlink(_outside_secret(folder), folder / "weights.bin")


def _missing_initializer(folder: Path) -> Path:
    # "W" is read by the MatMul but no node, input or initializer provides it.
    m = _matmul()
    return _save(m, folder)


def _cycle(folder: Path) -> Path:
    nodes = [
        helper.make_node("Add", ["x", "b_out"], ["a_out"], name="a"),
        helper.make_node("Relu", ["a_out"], ["b_out"], name="b"),
        helper.make_node("MatMul", ["b_out", "W"], ["y"], name="mm"),
    ]
    m = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], [_w((4, 4))])
    return _save(m, folder)


def _zero_dim(folder: Path) -> Path:
    # A weight with a 0-sized axis: legal ONNX, the product is all zeros.
    w = numpy_helper.from_array(np.zeros((0, 4), np.float32), "W")
    m = _matmul([w], x_features=0)
    return _save(m, folder)


def _huge_declared_input(folder: Path) -> Path:
    # The graph input claims 2^40 features; the weight is tiny. Only the declaration is huge.
    m = _linear()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**40
    return _save(m, folder)


def _huge_initializer_dims(folder: Path) -> Path:
    # Declared dims say 2^40 elements (4 TiB) but the tensor holds 64 bytes.
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    del w.dims[:]
    w.dims.extend([2**20, 2**20])
    m = _matmul([w], x_features=2**20, y_features=2**20)
    return _save(m, folder)


def _negative_dim(folder: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    w.dims[0] = -4
    m = _matmul([w])
    return _save(m, folder)


def _short_float_data(folder: Path) -> Path:
    # dims [4, 4] but only 3 values in float_data.
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4], float_data=[1.0, 2.0, 3.0])
    m = _matmul([w])
    return _save(m, folder)


def _unknown_op(folder: Path) -> Path:
    m = _linear()
    m.graph.node[2].op_type = "TotallyMadeUpOp"
    return _save(m, folder)


def _unknown_domain(folder: Path) -> Path:
    m = _linear()
    n = m.graph.node[2]
    n.op_type, n.domain = "Swish", "com.example.fuzz"
    m.opset_import.append(helper.make_opsetid("com.example.fuzz", 1))
    return _save(m, folder)


def _no_standard_opset(folder: Path) -> Path:
    m = _linear()
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.example.fuzz", 1))
    for n in m.graph.node:
        n.domain = "com.example.fuzz"
    return _save(m, folder)


def _future_opset(folder: Path) -> Path:
    m = _linear()
    m.opset_import[0].version = 99
    return _save(m, folder)


def _non_utf8_names(folder: Path) -> Path:
    # Protobuf refuses to *set* invalid UTF-8, so patch same-length placeholders in the bytes.
    m = _linear()
    m.graph.node[0].name = "QQQQname1"
    m.graph.node[1].output[0] = "QQQQname2"
    m.graph.node[2].input[0] = "QQQQname2"
    data = m.SerializeToString()
    data = data.replace(b"QQQQname1", b"\xff\xfe\xc3(nam1").replace(b"QQQQname2", b"\x80\x81\xfdname2")
    return _bytes(data)(folder)


def _constant_weights(folder: Path) -> Path:
    # TF/Paddle converters store weights as Constant nodes, not initializers.
    rng = np.random.default_rng(1)
    wt = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "cw")
    nodes = [
        helper.make_node("Constant", [], ["cw"], name="const_w", value=wt),
        helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    m = _model(nodes, [_vi("x", ["N", 1, 8, 8])], [_vi("y", ["N", 8, 8, 8])])
    return _save(m, folder)


def _lstm_nodes(prefix: str, x: str, y: str, hidden: int = 8, inp: int = 4):
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, inp)).astype(np.float32), f"{prefix}W")
    r = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), f"{prefix}R")
    node = helper.make_node(
        "LSTM", [x, f"{prefix}W", f"{prefix}R"], [y], name=f"{prefix}lstm", hidden_size=hidden
    )
    return node, [w, r]


def _if_with_lstm(folder: Path) -> Path:
    # Both branches run an LSTM over the sequence x[T, N, 4]; the weights live in the outer graph.
    then_lstm, inits = _lstm_nodes("", "x", "then_y")
    else_lstm = helper.make_node("LSTM", ["x", "W", "R"], ["else_y"], name="else_lstm", hidden_size=8)
    out_vi = [_vi("then_y", None)]
    then_g = helper.make_graph([then_lstm], "then", [], out_vi)
    else_g = helper.make_graph([else_lstm], "else", [], [_vi("else_y", None)])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    inits[0].name, inits[1].name = "W", "R"
    then_lstm.input[1], then_lstm.input[2] = "W", "R"
    m = _model(nodes, [_vi("x", [5, "N", 4])], [_vi("y", None)], [*inits, zero])
    return _save(m, folder)


def _loop_with_lstm(folder: Path) -> Path:
    # A Loop whose body runs an LSTM twice over the same input (trip count 2), a GRU-free RNN zoo.
    lstm, inits = _lstm_nodes("", "x", "lstm_y")
    lstm.input[1], lstm.input[2] = "W", "R"
    inits[0].name, inits[1].name = "W", "R"
    body = helper.make_graph(
        [
            lstm,
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("ReduceMean", ["lstm_y"], ["scan_out"], name="mean", keepdims=0),
        ],
        "body",
        [_vi("iter", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL)],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("scan_out", None)],
    )
    trip = numpy_helper.from_array(np.array(2, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [helper.make_node("Loop", ["trip", "cond"], ["y"], name="loop", body=body)]
    m = _model(nodes, [_vi("x", [5, 1, 4])], [_vi("y", None)], [*inits, trip, cond])
    return _save(m, folder)


def _wrong_output_shape(folder: Path) -> Path:
    m = _linear()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3  # the graph computes 8
    return _save(m, folder)


def _duplicate_names(folder: Path) -> Path:
    m = _linear()
    for n in m.graph.node:
        n.name = "same"
    return _save(m, folder)


def _opset(v: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        m = _linear(opset=v)
        if v >= 21:
            m.ir_version = 10
        return _save(m, folder)

    return build


def _proto_without_graph(folder: Path) -> Path:
    m = onnx.ModelProto()
    m.ir_version = 8
    m.producer_name = "nothing here"
    return _save(m, folder)


def _truncated(folder: Path) -> Path:
    data = DIGITS.read_bytes()
    return _bytes(data[: len(data) // 3])(folder)


def _directory(folder: Path) -> Path:
    p = folder / "model.onnx"
    p.mkdir()
    return p


def _missing(folder: Path) -> Path:
    return folder / "does-not-exist.onnx"


_RANDOM = np.random.default_rng(7).integers(0, 256, 8192, dtype=np.uint8).tobytes()

MODEL_CASES: list[Case] = [
    Case("empty file", "model", "error", _bytes(b"")),
    Case("truncated", "model", "error", _truncated),
    Case("random bytes", "model", "error", _bytes(_RANDOM)),
    Case("text file", "model", "error", _bytes(b"version: 1\ndefaults: {}\n")),
    Case("protobuf without graph", "model", "error", _proto_without_graph),
    Case("missing file", "model", "error", _missing),
    Case("a directory", "model", "error", _directory),
    Case("missing initializer", "model", "error", _missing_initializer),
    Case("cycle", "model", "error", _cycle),
    Case("huge initializer dims", "model", "error", _huge_initializer_dims),
    Case("negative initializer dim", "model", "error", _negative_dim),
    Case("short float_data", "model", "error", _short_float_data),
    Case("no standard opset", "model", "error", _no_standard_opset),
    Case("external ../../etc/passwd", "model", "error", _external("../../etc/passwd")),
    Case("external absolute path", "model", "error", _external("/etc/passwd")),
    Case(
        "external sibling folder", "model", "error", _external("../x-secret.bin", make_target=_outside_secret)
    ),
    Case("external symlink escape", "model", "error", _external("weights.bin", make_target=_symlink_escape)),
    Case("external file missing", "model", "error", _external("weights.bin")),
    Case(
        "external data too short",
        "model",
        "error",
        _external("weights.bin", length=64, make_target=lambda f: (f / "weights.bin").write_bytes(b"\0" * 8)),
    ),
    Case("zero-sized dim", "model", "odd", _zero_dim),
    Case("huge declared input dim", "model", "odd", _huge_declared_input),
    Case("unknown op", "model", "odd", _unknown_op),
    Case("unknown domain", "model", "odd", _unknown_domain),
    Case("future opset 99", "model", "odd", _future_opset),
    Case("non-UTF-8 names", "model", "error", _non_utf8_names),  # protobuf rejects them on parse
    Case("opset 11", "model", "odd", _opset(11)),
    Case("opset 21", "model", "odd", _opset(21)),
    Case("Constant-node weights", "model", "odd", _constant_weights),
    Case("If with LSTM inside", "model", "odd", _if_with_lstm),
    Case("Loop with LSTM inside", "model", "odd", _loop_with_lstm),
    Case("wrong declared output shape", "model", "odd", _wrong_output_shape),
    Case("duplicate node names", "model", "odd", _duplicate_names),
]


# ---------------------------------------------------------------------------- PyTorch files


class WritesMarker:
    """Unpickling this object writes a marker file: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pickle code ran"))


def marker_path(folder: Path) -> Path:
    return folder / MARKER_NAME


def _evil_plain_pickle(folder: Path) -> Path:
    p = folder / "evil.pt"
    p.write_bytes(pickle.dumps({"state_dict": WritesMarker(marker_path(folder))}, protocol=2))
    return p


def _evil_torch_save(name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        import torch

        p = folder / name
        torch.save({"model": WritesMarker(marker_path(folder)), "epoch": 3}, p)
        return p

    return build


def _state_dict(mutate: Callable[[dict], dict]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        import torch

        from studio.demos.digits import build_model

        sd = mutate(dict(build_model().state_dict()))
        p = folder / "weights.pt"
        torch.save(sd, p)
        return p

    return build


def _rename_keys(sd: dict) -> dict:
    return {f"backbone.{k}.renamed": v for k, v in sd.items()}


def _wrong_shapes(sd: dict) -> dict:
    import torch

    return {k: torch.zeros(*[d + 1 for d in v.shape]) if v.ndim else v for k, v in sd.items()}


def _torch_list(folder: Path) -> Path:
    import torch

    p = folder / "numbers.pt"
    torch.save([1, 2, 3], p)
    return p


def _zip_without_data(folder: Path) -> Path:
    p = folder / "archive.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/readme.txt", "not a checkpoint")
    return p


def _truncated_torch(folder: Path) -> Path:
    import torch

    from studio.demos.digits import build_model

    p = folder / "cut.pt"
    torch.save(build_model().state_dict(), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


DIGITS_FACTORY = "studio.demos.digits:build_model"
TORCH_CASES: list[Case] = [
    Case("pickle __reduce__ (plain pickle)", "torch", "error", _evil_plain_pickle, True),
    Case("pickle __reduce__ (torch.save zip)", "torch", "error", _evil_torch_save("evil.pt"), True),
    Case(
        "pickle __reduce__ with --factory",
        "torch",
        "error",
        _evil_torch_save("evil.pth"),
        True,
        DIGITS_FACTORY,
    ),
    Case("state_dict wrong keys", "torch", "error", _state_dict(_rename_keys), True, DIGITS_FACTORY),
    Case("state_dict wrong shapes", "torch", "error", _state_dict(_wrong_shapes), True, DIGITS_FACTORY),
    Case("state_dict without factory", "torch", "error", _state_dict(lambda sd: sd), True),
    Case("torch.save of a list", "torch", "error", _torch_list, True),
    Case("zip without data.pkl", "torch", "error", _zip_without_data, True),
    Case("truncated checkpoint", "torch", "error", _truncated_torch, True, DIGITS_FACTORY),
    Case("random bytes .pt", "torch", "error", _bytes(_RANDOM, "random.pt"), True),
    Case("bad factory", "torch", "error", _state_dict(lambda sd: sd), True, "studio.demos.digits:no_such_fn"),
]


# ---------------------------------------------------------------------------- datasets (digits)


def _npz(**arrays) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        p = folder / "data.npz"
        np.savez(p, **{k: (v() if callable(v) else v) for k, v in arrays.items()})
        return p

    return build


def _x(n=8, shape=(1, 8, 8), dtype=np.float32, fill=None):
    a = np.random.default_rng(0).random((n, *shape)).astype(dtype)
    if fill is not None:
        a.flat[:: max(a.size // 5, 1)] = fill
    return a


def _npz_object(folder: Path) -> Path:
    p = folder / "data.npz"
    np.savez(p, input=np.array([{"a": 1}, None], dtype=object))
    return p


def _npy(folder: Path) -> Path:
    p = folder / "data.npz"
    with open(p, "wb") as f:
        np.save(f, _x())
    return p


_labels8 = np.arange(8) % 10

DATASET_CASES: list[Case] = [
    Case("wrong key", "dataset", "error", _npz(image=_x(), labels=_labels8)),
    Case("wrong spatial shape", "dataset", "error", _npz(input=_x(shape=(1, 7, 7)), labels=_labels8)),
    Case("wrong rank", "dataset", "error", _npz(input=_x(shape=(64,)), labels=_labels8)),
    Case("string dtype", "dataset", "error", _npz(input=np.full((8, 1, 8, 8), "a"), labels=_labels8)),
    Case("complex dtype", "dataset", "error", _npz(input=_x().astype(np.complex64), labels=_labels8)),
    Case("NaN values", "dataset", "error", _npz(input=_x(fill=np.nan), labels=_labels8)),
    Case("inf values", "dataset", "error", _npz(input=_x(fill=np.inf), labels=_labels8)),
    Case("empty arrays", "dataset", "error", _npz(input=_x(n=0), labels=np.zeros(0, np.int64))),
    Case("no arrays", "dataset", "error", _npz()),
    Case("0-d array", "dataset", "error", _npz(input=np.float32(1.0))),
    Case("labels length mismatch", "dataset", "error", _npz(input=_x(), labels=np.arange(3))),
    Case("string labels", "dataset", "error", _npz(input=_x(), labels=np.array(["cat"] * 8))),
    Case("2-D labels", "dataset", "error", _npz(input=_x(), labels=np.zeros((8, 2), np.int64))),
    Case("sample counts differ", "dataset", "error", _npz(input=_x(), extra=_x(n=3))),
    Case("object array (pickle)", "dataset", "error", _npz_object),
    Case("not an npz (text)", "dataset", "error", _bytes(b"input,label\n1,2\n", "data.npz")),
    Case("not an npz (random)", "dataset", "error", _bytes(_RANDOM, "data.npz")),
    Case("an .npy, not an .npz", "dataset", "error", _npy),
]


# ---------------------------------------------------------------------------- recipes (digits)


def _text(text: str | bytes, name: str = "recipe.yaml") -> Callable[[Path], Path]:
    return _bytes(text.encode() if isinstance(text, str) else text, name)


def _alias_bomb(levels: int) -> str:
    """Shared YAML lists nested `levels` deep inside step params: tiny file, 9^levels values."""
    lines = ["defaults:", "  quantize:", "    technique: int8_dynamic", "    params:"]
    lines.append("      l0: &l0 [x, x, x, x, x, x, x, x, x]")
    for i in range(1, levels):
        lines.append(f"      l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


FC1 = "/fc1/Gemm"
CONV1 = "/conv1/conv1.0/Conv"

RECIPE_CASES: list[Case] = [
    Case(
        "unknown layer",
        "recipe",
        "error",
        _text("layers:\n  /nope/Gemm: {prune: {channels: {ratio: 0.5}}}\n"),
    ),
    Case("unknown technique", "recipe", "error", _text("defaults:\n  quantize: int3_magic\n")),
    Case(
        "ratio > 1", "recipe", "error", _text(f"layers:\n  {FC1}: {{prune: {{channels: {{ratio: 1.5}}}}}}\n")
    ),
    Case("ratio 0", "recipe", "error", _text("defaults:\n  prune: {magnitude: {ratio: 0}}\n")),
    Case("ratio negative", "recipe", "error", _text("defaults:\n  prune: {magnitude: {ratio: -0.2}}\n")),
    Case("ratio not a number", "recipe", "error", _text("defaults:\n  prune: {magnitude: {ratio: lots}}\n")),
    Case("int8 bits 3", "recipe", "error", _text("defaults:\n  quantize: {int8_static: {bits: 3}}\n")),
    Case("kmeans bits 16", "recipe", "error", _text("defaults:\n  encode: {kmeans: {bits: 16}}\n")),
    Case(
        "svd rank_ratio 5",
        "recipe",
        "error",
        _text(f"layers:\n  {FC1}: {{decompose: {{svd: {{rank_ratio: 5}}}}}}\n"),
    ),
    Case("unknown param", "recipe", "error", _text("defaults:\n  quantize: {int8_dynamic: {turbo: true}}\n")),
    Case("newer version", "recipe", "error", _text("version: 99\ndefaults: {quantize: int8_dynamic}\n")),
    Case("version wrong type", "recipe", "error", _text("version: [1]\n")),
    Case("layers is a list", "recipe", "error", _text("layers:\n  - /fc1/Gemm\n")),
    Case(
        "params is a string",
        "recipe",
        "error",
        _text("defaults:\n  prune: {technique: magnitude, params: half}\n"),
    ),
    Case("wrong stage", "recipe", "error", _text("defaults:\n  quantize: svd\n")),
    Case(
        "technique refuses the named layer",
        "recipe",
        "error",
        _text(f"layers:\n  '{CONV1}': {{decompose: svd}}\n"),
    ),
    Case("unknown stage", "recipe", "error", _text("defaults:\n  sparsify: magnitude\n")),
    Case("unknown top-level key", "recipe", "error", _text("defaults: {}\nlayerz: {}\n")),
    Case("top-level list", "recipe", "error", _text("- quantize\n- prune\n")),
    Case("empty file", "recipe", "error", _text("")),
    Case("garbage YAML", "recipe", "error", _text("defaults: {{{[[[ :: -\n\t- ]")),
    Case("binary garbage", "recipe", "error", _text(_RANDOM[:512])),
    Case("garbage TOML", "recipe", "error", _text("[defaults\nquantize = = 3", "recipe.toml")),
    Case("calibration n_samples 0", "recipe", "error", _text("calibration: {n_samples: 0}\n")),
    Case("YAML alias bomb (9^10 values)", "recipe", "error", _text(_alias_bomb(10))),
]

ALL_CASES = MODEL_CASES + TORCH_CASES + DATASET_CASES + RECIPE_CASES


def build_case(case: Case, folder: Path) -> Path:
    """Write `case` into a fresh sub-folder of `folder` (the model's own folder) and return it."""
    sub = folder / "case"
    sub.mkdir(parents=True, exist_ok=True)
    return case.build(sub)


# ---------------------------------------------------------------------------- harness


def declared_dataset(proto: onnx.ModelProto, n: int = 2):
    """Random inputs shaped after the graph's declarations (symbolic or absurd dims -> small)."""
    from studio.core.evaluate import Dataset

    inits = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(0)
    inputs = {}
    for vi in proto.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value <= 4096 else n for d in tt.shape.dim]
        inputs[vi.name] = rng.random(dims).astype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return Dataset(inputs, None, "declared shapes")


def exercise_model(path: Path, *, factory: str | None = None) -> list[str]:
    """load -> analyze -> evaluate -> compress (int8 dynamic); returns the steps that passed.
    Any exception escapes to the caller, which checks its type."""
    from studio.core.evaluate import evaluate
    from studio.core.graph import analyze
    from studio.core.jobs import drive
    from studio.core.model import load_model
    from studio.core.pipeline import compress
    from studio.core.recipe import Recipe

    done = []
    h = load_model(path, factory=factory)
    done.append("load")
    analyze(h.proto)
    done.append("analyze")
    evaluate(h.proto, declared_dataset(h.proto), reference=h.proto)
    done.append("evaluate")
    drive(compress(h, Recipe.loads("defaults: {quantize: int8_dynamic}")))
    done.append("compress")
    return done


def cli(args: list[str], cwd: Path, timeout: float = 240):
    """Run `studio ARGS` in a fresh interpreter (the real entry point, no shared state)."""
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONWARNINGS"] = "ignore"  # library deprecation chatter is not what we check here
    return subprocess.run(
        [sys.executable, "-m", "studio.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang fails the test instead of blocking the suite
        env=env,
    )


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_refused_cleanly(proc, workdir: Path, before: set[str]) -> str:
    """Exit 2, exactly one line on stderr, no traceback, nothing new in the working folder."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (
        f"exit {proc.returncode}\nstdout: {proc.stdout[-500:]}\nstderr: {proc.stderr[-2000:]}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr[-2000:]}"
    assert lines[0].startswith("error: "), lines[0]
    assert files_under(workdir) == before, f"files written: {files_under(workdir) - before}"
    return lines[0]
