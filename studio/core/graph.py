"""Layer analysis: every weighted node with shapes, params, MACs, bytes, dtype and weight stats.

MACs are per sample: symbolic dims other than the batch (e.g. sequence length) count as 1, so a
transformer's MACs are per token. Sizes are exact initializer bytes; totals = layers + others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from studio.core.onnx_utils import GraphIndex, dtype_name, get_attr, tensor_array, tensor_nbytes

WEIGHTED_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", "LSTM", "GRU", "RNN",
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits", "FusedMatMul",
}  # fmt: skip
HIST_BINS = 64


@dataclass
class WeightStats:
    min: float
    max: float
    mean: float
    std: float
    sparsity: float  # fraction of exact zeros
    hist_counts: list[int]
    hist_edges: list[float]


@dataclass
class LayerInfo:
    name: str  # node name: the layer's identity in recipes
    op_type: str
    weight_name: str
    weight_shape: list[int]
    input_shapes: list[list | None]
    output_shapes: list[list | None]
    params: int  # elements of the weight (+ bias) initializers owned by this layer
    macs: int  # per sample
    weight_bytes: int  # bytes of the initializers owned by this layer
    dtype: str
    bias_name: str | None = None
    group: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)
    stats: WeightStats | None = None
    owned_initializers: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """Coarse family for the GUI: conv / linear / embedding / recurrent / quantized."""
        return {
            "Conv": "conv", "ConvTranspose": "conv", "QLinearConv": "conv", "ConvInteger": "conv",
            "Gemm": "linear", "MatMul": "linear", "QLinearMatMul": "linear", "MatMulInteger": "linear",
            "MatMulNBits": "linear", "FusedMatMul": "linear", "Gather": "embedding",
        }.get(self.op_type, "recurrent")  # fmt: skip


@dataclass
class ModelAnalysis:
    layers: list[LayerInfo]
    total_params: int
    total_weight_bytes: int  # every initializer
    layer_weight_bytes: int
    other_initializer_bytes: int
    total_macs: int
    opsets: dict[str, int]
    op_counts: dict[str, int]
    inputs: list[tuple[str, list | None, str]]
    outputs: list[tuple[str, list | None, str]]
    file_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, LayerInfo]:
        return {la.name: la for la in self.layers}

    def groups(self) -> dict[tuple[str, ...], list[LayerInfo]]:
        """Layers keyed by every prefix of their name hierarchy (for folding big graphs)."""
        out: dict[tuple[str, ...], list[LayerInfo]] = {}
        for la in self.layers:
            for k in range(len(la.group) + 1):
                out.setdefault(la.group[:k], []).append(la)
        return out


def group_of(node_name: str) -> tuple[str, ...]:
    """`/encoder/layer.0/attention/self/query/MatMul` -> ('encoder', 'layer.0', 'attention', 'self', 'query')."""
    parts = [p for p in node_name.replace("::", "/").split("/") if p]
    return tuple(parts[:-1])


def _per_sample(shape: list | None) -> int:
    """Elements per sample: drop the batch dim, count symbolic dims as 1."""
    if not shape:
        return 1
    dims = shape[1:] if len(shape) > 1 else shape
    n = 1
    for d in dims:
        n *= d if isinstance(d, int) and d > 0 else 1
    return n


def _weight_input(node: onnx.NodeProto, idx: GraphIndex) -> tuple[str | None, str | None]:
    """(weight initializer, bias initializer) of a weighted node, or (None, None)."""
    op = node.op_type

    def src(value):
        return idx.const_source(value) or _codebook_indices(value, idx)

    def at(i):
        return src(node.input[i]) if len(node.input) > i and node.input[i] else None

    if op in ("Conv", "ConvTranspose", "Gemm"):
        w = at(1)
        if w is None and op == "Gemm":
            w = at(0)
        return w, at(2)
    if op in ("MatMul", "FusedMatMul"):
        w = at(1) or at(0)
        return w, None
    if op == "Gather":
        return at(0), None
    if op in ("LSTM", "GRU", "RNN"):
        return at(1), at(3)  # W (R is added as owned too)
    if op == "QLinearConv":
        return at(3), at(8)
    if op == "QLinearMatMul":
        return at(3) or at(0), None
    if op in ("ConvInteger", "MatMulInteger"):
        return at(1), None
    if op == "MatMulNBits":
        return at(1), at(5) if len(node.input) > 5 else None
    return None, None


def _codebook_indices(value: str, idx: GraphIndex) -> str | None:
    """Indices initializer of a weight stored as Gather(codebook, Cast(indices)) (k-means
    sharing): it has the weight's shape, so the layer keeps its identity after encoding."""
    p = idx.producer.get(value)
    if p is None or p.op_type != "Gather" or len(p.input) < 2 or p.input[0] not in idx.inits:
        return None
    if len(idx.inits[p.input[0]].dims) != 1:
        return None  # a real table lookup (embeddings), not a codebook
    return idx.const_source(p.input[1])


