"""Quantization techniques: int8 dynamic, int8 static (QDQ), int4 weight-only, fp16.

Each one drives onnxruntime's own tool on exactly the layers of the plan, so a layer left out of
the recipe stays float32 (per-layer exclusion). Node names survive: the quantized op of layer `X`
is still called `X`, its helpers `X/<suffix>` (see ort_bridge.restore_names).

Decisions worth knowing:
* `quant_pre_process` is not run: its ORT graph optimisation fuses and renames nodes (LayerNorm,
  Gelu, MatMul+Add), so the names a recipe refers to would no longer exist.
* int8_dynamic refuses Conv: ORT's dynamic Conv (ConvInteger + DynamicQuantizeLinear) measured
  slower than the float32 Conv on the CPU provider; int8_static is the Conv path.
* Gemm layers are rewritten as MatMul `X` + Add `X/bias` for int8_dynamic and int4_weight,
  because ORT's integer and n-bit kernels exist for MatMul only.
"""

from __future__ import annotations

import copy
import warnings
from typing import ClassVar, Literal

import numpy as np
import onnx
from pydantic import Field

from studio.core.errors import TechniqueError
from studio.core.graph import LayerInfo
from studio.core.onnx_utils import get_attr
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
from studio_quantization import ort_bridge as ob

SCALE_BYTES = 4  # float32 scale per channel/block
TRANSFORMER_NOTE = (
    "static int8 on transformer MatMuls is often poor (measured cosine 0.4-0.9 to the original on "
    "MiniLM: activation outliers saturate u8); prefer int8_dynamic or int4_weight here"
)
# Ops whose output keeps the input's dtype and value range: safe to extend a quantized/fp16
# region through them (so no Cast / Q-DQ pair is inserted around every Relu or Flatten).
PASS_THROUGH_OPS = {
    "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
}  # fmt: skip


# ---------------------------------------------------------------------- shared helpers


def _float_weight(layer: LayerInfo) -> Support:
    if layer.dtype != "float":
        return no(f"its weights are {layer.dtype}, not float32 (already quantized or converted)")
    return YES


def _out_channels(layer: LayerInfo) -> int:
    """Channels that get one scale each in per-channel quantization."""
    ws = layer.weight_shape
    if not ws:
        return 1
    if layer.op_type in ("Conv",):
        return ws[0]
    if layer.op_type == "ConvTranspose":
        return ws[1] if len(ws) > 1 else ws[0]
    if layer.op_type == "Gemm":
        return ws[0] if layer.attrs.get("transB", 0) else ws[-1]
    return ws[-1]


def _bias_elems(layer: LayerInfo) -> int:
    w = int(np.prod(layer.weight_shape)) if layer.weight_shape else 0
    return max(layer.params - w, 0)


def _scaled(layer: LayerInfo, before: LayerEstimate) -> tuple[int, int, float]:
    """(weight elements, bias elements, remaining fraction) after earlier stages (e.g. pruning)."""
    frac = before.params / layer.params if layer.params else 1.0
    bias = int(round(_bias_elems(layer) * min(frac, 1.0)))
    return max(before.params - bias, 0), bias, frac


def _is_sequence_matmul(layer: LayerInfo) -> bool:
    """MatMul fed by [batch, seq, hidden] activations: the transformer pattern."""
    if layer.op_type not in ("MatMul", "Gemm"):
        return False
    a = layer.input_shapes[0] if layer.input_shapes else None
    grp = "/".join(layer.group).lower()
    return bool(a and len(a) >= 3) or any(k in grp for k in ("attention", "attn", "encoder", "decoder"))


def _grouped(plan: dict[str, Params], keys: tuple[str, ...]) -> dict[tuple, list[str]]:
    groups: dict[tuple, list[str]] = {}
    for name, p in plan.items():
        groups.setdefault(tuple(getattr(p, k) for k in keys), []).append(name)
    return groups


