"""Low-rank decomposition (stage DECOMPOSE): truncated / whitened SVD for linear layers and
Tucker-2 for k x k convolutions. Each layer X becomes thinner ops named X/svd_a, X/svd_b or
X/tucker_in, X/tucker_core, X/tucker_out; the original output name is kept for consumers."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import Field, model_validator

from studio.core.errors import TechniqueError
from studio.core.onnx_utils import (
    GraphIndex,
    all_names,
    get_attr,
    remove_unused_initializers,
    tensor_array,
    unique_name,
)
from studio.plugin_api.technique import YES, BaseTechnique, LayerEstimate, Params, Stage, no

from .calib import FIRST_AXIS_2D, LAST_AXIS, SECOND_LAST_AXIS, input_grams
from .lowrank import (
    break_even_rank,
    rank_from_energy,
    rank_from_ratio,
    svd_factors,
    svd_spectrum,
    tucker2,
    whitening,
)

_ITEMSIZE = {"float": 4, "float16": 2, "double": 8, "bfloat16": 2}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def _matrix_dims(layer) -> tuple[int, int]:
    """(K, N): the weight as the K x N matrix that multiplies the input."""
    k, n = layer.weight_shape[-2], layer.weight_shape[-1]
    if layer.op_type == "Gemm" and layer.attrs.get("transB", 0):
        k, n = n, k
    return int(k), int(n)


def _bias_bytes(layer, before: LayerEstimate) -> int:
    itemsize = _ITEMSIZE.get(layer.dtype, 4)
    return max(0, before.weight_bytes - int(np.prod(layer.weight_shape)) * itemsize)


def _replace_node(model: onnx.ModelProto, old: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Swap one node for several at the same position (keeps topological order)."""
    nodes = list(model.graph.node)
    i = next(j for j, n in enumerate(nodes) if n is old or (n.name == old.name and n.output == old.output))
    nodes[i : i + 1] = new_nodes
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _drop_value_info(model: onnx.ModelProto, names: set[str]) -> None:
    keep = [vi for vi in model.graph.value_info if vi.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)


def _add_init(model: onnx.ModelProto, names: set[str], base: str, arr: np.ndarray, dtype) -> str:
    name = unique_name(names, base)
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr.astype(dtype)), name))
    return name


# ------------------------------------------------------------------------------------------ SVD


class SVDParams(Params):
    """Keep `rank_ratio` of the full rank min(K, N), or the smallest rank holding `energy` of the
    squared singular values (exactly one; neither means rank_ratio=0.25)."""

    rank_ratio: float | None = Field(None, gt=0, le=1)
    energy: float | None = Field(None, gt=0, le=1)
    whitened: bool = False
    min_rank: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _default_ratio(cls, v):
        if isinstance(v, dict) and v.get("rank_ratio") is None and v.get("energy") is None:
            v = {**v, "rank_ratio": 0.25}
        return v

    @model_validator(mode="after")
    def _one_of(self):
        if self.rank_ratio is not None and self.energy is not None:
            raise ValueError("set either rank_ratio or energy, not both")
        return self