def _decoded_weight(node: onnx.NodeProto, idx: GraphIndex, w: str) -> np.ndarray:
    """The weight values (codebook entries looked up for k-means encoded weights)."""
    arr = tensor_array(idx.inits[w])
    for i in node.input:
        p = idx.producer.get(i)
        if p is not None and p.op_type == "Gather" and _codebook_indices(i, idx) == w:
            return tensor_array(idx.inits[p.input[0]])[np.asarray(arr).astype(np.int64)]
    return arr


STATS_CHUNK = 1 << 20  # elements per pass: big weights are summarised without full-size temporaries


def weight_stats(arr: np.ndarray) -> WeightStats:
    """min / max / mean / std / exact-zero fraction / 64-bin histogram of the finite values,
    computed chunk by chunk so a 1 GB weight needs no second 1 GB of temporaries."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        a = a.astype(np.float32)
    if a.size == 0:
        return WeightStats(0, 0, 0, 0, 0, [], [])
    flat = a.reshape(-1)
    chunks = range(0, flat.size, STATS_CHUNK)
    lo, hi, total, zeros, n = np.inf, -np.inf, 0.0, 0, 0
    for s in chunks:
        c = flat[s : s + STATS_CHUNK].astype(np.float64)
        zeros += int(np.count_nonzero(c == 0))
        c = c[np.isfinite(c)] if a.dtype.kind == "f" else c
        if c.size:
            lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
            total += float(c.sum())
            n += c.size
    if n == 0:  # nothing finite (all NaN / inf)
        return WeightStats(float("nan"), float("nan"), float("nan"), float("nan"), zeros / flat.size, [], [])
    mean = total / n
    sq = 0.0
    counts = np.zeros(HIST_BINS, dtype=np.int64)
    edges = None
    for s in chunks:
        c = flat[s : s + STATS_CHUNK].astype(np.float64)
        c = c[np.isfinite(c)] if a.dtype.kind == "f" else c
        sq += float(((c - mean) ** 2).sum())
        h, edges = np.histogram(c, bins=HIST_BINS, range=(lo, hi))
        counts += h
    return WeightStats(
        min=lo,
        max=hi,
        mean=mean,
        std=float(np.sqrt(sq / n)),
        sparsity=zeros / flat.size,
        hist_counts=counts.tolist(),
        hist_edges=edges.tolist(),
    )


def analyze(
    model: onnx.ModelProto, *, file_bytes: int | None = None, with_stats: bool = True
) -> ModelAnalysis:
    idx = GraphIndex(model)
    g = model.graph
    layers: list[LayerInfo] = []
    owned: set[str] = set()
    for node in g.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        w, b = _weight_input(node, idx)
        if w is None:
            continue  # MatMul between activations (attention scores) carries no weight
        if node.op_type == "Gather" and len(idx.inits[w].dims) < 2:
            continue  # index lookups into shape tensors, not embeddings
        names = [w] + ([b] if b else [])
        if node.op_type in ("LSTM", "GRU", "RNN") and len(node.input) > 2 and idx.const_source(node.input[2]):
            names.append(idx.const_source(node.input[2]))
        # Quantized weights: scales / zero points / codebooks belong to the layer too.
        for i in node.input:
            s = idx.const_source(i) if i else None
            if (
                s
                and s not in names
                and node.op_type.startswith(("QLinear", "MatMulNBits", "ConvInteger", "MatMulInteger"))
            ):
                names.append(s)
        for i in node.input:
            p = idx.producer.get(i)
            if p is not None and p.op_type in ("DequantizeLinear", "Gather"):
                for j in p.input[1:] if p.op_type == "DequantizeLinear" else p.input:
                    if j in idx.inits and j not in names and idx.inits[j].data_type != onnx.TensorProto.INT64:
                        names.append(j)
        mine = [n for n in names if n not in owned]
        owned.update(mine)
        wt = idx.inits[w]
        params = sum(
            int(np.prod(idx.inits[n].dims))
            for n in mine
            if n in (w, b) or node.op_type in ("LSTM", "GRU", "RNN")
        )
        if node.op_type == "MatMulNBits":  # packed blocks: count the logical K x N weights
            params = get_attr(node, "K", 0) * get_attr(node, "N", 0) + (
                int(np.prod(idx.inits[b].dims)) if b and b in mine else 0
            )
        nbytes = sum(tensor_nbytes(idx.inits[n]) for n in mine)
        in_shapes = [idx.shape(i) if i else None for i in node.input]
        out_shapes = [idx.shape(o) for o in node.output]
        info = LayerInfo(
            name=node.name,
            op_type=node.op_type,
            weight_name=w,
            weight_shape=list(wt.dims),
            input_shapes=in_shapes,
            output_shapes=out_shapes,
            params=params,
            macs=_macs(node, idx, list(wt.dims), out_shapes),
            weight_bytes=nbytes,
            dtype=f"int{get_attr(node, 'bits', 4)}"
            if node.op_type == "MatMulNBits"
            else dtype_name(wt.data_type),
            bias_name=b,
            group=group_of(node.name),
            attrs={
                a.name: onnx.helper.get_attribute_value(a)
                for a in node.attribute
                if a.type != onnx.AttributeProto.GRAPH and a.type != onnx.AttributeProto.TENSOR
            },
            owned_initializers=mine,
        )
        if with_stats:
            info.stats = weight_stats(_decoded_weight(node, idx, w))
        layers.append(info)
    total_bytes = sum(tensor_nbytes(t) for t in g.initializer)
    layer_bytes = sum(la.weight_bytes for la in layers)
    total_params = sum(int(np.prod(t.dims)) for t in g.initializer if t.data_type != onnx.TensorProto.INT64)
    op_counts: dict[str, int] = {}
    for n in g.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    inits = {t.name for t in g.initializer}

    def io(vis):
        return [
            (v.name, idx.shape(v.name), dtype_name(v.type.tensor_type.elem_type))
            for v in vis
            if v.name not in inits
        ]

    return ModelAnalysis(
        layers=layers,
        total_params=total_params,
        total_weight_bytes=total_bytes,
        layer_weight_bytes=layer_bytes,
        other_initializer_bytes=total_bytes - layer_bytes,
        total_macs=sum(la.macs for la in layers),
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        op_counts=op_counts,
        inputs=io(g.input),
        outputs=io(g.output),
        file_bytes=file_bytes,
    )


def _macs(node: onnx.NodeProto, idx: GraphIndex, wshape: list[int], out_shapes: list) -> int:
    op = node.op_type
    out = out_shapes[0] if out_shapes else None
    if op in ("Conv", "QLinearConv", "ConvInteger"):
        # out elements per sample x (Cin/group * kh * kw)
        k = int(np.prod(wshape[1:])) if len(wshape) > 1 else 1
        return _per_sample(out) * k
    if op == "ConvTranspose":
        inp = idx.shape(node.input[0])
        return _per_sample(inp) * int(np.prod(wshape[1:])) * (get_attr(node, "group", 1) or 1)
    if op in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "FusedMatMul"):
        if len(wshape) < 2:
            return 0
        k, n = wshape[-2], wshape[-1]
        if op == "Gemm" and get_attr(node, "transB", 0):
            k, n = n, k
        rows = _per_sample(out) // max(n, 1) if out else 1
        return max(rows, 1) * k * n
    if op == "MatMulNBits":
        k, n = get_attr(node, "K", 0), get_attr(node, "N", 0)
        rows = _per_sample(out) // max(n, 1) if out else 1
        return max(rows, 1) * k * n
    if op in ("LSTM", "GRU", "RNN"):
        # per time step: dirs * gates*H * (I + H)
        dirs, gh, i = wshape if len(wshape) == 3 else (1, 0, 0)
        h = get_attr(node, "hidden_size", 0) or 0
        return dirs * gh * (i + h)
    return 0