def _region(model: onnx.ModelProto, seeds: set[str]) -> set[str]:
    """`seeds` plus the pass-through nodes whose every activation input comes from the region."""
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n.name for n in model.graph.node for o in n.output}
    region = set(seeds)
    for n in model.graph.node:  # topological order: one forward pass suffices
        if n.name in region or n.op_type not in PASS_THROUGH_OPS:
            continue
        acts = [i for i in n.input[:1] if i and i not in inits]
        if acts and all(producer.get(i) in region for i in acts):
            region.add(n.name)
    return region


def _warn_unquantized(ctx: ApplyContext, tech: str, names: list[str], why: str) -> None:
    for x in sorted(names):
        ctx.warn(f"{x}: {tech} left this layer unchanged ({why})")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


# ---------------------------------------------------------------------- int8 dynamic


class Int8DynamicParams(Params):
    """Weights int8 ahead of time, activations quantized per call (no calibration data)."""

    bits: Literal[8] = 8
    per_channel: bool = True
    reduce_range: bool | None = Field(
        None, description="7-bit weights; None = auto (on for x86 CPUs without VNNI)"
    )
    weight_type: Literal["s8", "u8"] = "s8"


class Int8Dynamic(BaseTechnique):
    """ORT `quantize_dynamic` on the chosen MatMul / Gemm layers (MatMulInteger kernels)."""

    name: ClassVar[str] = "int8_dynamic"
    label: ClassVar[str] = "INT8 dynamic"
    stage: ClassVar[Stage] = Stage.QUANTIZE
    Params: ClassVar[type[Params]] = Int8DynamicParams
    primary_param: ClassVar[str | None] = "bits"
    description: ClassVar[str] = (
        "int8 weights, activations quantized at run time; no calibration data. Best for "
        "transformer / MLP MatMuls on CPU."
    )

    def applies_to(self, layer: LayerInfo) -> Support:
        if layer.op_type == "Gather":
            if len(layer.weight_shape) != 2:
                return no(f"table has shape {layer.weight_shape}; int8 Gather needs a 2-D embedding table")
            return _float_weight(layer)
        if layer.op_type in ("Conv", "ConvTranspose"):
            return no(
                "dynamic int8 Conv (ConvInteger) runs slower than float32 Conv on ONNX Runtime's "
                "CPU provider; use int8_static for Conv layers"
            )
        if layer.op_type == "Gemm":
            if layer.attrs.get("transA", 0) or layer.attrs.get("alpha", 1.0) != 1.0:
                return no("Gemm with transA or alpha != 1 cannot be rewritten as MatMul for int8")
            if layer.attrs.get("beta", 1.0) != 1.0:
                return no("Gemm with beta != 1 cannot be rewritten as MatMul for int8")
        elif layer.op_type != "MatMul":
            return no(f"int8_dynamic handles MatMul and Gemm layers, not {layer.op_type}")
        if len(layer.weight_shape) != 2:
            return no(f"weight has shape {layer.weight_shape}; int8_dynamic needs a 2-D weight")
        return _float_weight(layer)

    def estimate(self, layer: LayerInfo, params: Params, before: LayerEstimate) -> LayerEstimate:
        w, b, frac = _scaled(layer, before)
        if layer.op_type == "Gather":
            rows = layer.weight_shape[0] if params.per_channel else 1
            notes = ["int8 table, one float scale per row (DequantizeLinear, folded by ORT at load)"]
            return LayerEstimate(before.params, before.macs, int(w + rows * SCALE_BYTES), notes=notes)
        ch = max(int(_out_channels(layer) * min(frac, 1.0)), 1) if params.per_channel else 1
        nbytes = w + b * 4 + ch * (SCALE_BYTES + 1)
        notes = ["int8 weights; activations quantized per call (DynamicQuantizeLinear)"]
        if layer.op_type == "Gemm":
            notes.append("Gemm becomes MatMul + Add (bias stays float32)")
        if ob.auto_reduce_range(params.reduce_range):
            notes.append("reduce_range: 7-bit weights (x86 CPU without VNNI)")
        return LayerEstimate(before.params, before.macs, int(nbytes), notes=notes)

    def simulate_weight(self, layer: LayerInfo, weight: np.ndarray, params: Params, seed: int = 0):
        """Gather tables only (the sweep's fast path): the float rows `apply` rebuilds, exactly.
        None for MatMul / Gemm, whose activations are quantized at run time too."""
        if layer.op_type != "Gather" or weight.ndim != 2 or weight.dtype != np.float32:
            return None
        q, scale = _int8_rows(weight, params.per_channel)
        return q.astype(np.float32) * (scale[:, None] if params.per_channel else scale)

    def apply(self, model: onnx.ModelProto, plan: dict[str, Params], ctx: ApplyContext) -> onnx.ModelProto:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = _copy(model)
        gathers = {n: p for n, p in plan.items() if _node_op(model, n) == "Gather"}
        if gathers:
            _int8_gathers(model, gathers, ctx)
            plan = {n: p for n, p in plan.items() if n not in gathers}
            if not plan:
                return model
        ob.gemm_to_matmul(model, plan)
        groups = _grouped(plan, ("per_channel", "reduce_range", "weight_type"))
        untouched: list[str] = []
        for gi, ((per_channel, reduce_range, wtype), names) in enumerate(groups.items()):
            ctx.progress(gi / len(groups), f"int8 dynamic: {len(names)} layer(s)")
            before = _copy(model)

            def run(m, out, external, names=names, per_channel=per_channel, rr=reduce_range, wt=wtype):
                quantize_dynamic(
                    m,
                    out,
                    op_types_to_quantize=["MatMul"],
                    per_channel=per_channel,
                    reduce_range=ob.auto_reduce_range(rr),
                    weight_type=QuantType.QInt8 if wt == "s8" else QuantType.QUInt8,
                    nodes_to_quantize=list(names),
                    use_external_data_format=external,
                    extra_options={"MatMulConstBOnly": True},
                )

            model = ob.run_file_tool(model, run)
            untouched += ob.restore_names(before, model, names, gemm_rewritten=True)
        _warn_unquantized(ctx, self.name, untouched, "its MatMul has no constant weight input B")
        ctx.progress(1.0, "int8 dynamic done")
        return ob.finish(model)