class SVD(BaseTechnique):
    """Truncated SVD of Gemm / MatMul weights into two thinner matrix products."""

    name: ClassVar[str] = "svd"
    label: ClassVar[str] = "Low-rank (SVD)"
    stage: ClassVar[Stage] = Stage.DECOMPOSE
    Params: ClassVar[type[Params]] = SVDParams
    primary_param: ClassVar[str | None] = "rank_ratio"
    description: ClassVar[str] = (
        "Factor a linear layer W (K x N) into K x r and r x N. Saves parameters and MACs only when "
        "r < K*N/(K+N). 'whitened' uses calibration inputs to minimise the output error (SVD-LLM)."
    )

    def applies_to(self, layer):
        if layer.op_type not in ("Gemm", "MatMul"):
            return no(f"SVD handles Gemm and MatMul, not {layer.op_type}")
        if len(layer.weight_shape) != 2:
            return no(f"weight has shape {layer.weight_shape}; SVD needs a 2-D weight")
        if layer.dtype not in _ITEMSIZE:
            return no(f"weight is {layer.dtype}; decompose before quantizing")
        if min(layer.weight_shape) < 2:
            return no("weight has rank 1 already")
        return YES

    def rank_for(self, layer, params: SVDParams) -> int | None:
        """The rank a ratio plan gives (None for energy plans: known only from the weights)."""
        k, n = _matrix_dims(layer)
        if params.rank_ratio is None:
            return None
        return rank_from_ratio(params.rank_ratio, min(k, n), params.min_rank)

    def estimate(self, layer, params, before):
        k, n = _matrix_dims(layer)
        r = self.rank_for(layer, params)
        if r is None:
            return LayerEstimate(
                before.params,
                before.macs,
                before.weight_bytes,
                notes=[f"svd energy={params.energy}: rank is chosen from the singular values at apply time"],
            )
        if r >= break_even_rank(k, n):
            return LayerEstimate(
                before.params,
                before.macs,
                before.weight_bytes,
                notes=[
                    f"svd rank {r} does not reduce cost: needs r < K*N/(K+N) = {break_even_rank(k, n):.1f} "
                    f"for a {k}x{n} weight; apply will refuse"
                ],
            )
        frac = r * (k + n) / (k * n)
        bias = before.params - k * n if before.params >= k * n else 0
        itemsize = _ITEMSIZE.get(layer.dtype, 4)
        return LayerEstimate(
            params=r * (k + n) + bias,
            macs=int(round(before.macs * frac)),
            weight_bytes=r * (k + n) * itemsize + _bias_bytes(layer, before),
            notes=[f"svd rank {r} of {min(k, n)} ({frac:.1%} of the weight)"],
        )

    def apply(self, model, plan, ctx):
        idx = GraphIndex(model)
        jobs = []  # (layer, node, weight side, layout of the activation, activation name)
        for lname in plan:
            node = idx.nodes.get(lname)
            if node is None:
                raise TechniqueError(f"svd: layer {lname!r} is not in the model")
            jobs.append((lname, node, *self._locate(lname, node, idx)))
        grams = {}
        if any(plan[j[0]].whitened for j in jobs):
            if not ctx.calibration:
                raise TechniqueError(
                    "svd whitened=true needs calibration data (activation statistics); "
                    "set recipe calibration.data or use whitened=false"
                )
            wanted = {j[4]: j[3] for j in jobs if plan[j[0]].whitened}
            grams = input_grams(model, wanted, ctx.calibration, job=ctx.job.sub(0.0, 0.5))
        names = all_names(model)
        dropped: set[str] = set()
        for i, (lname, node, side, _layout, act) in enumerate(jobs):
            p: SVDParams = plan[lname]
            ctx.progress(0.5 + 0.5 * i / len(jobs), f"svd {lname}")
            w_name = node.input[1] if side == "right" else node.input[0]
            w_t = idx.inits[w_name]
            w = tensor_array(w_t).astype(np.float64)
            trans_b = node.op_type == "Gemm" and get_attr(node, "transB", 0)
            wk = w.T if (trans_b or side == "left") else w  # K x N, K meets the activation
            k, n = wk.shape
            chol = whitening(grams[act]) if p.whitened else None
            spec = svd_spectrum(wk, chol)
            r = (
                rank_from_ratio(p.rank_ratio, min(k, n), p.min_rank)
                if p.rank_ratio is not None
                else rank_from_energy(spec[1], p.energy, p.min_rank)
            )
            if r >= break_even_rank(k, n):
                raise TechniqueError(
                    f"svd on layer {lname!r}: rank {r} would not reduce cost "
                    f"(a {k}x{n} weight needs rank < {break_even_rank(k, n):.1f}); lower rank_ratio/energy"
                )
            a, b = svd_factors(wk, r, chol, spec)  # wk ~= a [K,r] @ b [r,N]
            dt = numpy_helper.to_array(w_t).dtype if w_t.data_type in _FLOAT_TYPES else np.float32
            mid = unique_name(names, f"{lname}/svd_a_output_0")
            out = list(node.output)
            if node.op_type == "Gemm":
                wa = a.T if trans_b else a
                wb = b.T if trans_b else b
                na = _add_init(model, names, f"{w_name}/svd_a", wa, dt)
                nb = _add_init(model, names, f"{w_name}/svd_b", wb, dt)
                first = helper.make_node(
                    "Gemm",
                    [node.input[0], na],
                    [mid],
                    name=f"{lname}/svd_a",
                    alpha=float(get_attr(node, "alpha", 1.0)),
                    transA=int(get_attr(node, "transA", 0)),
                    transB=int(bool(trans_b)),
                )
                second = helper.make_node(
                    "Gemm",
                    [mid, nb] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else []),
                    out,
                    name=f"{lname}/svd_b",
                    beta=float(get_attr(node, "beta", 1.0)),
                    transB=int(bool(trans_b)),
                )
            elif side == "right":  # X @ W ~= (X @ a) @ b
                na = _add_init(model, names, f"{w_name}/svd_a", a, dt)
                nb = _add_init(model, names, f"{w_name}/svd_b", b, dt)
                first = helper.make_node("MatMul", [node.input[0], na], [mid], name=f"{lname}/svd_a")
                second = helper.make_node("MatMul", [mid, nb], out, name=f"{lname}/svd_b")
            else:  # W @ X with W^T ~= a b:  W @ X ~= b^T @ (a^T @ X)
                na = _add_init(model, names, f"{w_name}/svd_a", a.T, dt)
                nb = _add_init(model, names, f"{w_name}/svd_b", b.T, dt)
                first = helper.make_node("MatMul", [na, node.input[1]], [mid], name=f"{lname}/svd_a")
                second = helper.make_node("MatMul", [nb, mid], out, name=f"{lname}/svd_b")
            _replace_node(model, node, [first, second])
            dropped.update(node.output)
            if len(idx.consumers.get(w_name, [])) > 1:
                ctx.warn(f"{lname}: weight {w_name} is shared with other nodes; they keep the full matrix")
        remove_unused_initializers(model)
        _drop_value_info(model, dropped)
        return model

    def _locate(self, lname, node, idx):
        """(side of the weight, layout of the activation, activation name)."""
        if node.op_type == "Gemm":
            if not (len(node.input) > 1 and node.input[1] in idx.inits):
                raise TechniqueError(f"svd on layer {lname!r}: the Gemm's B input is not a stored weight")
            layout = FIRST_AXIS_2D if get_attr(node, "transA", 0) else LAST_AXIS
            return "right", layout, node.input[0]
        if node.input[1] in idx.inits and len(idx.inits[node.input[1]].dims) == 2:
            return "right", LAST_AXIS, node.input[0]
        if node.input[0] in idx.inits and len(idx.inits[node.input[0]].dims) == 2:
            return "left", SECOND_LAST_AXIS, node.input[1]
        raise TechniqueError(f"svd on layer {lname!r}: no 2-D stored weight on either MatMul input")


