"""Pruning techniques: unstructured magnitude (zeros in a dense file) and structured channels
(a genuinely smaller, faster graph, with a least-squares refit of the consumer).

Channel pruning decides support in two places. ``applies_to`` is cheap (the GUI calls it per
table cell) and only looks at the layer itself: op type, group, weight rank and dtype. Whether the
graph around the layer allows it (residual Add, Concat, a model output...) is decided by
:func:`studio_pruning.groups.prunable_layers` (one pass over the graph, for callers that want to
show it) and again in ``apply``: a refused layer is skipped with a warning naming the reason, and
if *no* planned layer can be pruned ``apply`` raises :class:`TechniqueError` with the reasons, so
a recipe never silently does nothing.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import onnx
from pydantic import Field

from studio.core.errors import TechniqueError
from studio.core.graph import LayerInfo, analyze
from studio.core.onnx_utils import (
    GraphIndex,
    clear_value_info,
    remove_unused_initializers,
    replace_initializer,
    tensor_array,
)
from studio.plugin_api.technique import (
    YES,
    ApplyContext,
    BaseTechnique,
    LayerEstimate,
    Params,
    Stage,
    Support,
    no,
)
from studio_pruning.groups import (
    ROOT_OPS,
    Refused,
    expand,
    find_group,
    prunable_layers,
    prune_group,
    set_input_array,
)
from studio_pruning.refit import capture, refit_conv, refit_linear

FLOAT_DTYPES = {"float": 4, "float16": 2, "double": 8}
MAX_REFIT_SAMPLES = 256  # calibration samples used for the refit (activations are kept in memory)


def output_axis(layer: LayerInfo) -> int:
    """Axis of the layer's weight that indexes its output channels / neurons."""
    if layer.op_type == "ConvTranspose":
        return 1
    if layer.op_type == "Gemm":
        return 0 if layer.attrs.get("transB", 0) else 1
    if layer.op_type in ("MatMul", "FusedMatMul"):
        return len(layer.weight_shape) - 1
    return 0


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


# ---------------------------------------------------------------------- magnitude


class MagnitudeParams(Params):
    ratio: float = Field(0.5, gt=0, lt=1, description="fraction of weights set to zero")
    granularity: Literal["element", "row"] = Field(
        "element", description="element: smallest |w|; row: whole output channels / neurons by L2 norm"
    )


def sparse_sizes(n: int, rows: int, nnz: int, itemsize: int) -> tuple[int, int]:
    """Estimated bytes of (CSR, bitmask) storage: values + int32 indices / 1 bit per element."""
    csr = nnz * (itemsize + 4) + (rows + 1) * 4
    bitmask = nnz * itemsize + (n + 7) // 8
    return csr, bitmask