def _node_op(model: onnx.ModelProto, name: str) -> str | None:
    return next((n.op_type for n in model.graph.node if n.name == name), None)


def _int8_rows(w: np.ndarray, per_row: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of a [rows, dim] table: (int8 table, float32 scale per row or scalar)."""
    amax = np.abs(w).max(axis=1) if per_row else np.array(np.abs(w).max())
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / (scale[:, None] if per_row else scale)), -127, 127).astype(np.int8)
    return q, scale


def _int8_gathers(model: onnx.ModelProto, plan: dict[str, Params], ctx: ApplyContext) -> None:
    """Embedding tables to symmetric int8 with one scale per row (per tensor without
    per_channel). The Gather `X` then reads int8 rows, `X/gather_scale` their scales, and
    `X/cast` + `X/dequantize` (Mul) rebuild float32 for the gathered rows only: ORT does not
    constant-fold DequantizeLinear, so dequantizing the whole table would run on every call.
    ORT's own Gather quantization is per tensor, which costs accuracy on outlier rows."""
    from onnx import helper, numpy_helper

    from studio.core.onnx_utils import GraphIndex, remove_unused_initializers, tensor_array, unique_name

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        _warn_unquantized(
            ctx, "int8_dynamic", list(plan), f"needs opset 13 (Unsqueeze axes input), model has {opset}"
        )
        return
    idx = GraphIndex(model)
    names = {x for n in model.graph.node for x in list(n.input) + list(n.output)} | set(idx.inits)
    tables: dict[str, tuple[str, str]] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    for lname, p in plan.items():
        node = idx.nodes.get(lname)
        w_name = node.input[0] if node is not None else ""
        if node is None or w_name not in idx.inits or idx.inits[w_name].data_type != onnx.TensorProto.FLOAT:
            _warn_unquantized(ctx, "int8_dynamic", [lname], "its table is not a stored float32 initializer")
            continue
        if get_attr(node, "axis", 0) != 0:
            _warn_unquantized(ctx, "int8_dynamic", [lname], "it gathers along an axis other than 0")
            continue
        if w_name not in tables:
            q, scale = _int8_rows(tensor_array(idx.inits[w_name]).astype(np.float32), p.per_channel)
            q_name = unique_name(names, f"{w_name}_quantized")
            names.add(q_name)
            s_name = unique_name(names, f"{w_name}_scale")
            names.add(s_name)
            model.graph.initializer.extend(
                [numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name)]
            )
            tables[w_name] = (q_name, s_name)
        q_name, s_name = tables[w_name]
        out = node.output[0]
        rows = unique_name(names, f"{lname}/int8_output_0")
        names.add(rows)
        node.input[0] = q_name
        node.output[0] = rows
        cast_out = unique_name(names, f"{lname}/cast_output_0")
        names.add(cast_out)
        new = [helper.make_node("Cast", [rows], [cast_out], name=f"{lname}/cast", to=onnx.TensorProto.FLOAT)]
        scale_in = s_name
        if p.per_channel:
            g_out = unique_name(names, f"{lname}/gather_scale_output_0")
            u_out = unique_name(names, f"{lname}/scale_unsqueeze_output_0")
            ax = unique_name(names, f"{lname}/scale_unsqueeze_axes")
            names |= {g_out, u_out, ax}
            model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), ax))
            new += [
                helper.make_node(
                    "Gather", [s_name, node.input[1]], [g_out], name=f"{lname}/gather_scale", axis=0
                ),
                helper.make_node("Unsqueeze", [g_out, ax], [u_out], name=f"{lname}/scale_unsqueeze"),
            ]
            scale_in = u_out
        new.append(helper.make_node("Mul", [cast_out, scale_in], [out], name=f"{lname}/dequantize"))
        after[lname] = new
    if after:
        nodes = []
        for n in model.graph.node:
            nodes.append(n)
            nodes.extend(after.get(n.name, []))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        remove_unused_initializers(model)


