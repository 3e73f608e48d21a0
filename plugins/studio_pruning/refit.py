"""Data-aware refit of a pruned layer's consumer (least squares on calibration activations).

After input channels of a consumer are removed, its weights are re-solved so that
``X_kept @ W_new + b_new ≈ X_all @ W_old + b_old`` on calibration data (ridge-regularised toward
the plainly sliced weights, so few samples cannot pull the solution far from it). ``X_all`` comes
from the model as it was when the stage started; ``X_kept`` from the model as pruned so far, so
errors of earlier groups are compensated too. Conv consumers are solved on im2col patches of a
sample of output positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from studio.core.evaluate import Dataset, check_dataset, make_session
from studio.core.onnx_utils import GraphIndex, get_attr, set_attr, tensor_array

MAX_ROWS = 16384  # rows of the least-squares system (samples x positions or tokens)
RIDGE = 1e-1  # relative to the mean feature energy
BIAS_RIDGE = 1e-3  # relative to RIDGE
# Output columns whose energy is this many times the median are "massive activations" (attention
# sinks in transformers, present on a few tokens only): a linear refit smears them over every
# token and wrecks later layers (MiniLM: cosine 0.98 -> 0.72), so they keep the sliced weights.
MASSIVE_RATIO = 100.0


def capture(
    model: onnx.ModelProto, names: list[str], inputs: dict[str, np.ndarray], *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Run ``model`` with ORT and return the intermediate tensors ``names`` over ``inputs``."""
    m = _upstream(model, names)
    elem = {
        vi.name: vi.type.tensor_type.elem_type for vi in m.graph.value_info if vi.type.HasField("tensor_type")
    }
    # Stale intermediate shapes (from before pruning) would make ORT reject the graph.
    del m.graph.value_info[:]
    # Only the captured tensors are outputs, so ORT drops the layers after them.
    del m.graph.output[:]
    for name in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem.get(name, 1), None))
    sess = make_session(m)
    ds = Dataset(dict(inputs), source="calibration")
    check_dataset(ds, sess)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in ds.batches(batch_size):
        for n, r in zip(names, sess.run(names, feed)):
            parts[n].append(np.asarray(r, dtype=np.float32))
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}


def _upstream(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy holding only the nodes and initializers ``names`` depend on (less to serialise)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    need, stack, keep_nodes = set(), list(names), set()
    while stack:
        v = stack.pop()
        if v in need:
            continue
        need.add(v)
        p = producer.get(v)
        if p is not None and id(p) not in keep_nodes:
            keep_nodes.add(id(p))
            stack.extend(i for i in p.input if i)
            for a in p.attribute:  # subgraphs may read outer values
                for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    stack.extend(i for sn in sg.node for i in sn.input if i)
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.graph.name = model.graph.name
    m.graph.node.extend(n for n in model.graph.node if id(n) in keep_nodes)
    m.graph.initializer.extend(t for t in model.graph.initializer if t.name in need)
    inits = {t.name for t in model.graph.initializer}
    # Every real model input stays (the feed names them all); initializer-inputs only when used.
    m.graph.input.extend(i for i in model.graph.input if i.name not in inits or i.name in need)
    m.functions.extend(model.functions)
    m.graph.value_info.extend(model.graph.value_info)
    return m


@dataclass
class RefitResult:
    weight: np.ndarray  # in the consumer's own weight layout
    bias: np.ndarray | None
    bias_target: tuple[str, int] | None  # (node, input index) the bias belongs to
    err_before: float  # relative error of plain slicing on the calibration rows
    err_after: float
    rows: int


def ridge(
    xk: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray | None, reg: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """argmin ||X W + b - Y||² + λ||W - W0||² (bias nearly free); X [S,d], Y [S,m], W0 [d,m]."""
    reg = RIDGE if reg is None else reg
    x = xk.astype(np.float64)
    d = x.shape[1]
    w_init = w0.astype(np.float64)
    if b0 is not None:
        x = np.hstack([x, np.ones((len(x), 1))])
        w_init = np.vstack([w_init, b0.astype(np.float64)[None, :]])
    gram = x.T @ x
    lam = reg * float(np.trace(gram[:d, :d])) / max(d, 1) + 1e-12
    diag = np.full(x.shape[1], lam)
    if b0 is not None:
        diag[-1] = lam * BIAS_RIDGE
    sol = np.linalg.solve(gram + np.diag(diag), x.T @ y.astype(np.float64) + diag[:, None] * w_init)
    energy = (y.astype(np.float64) ** 2).mean(0)
    massive = energy > MASSIVE_RATIO * max(float(np.median(energy)), 1e-30)
    sol[:, massive] = w_init[:, massive]
    if b0 is not None:
        return sol[:-1], sol[-1]
    return sol, None


def _rel_err(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(pred - y) / max(np.linalg.norm(y), 1e-30))


def _rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, MAX_ROWS, replace=False)) if n > MAX_ROWS else np.arange(n)


