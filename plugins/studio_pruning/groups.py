"""Coupled channels for structured pruning: Torch-Pruning's dependency graph, for ONNX.

Removing output channel ``c`` of a layer (the *root*) removes ``c`` from every tensor its output
flows into through channel-wise ops (bias Add, BatchNormalization, activations, pools, depthwise
conv, Flatten) until the channels are consumed by the next weighted layers (Conv input channels,
Gemm / MatMul input features). :func:`find_group` walks that region once and records what has to
be sliced; :func:`prune_group` does the slicing for a chosen set of kept channels.

What is refused (with a reason, see :class:`Refused`): channels that reach a model output, meet
a tensor from outside the group (residual ``Add``, gating ``Mul``), ``Concat`` (channel offsets),
reshapes / transposes / reductions, grouped (non-depthwise) convs, and quantized weights.
Coupled residual groups (all producers into an Add pruned alike) are not handled: prune a layer
inside the residual branch instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from studio.core.onnx_utils import GraphIndex, get_attr, set_attr, tensor_array, unique_name

# Channel-wise ops with one tensor input (extra inputs, e.g. Clip's min/max, must be constants).
UNARY_OPS = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Gelu", "Erf", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Clip", "Identity",
    "Dropout", "Abs", "Neg", "Exp", "Sqrt", "Reciprocal",
}  # fmt: skip
# Element-wise ops whose other operands must be in the group or broadcastable constants.
ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min", "Sum", "Mean"}
POOL_OPS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
ROOT_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


class Refused(Exception):
    """The layer's output channels cannot be pruned; ``reason`` says why (shown to the user)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Layout:
    """Where the channels live in a tensor: ``axis`` counted from the end (negative), the
    tensor ``rank`` when known, and ``block`` features per channel (H*W after a Flatten)."""

    axis: int
    rank: int | None
    block: int = 1

    @property
    def is_nchw(self) -> bool:  # channels on dim 1 (Conv / BN / pool layout)
        return self.rank is not None and self.rank >= 3 and self.axis == 1 - self.rank and self.block == 1


@dataclass(frozen=True)
class ConstSlice:
    """A constant input of a node to slice along ``axis`` (negative) with ``block`` per channel."""

    node: str
    input_index: int
    axis: int
    block: int = 1


@dataclass(frozen=True)
class Consumer:
    """A weighted layer whose input channels / features shrink (the group's end)."""

    node: str
    op_type: str
    input_tensor: str  # the tensor it reads: refit captures it
    block: int = 1  # input features per pruned channel


@dataclass
class ChannelGroup:
    """Everything coupled to the output channels of ``root``."""

    root: str
    op_type: str
    channels: int
    weight_axis: int  # axis of the root weight that holds the output channels
    const_slices: list[ConstSlice] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    tensors: dict[str, Layout] = field(default_factory=dict)

    def describe(self) -> str:
        mids = [f"BN {b}" for b in self.batchnorms] + [f"depthwise {d}" for d in self.depthwise]
        ends = ", ".join(c.node for c in self.consumers)
        return (
            f"{self.root} ({self.channels} ch)" + (f" via {', '.join(mids)}" if mids else "") + f" -> {ends}"
        )


# ---------------------------------------------------------------------- analysis


def _const_dims(idx: GraphIndex, name: str) -> list[int] | None:
    """Dims of a constant operand (initializer or Constant node), None for a runtime tensor."""
    if name in idx.inits:
        return list(idx.inits[name].dims)
    p = idx.producer.get(name)
    if p is not None and p.op_type == "Constant":
        v = get_attr(p, "value")
        if isinstance(v, onnx.TensorProto):
            return list(v.dims)
        return []  # value_float / value_int: a scalar
    return None


def _weight_init(idx: GraphIndex, node: onnx.NodeProto, i: int, what: str) -> onnx.TensorProto:
    name = node.input[i] if len(node.input) > i else ""
    t = idx.inits.get(name)
    if t is None:
        if name and idx.const_source(name):
            raise Refused(f"{what} {node.name!r} has quantized weights; prune before quantizing")
        raise Refused(f"{what} {node.name!r} has no constant weight at input {i}")
    if t.data_type not in FLOAT_TYPES:
        raise Refused(f"{what} {node.name!r} has {onnx.TensorProto.DataType.Name(t.data_type)} weights")
    return t