# ---------------------------------------------------------------------- int8 static


class Int8StaticParams(Params):
    """int8 weights and activations (QDQ), activation ranges from calibration data."""

    bits: Literal[8] = 8
    per_channel: bool = True
    symmetric: bool = Field(True, description="symmetric weights (zero point 0)")
    reduce_range: bool | None = Field(
        None, description="7-bit weights; None = auto (on for x86 CPUs without VNNI)"
    )
    # One calibration pass runs per model: the three below must agree across layers.
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(99.999, gt=90.0, le=100.0)
    activation_type: Literal["u8", "s8"] = "u8"


_GLOBAL_STATIC = ("calibrate_method", "percentile", "activation_type")


class Int8Static(BaseTechnique):
    """ORT `quantize_static` (QDQ format) on the chosen layers, calibrated on recipe data."""

    name: ClassVar[str] = "int8_static"
    label: ClassVar[str] = "INT8 static (QDQ)"
    stage: ClassVar[Stage] = Stage.QUANTIZE
    Params: ClassVar[type[Params]] = Int8StaticParams
    primary_param: ClassVar[str | None] = "bits"
    description: ClassVar[str] = (
        "int8 weights and activations with calibrated ranges (QDQ). Best for CNNs; needs calibration data."
    )

    def applies_to(self, layer: LayerInfo) -> Support:
        if layer.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            return no(f"int8_static handles Conv, ConvTranspose, Gemm and MatMul layers, not {layer.op_type}")
        return _float_weight(layer)

    def estimate(self, layer: LayerInfo, params: Params, before: LayerEstimate) -> LayerEstimate:
        w, b, frac = _scaled(layer, before)
        ch = max(int(_out_channels(layer) * min(frac, 1.0)), 1)
        nq = ch if params.per_channel else 1
        # int8 weights, int32 bias (its scale is derived), scale + zero point per channel.
        nbytes = w + b * 4 + nq * (SCALE_BYTES + 1) + (ch * SCALE_BYTES if b else 0)
        notes = [
            f"int8 weights + {params.activation_type} activations ({params.calibrate_method} calibration)"
        ]
        if _is_sequence_matmul(layer):
            notes.append("warning: " + TRANSFORMER_NOTE)
        if ob.auto_reduce_range(params.reduce_range):
            notes.append("reduce_range: 7-bit weights (x86 CPU without VNNI)")
        return LayerEstimate(before.params, before.macs, int(nbytes), notes=notes)

    def apply(self, model: onnx.ModelProto, plan: dict[str, Params], ctx: ApplyContext) -> onnx.ModelProto:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if ctx.calibration is None:
            raise TechniqueError(
                "int8_static needs calibration data: set calibration.data in the recipe or pass --data"
            )
        first = next(iter(plan.values()))
        for key in _GLOBAL_STATIC:
            vals = {getattr(p, key) for p in plan.values()}
            if len(vals) > 1:
                raise TechniqueError(
                    f"int8_static: layers ask for different {key} values {sorted(map(str, vals))}; "
                    f"one calibration pass runs per model, so use one value for every layer"
                )
        model = _copy(model)
        nodes = {n.name: n for n in model.graph.node}
        inits = {t.name for t in model.graph.initializer}
        overrides: dict[str, list[dict]] = {}
        seq_layers = []
        for name, p in plan.items():
            node = nodes.get(name)
            if node is None:
                continue
            w = node.input[1] if len(node.input) > 1 else ""
            if w not in inits:
                w = node.input[0] if node.input[0] in inits else ""
            if not w:
                continue
            o = {"symmetric": p.symmetric, "reduce_range": ob.auto_reduce_range(p.reduce_range)}
            if p.per_channel:
                o["axis"] = _channel_axis(node)
            overrides[w] = [o]
            if ctx.analysis is not None and name in ctx.analysis.by_name():
                if _is_sequence_matmul(ctx.analysis.by_name()[name]):
                    seq_layers.append(name)
        if seq_layers:
            ctx.warn(f"int8_static on {len(seq_layers)} transformer MatMul layer(s): {TRANSFORMER_NOTE}")
        quantize_nodes = sorted(_region(model, set(plan)))
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[first.calibrate_method]
        extra = {"TensorQuantOverrides": overrides, "ActivationSymmetric": False}
        if first.calibrate_method == "percentile":
            extra["CalibPercentile"] = first.percentile
        if first.calibrate_method == "minmax":
            extra["CalibMaxIntermediateOutputs"] = 16  # bounded memory; same ranges
        reader = ob.ArrayDataReader(model, ctx.calibration)
        ctx.progress(0.05, f"int8 static: calibrating on {len(reader)} samples")
        op_types = sorted({nodes[n].op_type for n in quantize_nodes if n in nodes})
        before = _copy(model)

        def run(m, out, external):
            quantize_static(
                m,
                out,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=False,  # per layer, through the axis overrides above
                reduce_range=False,
                activation_type=QuantType.QUInt8 if first.activation_type == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=quantize_nodes,
                calibrate_method=method,
                use_external_data_format=external,
                extra_options=extra,
            )

        try:
            model = ob.run_file_tool(model, run)
        except ValueError as e:
            raise TechniqueError(f"int8_static: ONNX Runtime rejected the setup: {e}") from e
        ob.restore_names(before, model, plan)
        ob.name_weight_dequantizers(model, plan)
        untouched = [n for n in plan if not _has_dq_weight(model, n)]
        _warn_unquantized(ctx, self.name, untouched, "ONNX Runtime did not quantize its weight")
        ctx.progress(1.0, "int8 static done")
        return ob.finish(model)