def refit_linear(
    model: onnx.ModelProto,
    node_name: str,
    x_orig: np.ndarray,
    x_cur: np.ndarray,
    feat: np.ndarray,
    seed: int = 0,
) -> RefitResult:
    """Gemm / MatMul consumer: re-solve its weight (and bias) over the kept input features."""
    nodes = {n.name: n for n in model.graph.node}
    idx = GraphIndex(model)
    n = nodes[node_name]
    w = tensor_array(idx.inits[n.input[1]]).astype(np.float64)
    trans = n.op_type == "Gemm" and bool(get_attr(n, "transB", 0))
    w_kn = w.T if trans else w  # [K, N]
    k = w_kn.shape[0]
    xo = x_orig.reshape(-1, k)
    xc = x_cur.reshape(-1, x_cur.shape[-1])
    bias, target = _linear_bias(idx, n, w_kn.shape[1])
    rows = _rows(len(xo), np.random.default_rng(seed))
    xo, xc = xo[rows].astype(np.float64), xc[rows].astype(np.float64)
    if n.op_type == "Gemm":
        alpha, beta = get_attr(n, "alpha", 1.0), get_attr(n, "beta", 1.0)
        if alpha != 1.0 or beta != 1.0:
            w_kn = w_kn * alpha  # fold alpha; beta handled by refusing a bias refit
            if beta != 1.0:
                bias, target = None, None
    b0 = bias if bias is not None else np.zeros(w_kn.shape[1])
    y = xo @ w_kn + b0
    xk = xc[:, feat]
    w0 = w_kn[feat]
    before = _rel_err(xk @ w0 + b0, y)
    new_w, new_b = ridge(xk, y, w0, bias if target is not None else None)
    pred = xk @ new_w + (new_b if new_b is not None else b0)
    after = _rel_err(pred, y)
    if n.op_type == "Gemm":
        alpha = get_attr(n, "alpha", 1.0)
        new_w = new_w / alpha
    out_w = (new_w.T if trans else new_w).astype(w.dtype if w.dtype != np.float64 else np.float32)
    out_b = None if new_b is None else new_b.astype(out_w.dtype)
    return RefitResult(out_w, out_b, target if new_b is not None else None, before, after, len(rows))


def _linear_bias(idx: GraphIndex, n: onnx.NodeProto, n_out: int) -> tuple[np.ndarray | None, tuple | None]:
    """The consumer's bias and where it lives: Gemm input C, or the Add right after a MatMul."""
    if n.op_type == "Gemm":
        if len(n.input) > 2 and n.input[2] in idx.inits:
            b = tensor_array(idx.inits[n.input[2]]).astype(np.float64)
            if b.size == n_out:
                return b.reshape(n_out), (n.name, 2)
        return None, None
    cons = idx.consumers.get(n.output[0], [])
    if len(cons) == 1 and cons[0].op_type == "Add" and n.output[0] not in idx.graph_outputs:
        add = cons[0]
        for i, name in enumerate(add.input):
            if name in idx.inits and list(idx.inits[name].dims) in ([n_out], [1, n_out]):
                b = tensor_array(idx.inits[name]).astype(np.float64).reshape(n_out)
                return b, (add.name, i)
    return None, None


def conv_positions(shape: tuple[int, ...], n: onnx.NodeProto, seed: int) -> tuple | None:
    """Sampled (sample, out_y, out_x) positions of a 2-D conv, or None if unsupported."""
    if len(shape) != 4 or get_attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kh, kw = get_attr(n, "kernel_shape")
    pads = get_attr(n, "pads", [0, 0, 0, 0])
    strides = get_attr(n, "strides", [1, 1])
    dil = get_attr(n, "dilations", [1, 1])
    nb, _, h, w = shape
    ho = (h + pads[0] + pads[2] - ((kh - 1) * dil[0] + 1)) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - ((kw - 1) * dil[1] + 1)) // strides[1] + 1
    rows = _rows(nb * ho * wo, np.random.default_rng(seed))
    return np.unravel_index(rows, (nb, ho, wo))


def patches(x: np.ndarray, n: onnx.NodeProto, pos: tuple) -> np.ndarray:
    """im2col of a 2-D conv input at output positions ``pos``: [S, C, kh, kw]."""
    kh, kw = get_attr(n, "kernel_shape")
    pads = get_attr(n, "pads", [0, 0, 0, 0])
    sh, sw = get_attr(n, "strides", [1, 1])
    dh, dw = get_attr(n, "dilations", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    s, i, j = pos
    return win[s, :, i, j]


def refit_conv(
    model: onnx.ModelProto,
    node_name: str,
    x_orig: np.ndarray,
    x_cur: np.ndarray,
    keep: np.ndarray,
    seed: int = 0,
) -> RefitResult | None:
    """Conv consumer (group 1, 2-D, explicit pads): least squares on sampled im2col patches."""
    nodes = {n.name: n for n in model.graph.node}
    idx = GraphIndex(model)
    n = nodes[node_name]
    if (get_attr(n, "group", 1) or 1) != 1:
        return None
    w = tensor_array(idx.inits[n.input[1]]).astype(np.float64)  # [Co, Ci, kh, kw]
    if w.ndim != 4:
        return None
    if get_attr(n, "kernel_shape") is None:  # implied by the weight; made explicit for im2col
        set_attr(n, "kernel_shape", list(w.shape[2:]))
    pos = conv_positions(x_orig.shape, n, seed)
    if pos is None:
        return None
    co = w.shape[0]
    b0 = None
    if len(n.input) > 2 and n.input[2] in idx.inits:
        b0 = tensor_array(idx.inits[n.input[2]]).astype(np.float64)
    po = patches(x_orig, n, pos).astype(np.float64)  # [S, Ci, kh, kw]
    pc = patches(x_cur, n, pos)[:, keep].astype(np.float64)
    bias0 = b0 if b0 is not None else np.zeros(co)
    y = po.reshape(len(po), -1) @ w.reshape(co, -1).T + bias0
    xk = pc.reshape(len(pc), -1)
    w0 = w[:, keep].reshape(co, -1).T
    before = _rel_err(xk @ w0 + bias0, y)
    new_w, new_b = ridge(xk, y, w0, bias0)
    after = _rel_err(xk @ new_w + new_b, y)
    out_w = new_w.T.reshape(co, len(keep), *w.shape[2:]).astype(np.float32)
    return RefitResult(out_w, new_b.astype(np.float32), (n.name, 2), before, after, len(po))