def _root(idx: GraphIndex, node: onnx.NodeProto) -> tuple[ChannelGroup, Layout]:
    op = node.op_type
    if op == "Conv":
        w = _weight_init(idx, node, 1, "Conv")
        if (get_attr(node, "group", 1) or 1) != 1:
            raise Refused(
                "grouped / depthwise conv: its channels follow its input; prune the layer that feeds it"
            )
        g = ChannelGroup(node.name, op, int(w.dims[0]), 0)
        lay = Layout(1 - len(w.dims), len(w.dims))
        if len(node.input) > 2 and node.input[2]:
            g.const_slices.append(ConstSlice(node.name, 2, -1))
        return g, lay
    if op == "Gemm":
        w = _weight_init(idx, node, 1, "Gemm")
        axis = 0 if get_attr(node, "transB", 0) else 1
        g = ChannelGroup(node.name, op, int(w.dims[axis]), axis)
        lay = Layout(-1, 2)
        if len(node.input) > 2 and node.input[2]:
            cs = _broadcast_slice(idx, node, 2, lay, g.channels)
            if cs:
                g.const_slices.append(cs)
        return g, lay
    if op == "MatMul":
        w = _weight_init(idx, node, 1, "MatMul")
        if len(w.dims) != 2:
            raise Refused(f"MatMul {node.name!r} has a {len(w.dims)}-D weight; only 2-D weights are pruned")
        shape = idx.shape(node.output[0])
        return ChannelGroup(node.name, op, int(w.dims[1]), 1), Layout(-1, len(shape) if shape else None)
    raise Refused(f"{op} layers have no prunable output channels")


def _broadcast_slice(
    idx: GraphIndex, node: onnx.NodeProto, i: int, lay: Layout, channels: int
) -> ConstSlice | None:
    """How a constant operand broadcasts over the channel axis: sliced, or None (broadcast)."""
    name = node.input[i]
    dims = _const_dims(idx, name)
    if dims is None:
        raise Refused(f"{node.op_type} {node.name!r} input {name!r} is not a constant")
    n = len(dims)
    if lay.rank is not None and n > lay.rank:
        raise Refused(f"{node.op_type} {node.name!r}: constant {name!r} has a higher rank than its input")
    pos = n + lay.axis
    if pos < 0 or dims[pos] == 1:
        return None
    if dims[pos] != channels * lay.block:
        raise Refused(
            f"{node.op_type} {node.name!r}: constant {name!r} of shape {dims} does not match {channels} channels"
        )
    if name not in idx.inits:
        raise Refused(f"{node.op_type} {node.name!r}: per-channel Constant node {name!r} cannot be sliced")
    return ConstSlice(node.name, i, pos - n, lay.block)


def find_group(idx: GraphIndex, node: onnx.NodeProto) -> ChannelGroup:
    """Walk the channel-coupled region after ``node``; raises :class:`Refused` with a reason."""
    g, lay = _root(idx, node)
    if g.channels < 2:
        raise Refused(f"{node.name!r} has a single output channel")
    g.tensors[node.output[0]] = lay
    queue = [node.output[0]]
    multi_input: list[onnx.NodeProto] = []
    seen: set[str] = set()
    while queue:
        t = queue.pop()
        lay = g.tensors[t]
        if t in idx.graph_outputs:
            raise Refused(
                f"its channels reach the model output {t!r} (pruning would change the output shape)"
            )
        for n in idx.consumers.get(t, []):
            if n.name in seen:
                continue
            seen.add(n.name)
            outs = _visit(idx, g, n, t, lay, multi_input)
            for o, olay in outs:
                old = g.tensors.get(o)
                if old is not None and old != olay:
                    raise Refused(f"{n.name!r} mixes channel layouts")
                if old is None:
                    g.tensors[o] = olay
                    queue.append(o)
    # Element-wise nodes: every operand is in the group (GELU / SiLU patterns) or a constant.
    for n in multi_input:
        lay = next(g.tensors[i] for i in n.input if i in g.tensors)
        for i, name in enumerate(n.input):
            if not name:
                continue
            if name in g.tensors:
                if g.tensors[name] != lay:
                    raise Refused(f"{n.name!r} mixes channel layouts")
                continue
            if _const_dims(idx, name) is None:
                kind = "a residual connection" if n.op_type in ("Add", "Sum", "Sub") else "a gating / merge"
                raise Refused(
                    f"its channels meet {name!r} from outside the group in {n.op_type} {n.name!r} "
                    f"({kind}); coupled residual channels are not pruned, prune a layer inside the branch"
                )
            cs = _broadcast_slice(idx, n, i, lay, g.channels)
            if cs:
                g.const_slices.append(cs)
    if not g.consumers:
        raise Refused("no weighted layer consumes its channels")
    return g