def _channel_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis ORT's QDQ quantizer expects for this op's weight."""
    from studio.core.onnx_utils import get_attr

    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if get_attr(node, "transB", 0) else 1
    return 1  # MatMul [K, N]


def _has_dq_weight(model: onnx.ModelProto, name: str) -> bool:
    node = next((n for n in model.graph.node if n.name == name), None)
    if node is None:
        return True  # renamed into a fused op: quantized
    producers = {o: n for n in model.graph.node for o in n.output}
    return any(
        producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input[1:2]
    )


# ---------------------------------------------------------------------- int4 weight-only


class Int4WeightParams(Params):
    """Block-wise n-bit weights for MatMul (MatMulNBits); activations stay float."""

    bits: Literal[4, 8] = 4
    block_size: Literal[16, 32, 64, 128, 256] = 32
    algorithm: Literal["rtn", "hqq"] = "rtn"
    symmetric: bool = False
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        0, description="MatMulNBits compute type: 0 default, 4 = int8 activations (faster on CPU)"
    )


class Int4WeightOnly(BaseTechnique):
    """ORT `MatMulNBitsQuantizer` (RTN or HQQ) on the chosen MatMul / Gemm layers."""

    name: ClassVar[str] = "int4_weight"
    label: ClassVar[str] = "INT4 weight-only"
    stage: ClassVar[Stage] = Stage.QUANTIZE
    Params: ClassVar[type[Params]] = Int4WeightParams
    primary_param: ClassVar[str | None] = "bits"
    description: ClassVar[str] = (
        "4-bit block-wise weights (MatMulNBits), float activations; no calibration. For large "
        "MatMul layers (transformer FFNs)."
    )

    def applies_to(self, layer: LayerInfo) -> Support:
        if layer.op_type == "Gemm":
            if layer.attrs.get("transA", 0) or layer.attrs.get("alpha", 1.0) != 1.0:
                return no("Gemm with transA or alpha != 1 cannot be rewritten as MatMul for MatMulNBits")
            if layer.attrs.get("beta", 1.0) != 1.0:
                return no("Gemm with beta != 1 cannot be rewritten as MatMul for MatMulNBits")
        elif layer.op_type != "MatMul":
            return no(f"MatMulNBits replaces MatMul/Gemm layers only, not {layer.op_type}")
        if len(layer.weight_shape) != 2:
            return no(f"weight has shape {layer.weight_shape}; MatMulNBits needs a 2-D weight")
        b_shape = layer.input_shapes[1] if len(layer.input_shapes) > 1 else None
        if layer.op_type == "MatMul" and b_shape is not None and list(b_shape) != list(layer.weight_shape):
            return no("the weight is the MatMul's first input; MatMulNBits needs it as the second")
        return _float_weight(layer)

    def estimate(self, layer: LayerInfo, params: Params, before: LayerEstimate) -> LayerEstimate:
        w, b, frac = _scaled(layer, before)
        ws = layer.weight_shape
        k, n = (ws[1], ws[0]) if layer.op_type == "Gemm" and layer.attrs.get("transB", 0) else (ws[0], ws[1])
        n = max(int(n * min(frac, 1.0)), 1)
        blocks = -(-k // params.block_size)
        packed = n * blocks * params.block_size * params.bits // 8  # K is padded to whole blocks
        scales = n * blocks * SCALE_BYTES
        if params.algorithm == "hqq":
            zps = n * blocks * SCALE_BYTES  # HQQ keeps float zero points
        else:
            zps = 0 if params.symmetric else n * -(-blocks * params.bits // 8)
        nbytes = packed + scales + zps + b * 4
        notes = [
            f"{params.bits}-bit weights in blocks of {params.block_size} ({params.algorithm}); float activations"
        ]
        if k % params.block_size:
            notes.append(f"K={k} is padded to {blocks * params.block_size} (block {params.block_size})")
        if layer.op_type == "Gemm":
            notes.append("Gemm becomes MatMulNBits + Add (bias stays float32)")
        return LayerEstimate(before.params, before.macs, int(nbytes), notes=notes)

    def apply(self, model: onnx.ModelProto, plan: dict[str, Params], ctx: ApplyContext) -> onnx.ModelProto:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        model = _copy(model)
        ob.gemm_to_matmul(model, plan)
        keys = ("bits", "block_size", "algorithm", "symmetric", "accuracy_level")
        groups = _grouped(plan, keys)
        untouched: list[str] = []
        for gi, ((bits, block, algo, sym, acc), names) in enumerate(groups.items()):
            ctx.progress(gi / len(groups), f"{bits}-bit {algo}: {len(names)} layer(s)")
            before = _copy(model)
            # The quantizer's include list does not restrict (op type matches win): exclude the rest.
            exclude = [n.name for n in model.graph.node if n.name not in names]
            algo_config = None
            if algo == "hqq":
                algo_config = HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
            with ob.quiet_ort_logging(), warnings.catch_warnings():
                # HQQ wraps read-only numpy weights in torch tensors (it only reads them).
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                q = MatMulNBitsQuantizer(
                    model,
                    bits=bits,
                    block_size=block,
                    is_symmetric=sym,
                    accuracy_level=acc or None,
                    nodes_to_exclude=exclude,
                    op_types_to_quantize=("MatMul",),
                    algo_config=algo_config,
                )
                q.process()
            model = q.model.model
            untouched += ob.restore_names(before, model, names)
        _warn_unquantized(ctx, self.name, untouched, "its MatMul weight is not a constant 2-D initializer")
        ctx.progress(1.0, "int4 done")
        return ob.finish(model)


# ---------------------------------------------------------------------- fp16


class Fp16Params(Params):
    """Weights and arithmetic in float16; model inputs/outputs stay float32."""

    bits: Literal[16] = 16


class Fp16(BaseTechnique):
    """`onnxruntime.transformers.float16` on the chosen layers (Casts at fp32 boundaries)."""

    name: ClassVar[str] = "fp16"
    label: ClassVar[str] = "FP16"
    stage: ClassVar[Stage] = Stage.QUANTIZE
    Params: ClassVar[type[Params]] = Fp16Params
    primary_param: ClassVar[str | None] = "bits"
    description: ClassVar[str] = (
        "float16 weights and math for the chosen layers; halves their size. On CPU it is a size "
        "win, rarely a speed win (few fp16 kernels, Casts at region borders)."
    )

    def applies_to(self, layer: LayerInfo) -> Support:
        if layer.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"):
            return no(f"fp16 handles Conv, Gemm, MatMul and Gather layers, not {layer.op_type}")
        return _float_weight(layer)

    def estimate(self, layer: LayerInfo, params: Params, before: LayerEstimate) -> LayerEstimate:
        notes = ["float16 weights; Casts where the fp16 region meets float32 layers"]
        return LayerEstimate(before.params, before.macs, int(before.weight_bytes // 2), notes=notes)

    def apply(self, model: onnx.ModelProto, plan: dict[str, Params], ctx: ApplyContext) -> onnx.ModelProto:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = _copy(model)
        region = _region(model, set(plan))
        block = [n.name for n in model.graph.node if n.name not in region]
        before = _copy(model)
        has_shapes = len(model.graph.value_info) > 0
        with ob.quiet_ort_logging():
            out = convert_float_to_float16(
                copy.deepcopy(model),
                keep_io_types=True,
                node_block_list=block,
                # Shapes were inferred by the loader/pipeline; ONNX inference fails above 2 GB.
                disable_shape_infer=has_shapes or ob.is_large(model),
            )
        ob.restore_names(before, out, plan)
        ob.drop_cast_round_trips(out)
        ctx.progress(1.0, "fp16 done")
        return ob.finish(out)


def quantization_techniques() -> list[type[BaseTechnique]]:
    """The four techniques of this plugin, in the order the GUI lists them."""
    return [Int8Dynamic, Int8Static, Int4WeightOnly, Fp16]