# -------------------------------------------------------------------------------------- Tucker-2


class TuckerParams(Params):
    """Tucker-2 ranks: `rank_ratio` of the in/out channels, or explicit `ranks` [in, out]
    (exactly one; neither means rank_ratio=0.5)."""

    rank_ratio: float | None = Field(None, gt=0, le=1)
    ranks: tuple[int, int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_ratio(cls, v):
        if isinstance(v, dict) and v.get("rank_ratio") is None and v.get("ranks") is None:
            v = {**v, "rank_ratio": 0.5}
        return v

    @model_validator(mode="after")
    def _one_of(self):
        if self.rank_ratio is not None and self.ranks is not None:
            raise ValueError("set either rank_ratio or ranks, not both")
        if self.ranks is not None and min(self.ranks) < 1:
            raise ValueError("ranks must be >= 1")
        return self


def _spatial(shape) -> int | None:
    if not shape or len(shape) < 3:
        return None
    out = 1
    for d in shape[2:]:
        if not isinstance(d, int) or d <= 0:
            return None
        out *= d
    return out


class Tucker2(BaseTechnique):
    """Tucker-2 on a k x k convolution: 1x1 (Cin->R1), k x k core (R1->R2), 1x1 (R2->Cout)."""

    name: ClassVar[str] = "tucker"
    label: ClassVar[str] = "Low-rank (Tucker-2)"
    stage: ClassVar[Stage] = Stage.DECOMPOSE
    Params: ClassVar[type[Params]] = TuckerParams
    primary_param: ClassVar[str | None] = "rank_ratio"
    description: ClassVar[str] = (
        "Split a k x k convolution into a channel-reducing 1x1 conv, a small k x k core conv and a "
        "channel-restoring 1x1 conv (Tucker decomposition of the in/out channel modes)."
    )

    def applies_to(self, layer):
        if layer.op_type != "Conv":
            return no(f"Tucker-2 handles Conv, not {layer.op_type}")
        if len(layer.weight_shape) != 4:
            return no(f"weight has shape {layer.weight_shape}; Tucker-2 needs a 2-D convolution")
        if (layer.attrs.get("group", 1) or 1) != 1:
            return no("grouped/depthwise convolution: its channels are already factored per group")
        if layer.weight_shape[2] * layer.weight_shape[3] == 1:
            return no(
                "1x1 convolution: Tucker-2 degenerates to a matrix factorisation (SVD-like); use a k x k conv"
            )
        if layer.dtype not in _ITEMSIZE:
            return no(f"weight is {layer.dtype}; decompose before quantizing")
        return YES

    def ranks_for(self, layer, params: TuckerParams) -> tuple[int, int]:
        cout, cin = layer.weight_shape[0], layer.weight_shape[1]
        if params.ranks is not None:
            return min(params.ranks[0], cin), min(params.ranks[1], cout)
        return rank_from_ratio(params.rank_ratio, cin), rank_from_ratio(params.rank_ratio, cout)

    def _costs(self, layer, r1: int, r2: int) -> tuple[int, int]:
        cout, cin, kh, kw = layer.weight_shape
        weights = cin * r1 + r1 * r2 * kh * kw + r2 * cout
        out_sp = _spatial(layer.output_shapes[0] if layer.output_shapes else None) or 1
        in_sp = _spatial(layer.input_shapes[0] if layer.input_shapes else None) or out_sp
        macs = in_sp * cin * r1 + out_sp * (r1 * r2 * kh * kw + r2 * cout)
        return weights, macs

    def estimate(self, layer, params, before):
        r1, r2 = self.ranks_for(layer, params)
        weights, macs = self._costs(layer, r1, r2)
        full = int(np.prod(layer.weight_shape))
        if weights >= full:
            return LayerEstimate(
                before.params,
                before.macs,
                before.weight_bytes,
                notes=[
                    f"tucker ranks ({r1}, {r2}) do not reduce parameters ({weights} >= {full}); apply will refuse"
                ],
            )
        bias = max(0, before.params - full)
        return LayerEstimate(
            params=weights + bias,
            macs=macs,
            weight_bytes=weights * _ITEMSIZE.get(layer.dtype, 4) + _bias_bytes(layer, before),
            notes=[f"tucker ranks in={r1}, out={r2} ({weights / full:.1%} of the weight)"],
        )

    def apply(self, model, plan, ctx):
        idx = GraphIndex(model)
        names = all_names(model)
        dropped: set[str] = set()
        for i, (lname, p) in enumerate(plan.items()):
            ctx.progress(i / len(plan), f"tucker {lname}")
            node = idx.nodes.get(lname)
            if node is None or node.op_type != "Conv" or node.input[1] not in idx.inits:
                raise TechniqueError(f"tucker: layer {lname!r} is not a Conv with a stored weight")
            if (get_attr(node, "group", 1) or 1) != 1:
                raise TechniqueError(f"tucker on layer {lname!r}: grouped convolutions are not supported")
            w_t = idx.inits[node.input[1]]
            w = tensor_array(w_t)
            if w.ndim != 4 or w.shape[2] * w.shape[3] == 1:
                raise TechniqueError(f"tucker on layer {lname!r}: needs a k x k (k > 1) 2-D convolution")
            cout, cin, kh, kw = w.shape
            if p.ranks is not None:
                r1, r2 = min(p.ranks[0], cin), min(p.ranks[1], cout)
            else:
                r1, r2 = rank_from_ratio(p.rank_ratio, cin), rank_from_ratio(p.rank_ratio, cout)
            weights = cin * r1 + r1 * r2 * kh * kw + r2 * cout
            if weights >= w.size:
                raise TechniqueError(
                    f"tucker on layer {lname!r}: ranks in={r1}, out={r2} would not reduce parameters "
                    f"({weights} >= {w.size}); lower rank_ratio"
                )
            first, core, last = tucker2(w, r1, r2, seed=ctx.seed)
            dt = w.dtype
            base = node.input[1]
            n_in = _add_init(model, names, f"{base}/tucker_in", first, dt)
            n_core = _add_init(model, names, f"{base}/tucker_core", core, dt)
            n_out = _add_init(model, names, f"{base}/tucker_out", last, dt)
            h1 = unique_name(names, f"{lname}/tucker_in_output_0")
            h2 = unique_name(names, f"{lname}/tucker_core_output_0")
            core_attrs = {
                a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "kernel_shape"
            }
            core_attrs["kernel_shape"] = [kh, kw]
            bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
            new = [
                helper.make_node(
                    "Conv", [node.input[0], n_in], [h1], name=f"{lname}/tucker_in", kernel_shape=[1, 1]
                ),
                helper.make_node("Conv", [h1, n_core], [h2], name=f"{lname}/tucker_core", **core_attrs),
                helper.make_node(
                    "Conv",
                    [h2, n_out] + bias,
                    list(node.output),
                    name=f"{lname}/tucker_out",
                    kernel_shape=[1, 1],
                ),
            ]
            _replace_node(model, node, new)
            dropped.update(node.output)
            ctx.progress((i + 1) / len(plan), f"tucker {lname}: ranks in={r1}, out={r2}")
        remove_unused_initializers(model)
        _drop_value_info(model, dropped)
        return model