def _used(idx: GraphIndex, name: str) -> bool:
    return bool(name) and (name in idx.consumers or name in idx.graph_outputs)


def _visit(
    idx: GraphIndex, g: ChannelGroup, n: onnx.NodeProto, t: str, lay: Layout, multi: list
) -> list[tuple[str, Layout]]:
    """One consumer of a group tensor: the group tensors it produces ([] for a group end)."""
    op = n.op_type
    where = f"{op} {n.name!r}"
    if n.domain not in ("", "ai.onnx"):
        raise Refused(f"custom op {where} consumes its channels")
    if op in UNARY_OPS:
        if n.input[0] != t:
            raise Refused(f"{where} reads its channels as a parameter")
        if op == "Dropout" and len(n.output) > 1 and _used(idx, n.output[1]):
            raise Refused(f"{where} mask output is used")
        for extra in n.input[1:]:
            if extra and _const_dims(idx, extra) is None:
                raise Refused(f"{where} has a non-constant parameter {extra!r}")
        return [(n.output[0], lay)]
    if op in ELEMENTWISE_OPS:
        multi.append(n)
        return [(n.output[0], lay)]
    if op in POOL_OPS:
        if not lay.is_nchw:
            raise Refused(f"{where} does not pool over a channels-first tensor")
        if len(n.output) > 1 and _used(idx, n.output[1]):
            raise Refused(f"{where} indices output is used")
        return [(n.output[0], lay)]
    if op == "BatchNormalization":
        if n.input[0] != t or not lay.is_nchw:
            raise Refused(f"{where} does not normalise over the pruned channels")
        if any(_used(idx, o) for o in n.output[1:]):
            raise Refused(f"{where} is in training mode")
        for i in range(1, 5):
            _check_vector(idx, n, i, g.channels)
        g.batchnorms.append(n.name)
        return [(n.output[0], lay)]
    if op == "Flatten":
        shape = idx.shape(t)
        axis = get_attr(n, "axis", 1)
        if not lay.is_nchw or axis != 1 or shape is None:
            raise Refused(f"{where} is not a plain channels-first flatten with known shape")
        rest = shape[2:]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            raise Refused(f"{where}: spatial dims {rest} are not static")
        return [(n.output[0], Layout(-1, 2, int(np.prod(rest)) if rest else 1))]
    if op == "Conv":
        if n.input[0] != t:
            raise Refused(f"{where} reads its channels as a weight")
        if not lay.is_nchw:
            raise Refused(f"{where} input channels are not on dim 1")
        w = _weight_init(idx, n, 1, "Conv")
        group = get_attr(n, "group", 1) or 1
        if group == 1:
            g.consumers.append(Consumer(n.name, op, t))
            return []
        if group == g.channels and w.dims[0] == g.channels and w.dims[1] == 1:
            # Depthwise: one filter per channel, so its output channels follow the input ones.
            g.depthwise.append(n.name)
            if len(n.input) > 2 and n.input[2]:
                g.const_slices.append(ConstSlice(n.name, 2, -1))
            return [(n.output[0], lay)]
        raise Refused(f"grouped conv {where} (group={group}) consumes its channels")
    if op == "Gemm":
        if n.input[0] != t or get_attr(n, "transA", 0):
            raise Refused(f"{where} reads its channels other than as input features")
        if lay.axis != -1:
            raise Refused(f"{where} input features are not the pruned axis")
        _weight_init(idx, n, 1, "Gemm")
        g.consumers.append(Consumer(n.name, op, t, lay.block))
        return []
    if op == "MatMul":
        if n.input[0] != t or lay.axis != -1:
            raise Refused(f"{where} reads its channels other than as input features")
        w = _weight_init(idx, n, 1, "MatMul")
        if len(w.dims) != 2:
            raise Refused(f"{where} has a {len(w.dims)}-D weight")
        g.consumers.append(Consumer(n.name, op, t, lay.block))
        return []
    if op == "Concat":
        raise Refused(f"its channels are concatenated in {where}; channel offsets are not supported")
    raise Refused(f"{where} reshapes or mixes its channels")