class MagnitudePruning(BaseTechnique):
    """Zero the smallest-magnitude weights. The dense ONNX file keeps its size (zeros are stored);
    only sparse formats or compression (zip) make it smaller, and only sparse kernels faster."""

    name = "magnitude"
    label = "Magnitude pruning (unstructured)"
    stage = Stage.PRUNE
    Params = MagnitudeParams
    primary_param = "ratio"
    description = "Zeroes the smallest weights; dense size unchanged, compresses well when zipped."

    OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedMatMul")

    def applies_to(self, layer: LayerInfo) -> Support:
        if layer.op_type not in self.OPS:
            return no(f"{layer.op_type} weights are not magnitude-pruned")
        if layer.dtype not in FLOAT_DTYPES:
            return no(f"weights are {layer.dtype}; prune before quantizing")
        if int(np.prod(layer.weight_shape)) < 2:
            return no("weight has a single element")
        return YES

    def estimate(self, layer: LayerInfo, params: MagnitudeParams, before: LayerEstimate) -> LayerEstimate:
        n = int(np.prod(layer.weight_shape))
        itemsize = FLOAT_DTYPES.get(layer.dtype, 4)
        axis = output_axis(layer)
        rows = layer.weight_shape[axis] if layer.weight_shape else 1
        if params.granularity == "row":
            nnz = (rows - round(params.ratio * rows)) * (n // max(rows, 1))
        else:
            nnz = n - round(params.ratio * n)
        csr, bitmask = sparse_sizes(n, rows, nnz, itemsize)
        note = (
            f"{1 - nnz / n:.0%} zeros: the dense ONNX file keeps {n * itemsize} B for this weight; "
            f"sparse storage would take ~{csr} B (CSR) / ~{bitmask} B (bitmask) (estimated); "
            "a zipped file shrinks, latency does not change without sparse kernels"
        )
        # Dense ONNX stores every zero: params / MACs / bytes are those of the dense layer.
        return LayerEstimate(before.params, before.macs, before.weight_bytes, notes=[*before.notes, note])

    def apply(self, model: onnx.ModelProto, plan: dict[str, MagnitudeParams], ctx: ApplyContext):
        m = _copy(model)
        analysis = ctx.analysis or analyze(m, with_stats=False)
        layers = analysis.by_name()
        idx = GraphIndex(m)
        done: dict[str, str] = {}
        for i, (name, p) in enumerate(plan.items()):
            ctx.progress(i / max(len(plan), 1), f"magnitude: {name}")
            layer = layers.get(name)
            if layer is None or layer.weight_name not in idx.inits:
                ctx.warn(f"{name}: magnitude pruning skipped, no float weight initializer found")
                continue
            wname = layer.weight_name
            if wname in done:
                ctx.warn(f"{name}: shares its weight with {done[wname]!r}, pruned once")
                continue
            users = [n.name for n in idx.consumers.get(wname, []) if n.name != name]
            if users:
                ctx.warn(f"{name}: its weight is shared with {users[:3]}; they see the zeros too")
            w = tensor_array(idx.inits[wname])
            replace_initializer(m, wname, magnitude_prune(w, p.ratio, p.granularity, output_axis(layer)))
            done[wname] = name
        return m


def magnitude_prune(w: np.ndarray, ratio: float, granularity: str = "element", axis: int = 0) -> np.ndarray:
    """A copy of ``w`` with ``round(ratio * n)`` smallest |w| (or whole output units) set to 0."""
    out = np.array(w, copy=True)
    if granularity == "row":
        rows = out.shape[axis]
        k = round(ratio * rows)
        norms = np.sqrt((np.moveaxis(out, axis, 0).reshape(rows, -1).astype(np.float64) ** 2).sum(1))
        drop = np.argsort(norms, kind="stable")[:k]
        idx = [slice(None)] * out.ndim
        idx[axis] = drop
        out[tuple(idx)] = 0
        return out
    flat = out.reshape(-1)
    k = round(ratio * flat.size)
    if k:
        # argpartition zeroes exactly k weights even when magnitudes tie.
        drop = np.argpartition(np.abs(flat.astype(np.float64)), k - 1)[:k]
        flat[drop] = 0
    return out


# ---------------------------------------------------------------------- channels


def _named_explicitly(plan: dict, ctx: ApplyContext) -> bool:
    """True when the recipe names one of the planned layers (or the layer they were split from)
    with an explicit prune step: refusing all of those is an error, not a skip."""
    recipe = ctx.extras.get("recipe")
    if recipe is None:
        return True
    for key, lp in recipe.layers.items():
        if "prune" in lp.model_fields_set and any(n == key or n.startswith(key + "/") for n in plan):
            return True
    return False


class ChannelParams(Params):
    ratio: float = Field(0.5, gt=0, lt=1, description="fraction of output channels removed")
    importance: Literal["l1", "l2"] = Field("l1", description="norm of a channel's weights")
    refit: bool = Field(True, description="least-squares refit of the consumer on calibration data")
    round_to: int = Field(1, ge=1, description="kept channels rounded up to a multiple of this")


def kept_channels(channels: int, ratio: float, round_to: int = 1) -> int:
    """ceil((1 - ratio) * C), rounded up to a multiple of ``round_to``, within [1, C]."""
    k = math.ceil((1 - ratio) * channels - 1e-9)
    if round_to > 1:
        k = math.ceil(k / round_to) * round_to
    return min(max(k, 1), channels)


def channel_importance(w: np.ndarray, axis: int, kind: str = "l1") -> np.ndarray:
    rows = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0).reshape(w.shape[axis], -1)
    return np.abs(rows).sum(1) if kind == "l1" else np.sqrt((rows**2).sum(1))


def select_channels(w: np.ndarray, axis: int, k: int, kind: str = "l1") -> np.ndarray:
    """Sorted indices of the ``k`` most important output channels."""
    imp = channel_importance(w, axis, kind)
    return np.sort(np.argsort(-imp, kind="stable")[:k])


def _channels(layer: LayerInfo) -> int:
    return int(layer.weight_shape[output_axis(layer)]) if layer.weight_shape else 0


class ChannelPruning(BaseTechnique):
    """Remove whole output channels / neurons and the matching inputs of the consuming layers,
    giving a smaller, faster dense model. Optionally refits consumers on calibration data."""

    name = "channels"
    label = "Channel pruning (structured)"
    stage = Stage.PRUNE
    Params = ChannelParams
    primary_param = "ratio"
    description = "Removes output channels / neurons (and consumer inputs): smaller and faster."

    def applies_to(self, layer: LayerInfo) -> Support:
        # Cheap, layer-local checks only; graph structure is checked in apply (see module doc).
        if layer.op_type not in ROOT_OPS:
            return no(f"{layer.op_type} layers have no prunable output channels")
        if layer.dtype not in FLOAT_DTYPES:
            return no(f"weights are {layer.dtype}; prune before quantizing")
        rank = len(layer.weight_shape)
        if layer.op_type == "Conv":
            if (layer.attrs.get("group", 1) or 1) != 1:
                return no(
                    "grouped / depthwise conv: its channels follow its input; prune the layer feeding it"
                )
            if rank < 3:
                return no("conv weight has fewer than 3 dims")
        elif rank != 2:
            return no(f"{rank}-D weight; only 2-D Gemm / MatMul weights are pruned")
        if _channels(layer) < 2:
            return no("a single output channel")
        return YES

    def model_support(self, model: onnx.ModelProto) -> dict[str, Support]:
        """Graph-level support of every candidate layer (one pass, for the GUI to grey cells that
        ``apply`` would refuse): ``{node name: Support}``."""
        out: dict[str, Support] = {}
        for name, (ok, why) in prunable_layers(model).items():
            if ok:
                out[name] = YES
            elif "reach the model output" in why:
                out[name] = no("output layer: pruning its neurons would remove model outputs")
            else:
                out[name] = no(why)
        return out

    def estimate(self, layer: LayerInfo, params: ChannelParams, before: LayerEstimate) -> LayerEstimate:
        c = _channels(layer)
        k = kept_channels(c, params.ratio, params.round_to)
        f = k / max(c, 1)
        note = (
            f"keeps {k} of {c} output channels; the consuming layer(s) also lose {c - k} input "
            "channels (not counted in this layer's estimate)"
        )
        return LayerEstimate(
            round(before.params * f),
            round(before.macs * f),
            round(before.weight_bytes * f),
            notes=[*before.notes, note],
        )

    def apply(self, model: onnx.ModelProto, plan: dict[str, ChannelParams], ctx: ApplyContext):
        start = model
        m = _copy(model)
        idx = GraphIndex(m)
        order = {n.name: i for i, n in enumerate(m.graph.node)}
        groups, refused = [], []
        # Topological order: a layer that is both a consumer and a root is refit before it shrinks.
        for name in sorted(plan, key=lambda n: order.get(n, len(order))):
            node = idx.nodes.get(name)
            try:
                if node is None:
                    raise Refused("no such node in the graph")
                groups.append((find_group(idx, node), plan[name]))
            except Refused as e:
                refused.append(f"{name}: {e.reason}")
                ctx.warn(f"{name}: channel pruning skipped: {e.reason}")
        if not groups:
            if not _named_explicitly(plan, ctx):
                return model  # every layer came from defaults / globs: skipped (warned above)
            raise TechniqueError(f"channel pruning cannot prune any planned layer: {'; '.join(refused)}")

        calib = ctx.calibration
        want = [g for g, p in groups if p.refit]
        x_orig: dict[str, np.ndarray] = {}
        if want and calib is None:
            ctx.warn("channels: no calibration data, so consumers were sliced without a least-squares refit")
        elif want:
            calib = {k: v[:MAX_REFIT_SAMPLES] for k, v in calib.items()}
            names = sorted({c.input_tensor for g in want for c in g.consumers})
            ctx.progress(0.0, f"channels: capturing {len(names)} activation(s) on calibration data")
            x_orig = capture(start, names, calib)

        report = ctx.extras.setdefault("channels", [])
        applied = 0
        for i, (g, p) in enumerate(groups):
            ctx.progress((i + 0.5) / len(groups), f"channels: {g.root}")
            node = {n.name: n for n in m.graph.node}[g.root]
            w = tensor_array(next(t for t in m.graph.initializer if t.name == node.input[1]))
            k = kept_channels(g.channels, p.ratio, p.round_to)
            if k >= g.channels:
                ctx.warn(f"{g.root}: ratio {p.ratio} keeps all {g.channels} channels; nothing pruned")
                continue
            keep = select_channels(w, g.weight_axis, k, p.importance)
            fits = []
            if p.refit and x_orig:
                tensors = [c.input_tensor for c in g.consumers]
                # Until a group is pruned the graph is the stage's start, so its activations serve.
                cur = x_orig if applied == 0 else capture(m, tensors, calib)
                for c in g.consumers:
                    if c.op_type == "Conv":
                        r = refit_conv(m, c.node, x_orig[c.input_tensor], cur[c.input_tensor], keep, ctx.seed)
                        if r is None:
                            ctx.warn(f"{c.node}: conv consumer sliced without refit (unsupported geometry)")
                            continue
                    else:
                        r = refit_linear(
                            m,
                            c.node,
                            x_orig[c.input_tensor],
                            cur[c.input_tensor],
                            expand(keep, c.block),
                            ctx.seed,
                        )
                    fits.append((c, r))
            prune_group(m, g, keep)
            nodes = {n.name: n for n in m.graph.node}
            for c, r in fits:
                set_input_array(m, nodes[c.node], 1, r.weight)
                if r.bias is not None and r.bias_target is not None:
                    bnode, bi = r.bias_target
                    old = _input_dims(m, nodes[bnode], bi)
                    set_input_array(m, nodes[bnode], bi, r.bias.reshape(old or r.bias.shape))
            applied += 1
            report.append(
                {
                    "layer": g.root,
                    "channels": g.channels,
                    "kept": int(k),
                    "consumers": [c.node for c in g.consumers],
                    "refit": [
                        {
                            "node": c.node,
                            "rows": r.rows,
                            "rel_err_sliced": r.err_before,
                            "rel_err_refit": r.err_after,
                        }
                        for c, r in fits
                    ],
                }
            )
        clear_value_info(m)  # channel dims changed; the pipeline re-infers shapes
        remove_unused_initializers(m)
        ctx.progress(1.0, f"channels: pruned {applied} layer(s)")
        return m


def _input_dims(m: onnx.ModelProto, node: onnx.NodeProto, i: int) -> list[int] | None:
    name = node.input[i] if len(node.input) > i else ""
    for t in m.graph.initializer:
        if t.name == name:
            return list(t.dims)
    return None


__all__ = [
    "ChannelPruning",
    "MagnitudePruning",
    "kept_channels",
    "magnitude_prune",
    "select_channels",
]