def _check_vector(idx: GraphIndex, n: onnx.NodeProto, i: int, channels: int) -> None:
    dims = _const_dims(idx, n.input[i]) if len(n.input) > i else None
    if dims != [channels] or n.input[i] not in idx.inits:
        raise Refused(f"{n.op_type} {n.name!r} input {i} is not a constant of {channels} values")


def prunable_layers(model: onnx.ModelProto) -> dict[str, tuple[bool, str]]:
    """Graph-based channel-pruning support of every Conv / Gemm / MatMul node, computed once:
    ``{node name: (ok, reason or group description)}``."""
    idx = GraphIndex(model)
    out: dict[str, tuple[bool, str]] = {}
    for n in model.graph.node:
        if n.op_type not in ROOT_OPS or len(n.input) < 2 or not idx.const_source(n.input[1]):
            continue
        try:
            out[n.name] = (True, find_group(idx, n).describe())
        except Refused as e:
            out[n.name] = (False, e.reason)
    return out


# ---------------------------------------------------------------------- surgery


def expand(keep: np.ndarray, block: int) -> np.ndarray:
    """Feature indices of kept channels when each channel spans ``block`` consecutive features."""
    if block == 1:
        return keep
    return (keep[:, None] * block + np.arange(block)[None, :]).ravel()


def slice_input(model: onnx.ModelProto, node: onnx.NodeProto, i: int, axis: int, index: np.ndarray) -> None:
    """Slice constant input ``i`` of ``node`` along ``axis``; a shared initializer gets a copy."""
    name = node.input[i]
    init = next(t for t in model.graph.initializer if t.name == name)
    new = np.take(tensor_array(init), index, axis=axis)
    set_input_array(model, node, i, new)


def set_input_array(model: onnx.ModelProto, node: onnx.NodeProto, i: int, array: np.ndarray) -> None:
    """Give ``node`` a new constant at input ``i`` (in place unless another node shares it)."""
    from onnx import numpy_helper

    name = node.input[i] if len(node.input) > i else ""
    users = sum(1 for n in model.graph.node for x in n.input if x == name) if name else 0
    shared = users > 1 or name in {o.name for o in model.graph.output}
    if name and not shared:
        for k, t in enumerate(model.graph.initializer):
            if t.name == name:
                model.graph.initializer[k].CopyFrom(
                    numpy_helper.from_array(np.ascontiguousarray(array), name)
                )
                return
    existing = {t.name for t in model.graph.initializer} | {x for n in model.graph.node for x in n.input}
    new_name = unique_name(existing, f"{node.name}/pruned_{i}")
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), new_name))
    while len(node.input) <= i:
        node.input.append("")
    node.input[i] = new_name


def prune_group(model: onnx.ModelProto, g: ChannelGroup, keep: np.ndarray) -> None:
    """Keep only channels ``keep`` (sorted indices) everywhere in the group, in place."""
    nodes = {n.name: n for n in model.graph.node}
    root = nodes[g.root]
    slice_input(model, root, 1, g.weight_axis, keep)
    for cs in g.const_slices:
        slice_input(model, nodes[cs.node], cs.input_index, cs.axis, expand(keep, cs.block))
    for b in g.batchnorms:
        for i in range(1, 5):
            slice_input(model, nodes[b], i, 0, keep)
    for d in g.depthwise:
        slice_input(model, nodes[d], 1, 0, keep)
        set_attr(nodes[d], "group", len(keep))
    for c in g.consumers:
        n = nodes[c.node]
        if c.op_type == "Conv":
            axis = 1
        elif c.op_type == "Gemm":
            axis = 1 if get_attr(n, "transB", 0) else 0
        else:
            axis = 0
        slice_input(model, n, 1, axis, expand(keep, c.block))
