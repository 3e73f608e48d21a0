"""Structural diff of two ONNX models: what a recipe did to each layer.

Layers of A are matched in B by node name, and to the `X/...` nodes a technique derived from X
(SVD: X/svd_a + X/svd_b; Tucker: X/tucker_in/core/out). Per layer it reports shapes, params,
MACs, bytes, precision (fp32 / fp16 / int8 QDQ / int8 QOperator / MatMulNBits int4 / k-means
codebook), sparsity, which output channels were pruned and the rank of a low-rank split.

Weights are compared in their *effective* float form (dequantized, codebook looked up), so pruned
channels are found even after the pruned layer was quantized. All numbers are read from the two
graphs (estimated from structure, not measured).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from studio.core.graph import WEIGHTED_OPS, ModelAnalysis, analyze
from studio.core.onnx_utils import GraphIndex, get_attr, model_nbytes, tensor_array, tensor_nbytes

ROW_MATCH_TOL = 0.1  # relative distance under which a kept row "is" an original row (int8 error ~1%)
MAX_LISTED = 64  # pruned indices listed in full up to this many


@dataclass
class WeightView:
    """A weight as the layer sees it: float array in [out_channels, rest] layout + how it is stored."""

    array: np.ndarray | None  # [C_out, -1] float32 (None when it cannot be decoded)
    precision: str  # "fp32", "fp16", "int8 QDQ per-channel", "int4 MatMulNBits (block 32)", ...
    inits: list[str]  # initializers that hold it (weight, scales, zero points, codebook, ...)
    in_channels: int | None = None
    shape: list[int] = field(default_factory=list)  # the decoded weight's own shape


@dataclass
class LayerDelta:
    """What happened to one layer of A (or a new weighted node of B when status is "added")."""

    name: str
    status: str  # unchanged | changed | removed | added
    op_a: str | None
    ops_b: list[str]
    nodes_b: list[str]
    weight_shape_a: list[int] | None
    weight_shapes_b: list[list[int]]
    params_a: int
    params_b: int
    macs_a: int
    macs_b: int
    bytes_a: int
    bytes_b: int
    precision_a: str
    precision_b: str
    sparsity_a: float | None
    sparsity_b: float | None
    pruned: dict | None = None  # {"n_pruned", "n_total", "kept": [..] | None, "pruned": [..] | None}
    inputs_reduced: tuple[int, int] | None = None  # (in channels before, after)
    split: dict | None = None  # {"kind": "svd"|"tucker"|"split", "parts": [...], "ranks": [...]}
    notes: list[str] = field(default_factory=list)

    def changes(self, *, precision: bool = True) -> list[str]:
        """Human-readable one-liners of every change (the CLI and the report print these);
        `precision=False` leaves out the precision change (for tables with a precision column)."""
        out = []
        if self.status == "removed":
            return [f"removed ({self.op_a})"]
        if self.status == "added":
            return [f"added {'+'.join(self.ops_b)}"]
        if self.split:
            ranks = ", ".join(str(r) for r in self.split["ranks"])
            parts = " + ".join(p.split("/")[-1] for p in self.split["parts"])
            out.append(f"{self.split['kind']} split into {parts} (rank {ranks})")
        if self.pruned:
            p = self.pruned
            line = f"pruned {p['n_pruned']} of {p['n_total']} output channels"
            if p.get("pruned") is not None:
                line += f": {_short_list(p['pruned'])}"
            out.append(line)
        if self.inputs_reduced:
            a, b = self.inputs_reduced
            out.append(f"input channels {a} → {b} (its producer was pruned)")
        if precision and self.precision_a != self.precision_b:
            out.append(f"precision {self.precision_a} → {self.precision_b}")
        # Rounding to the zero point makes zeros too (int8 ~1%, int4 ~12%): only a bigger jump is pruning.
        quantized = not self.precision_b.startswith(("fp32", "fp16"))
        if (
            self.sparsity_a is not None
            and self.sparsity_b is not None
            and self.sparsity_b - self.sparsity_a > (0.25 if quantized else 0.05)
        ):
            out.append(f"sparsity {self.sparsity_a:.0%} → {self.sparsity_b:.0%}")
        if not out and self.ops_b != [self.op_a]:
            out.append(f"op {self.op_a} → {'+'.join(self.ops_b)}")
        if not out and self.status == "changed" and (precision or self.precision_a == self.precision_b):
            out.append("weights changed")
        return out + self.notes


@dataclass
class ModelDiff:
    layers: list[LayerDelta]
    added_nodes: list[tuple[str, str]]  # (name, op_type) in B only
    removed_nodes: list[tuple[str, str]]  # (name, op_type) in A only
    totals: dict  # {"params": (a, b), "macs": (a, b), "weight_bytes": (a, b), "model_bytes": (a, b)}

    def changed(self) -> list[LayerDelta]:
        return [d for d in self.layers if d.status != "unchanged"]

    def layer(self, name: str) -> LayerDelta:
        for d in self.layers:
            if d.name == name:
                return d
        raise KeyError(name)

    def op_counts(self, which: str = "added") -> dict[str, int]:
        nodes = self.added_nodes if which == "added" else self.removed_nodes
        out: dict[str, int] = {}
        for _, op in nodes:
            out[op] = out.get(op, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = "estimated (from the graphs)"
        for layer, obj in zip(d["layers"], self.layers):
            layer["changes"] = obj.changes()
        return d

    def summary_lines(self) -> list[str]:
        """Totals first, then one line per changed layer, then added/removed node counts."""
        out = []
        for key, label in (
            ("model_bytes", "model size"),
            ("weight_bytes", "weight bytes"),
            ("params", "params"),
            ("macs", "MACs/sample"),
        ):
            a, b = self.totals[key]
            out.append(f"{label}: {_fmt(a)} → {_fmt(b)} ({_ratio(a, b)})")
        for d in self.changed():
            out.append(f"{d.name}: " + "; ".join(d.changes()))
        if self.added_nodes:
            out.append("added nodes: " + ", ".join(f"{op}×{n}" for op, n in self.op_counts("added").items()))
        if self.removed_nodes:
            out.append(
                "removed nodes: " + ", ".join(f"{op}×{n}" for op, n in self.op_counts("removed").items())
            )
        return out


def _short_list(xs: list[int]) -> str:
    if len(xs) <= MAX_LISTED:
        return "[" + ", ".join(map(str, xs)) + "]"
    return "[" + ", ".join(map(str, xs[:MAX_LISTED])) + f", … +{len(xs) - MAX_LISTED}]"


def _fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:,}" if isinstance(x, int) else f"{x:.4g}"


def _ratio(a, b) -> str:
    if not a or not b:
        return "—"
    return f"{a / b:.2f}× smaller" if b <= a else f"{b / a:.2f}× larger"


# ---------------------------------------------------------------------- weights


def _out_major(arr: np.ndarray, op: str, node: onnx.NodeProto) -> np.ndarray:
    """Weight in [C_out, rest] layout for every op kind."""
    if op in ("Conv", "QLinearConv", "ConvInteger"):
        return arr.reshape(arr.shape[0], -1)
    if op == "ConvTranspose":
        return np.moveaxis(arr, 1, 0).reshape(arr.shape[1], -1)
    if op == "Gemm":
        return arr if get_attr(node, "transB", 0) else arr.T
    if op == "Gather":
        return arr.reshape(arr.shape[0], -1)
    if arr.ndim == 2:  # MatMul family: [K, N]
        return arr.T
    return arr.reshape(arr.shape[0], -1)


def _trace_const(value: str, idx: GraphIndex, depth: int = 0) -> tuple[np.ndarray, str, list[str]] | None:
    """Decode the constant behind `value`: (float array, precision, initializers) or None."""
    if depth > 4 or not value:
        return None
    if value in idx.inits:
        t = idx.inits[value]
        arr = tensor_array(t)
        prec = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}.get(
            t.data_type, onnx.TensorProto.DataType.Name(t.data_type).lower()
        )
        return arr.astype(np.float32), prec, [value]
    p = idx.producer.get(value)
    if p is None:
        return None
    if p.op_type == "DequantizeLinear" and p.input[0] in idx.inits:
        q = idx.inits[p.input[0]]
        qa = tensor_array(q).astype(np.float32)
        scale = idx.init_array(p.input[1])
        zp = idx.init_array(p.input[2]) if len(p.input) > 2 and p.input[2] else None
        if scale is None:
            return None
        axis = get_attr(p, "axis", 1)
        shape = [1] * qa.ndim
        per_channel = scale.size > 1
        if per_channel:
            shape[axis] = -1
        zp_f = 0.0 if zp is None else zp.astype(np.float32).reshape(shape if per_channel else ())
        arr = (qa - zp_f) * scale.astype(np.float32).reshape(shape if per_channel else ())
        bits = onnx.TensorProto.DataType.Name(q.data_type).lower()
        prec = f"{bits} QDQ {'per-channel' if per_channel else 'per-tensor'}"
        inits = [n for n in p.input if n in idx.inits]
        return arr, prec, inits
    if p.op_type in ("Cast", "Identity"):
        inner = _trace_const(p.input[0], idx, depth + 1)
        if inner is None:
            return None
        arr, prec, inits = inner
        return arr, prec if p.op_type == "Identity" else f"{prec} (cast)", inits
    if p.op_type == "Gather" and p.input[0] in idx.inits:
        cb = idx.inits[p.input[0]]
        ind = _trace_const(p.input[1], idx, depth + 1)
        if ind is None or len(cb.dims) != 1:
            return None
        ind_arr, ind_prec, ind_inits = ind
        arr = tensor_array(cb).astype(np.float32)[ind_arr.astype(np.int64)]
        idx_type = ind_prec.replace(" (cast)", "")
        prec = f"k-means {int(cb.dims[0])} clusters ({idx_type} idx + codebook)"
        return arr, prec, [p.input[0], *ind_inits]
    if p.op_type == "Reshape" and p.input[1] in idx.inits:
        inner = _trace_const(p.input[0], idx, depth + 1)
        if inner is None:
            return None
        arr, prec, inits = inner
        return arr.reshape(tuple(int(x) for x in tensor_array(idx.inits[p.input[1]]))), prec, inits
    return None


def _weight_view(node: onnx.NodeProto, idx: GraphIndex) -> WeightView | None:
    """The decoded weight of a weighted node, or None when it has no constant weight."""
    op = node.op_type
    ins = list(node.input)

    def inp(i):
        return ins[i] if len(ins) > i else ""

    if op == "MatMulNBits":
        return _nbits_view(node, idx)
    if op in ("QLinearConv", "QLinearMatMul"):
        w, s, z = inp(3), inp(4), inp(5)
        if w not in idx.inits:
            return None
        qa = tensor_array(idx.inits[w]).astype(np.float32)
        sc = idx.init_array(s)
        zp = idx.init_array(z)
        shape = [-1] + [1] * (qa.ndim - 1) if op == "QLinearConv" else [1, -1]
        per = sc is not None and sc.size > 1
        arr = (qa - (0 if zp is None else zp.astype(np.float32).reshape(shape if per else ()))) * (
            1.0 if sc is None else sc.astype(np.float32).reshape(shape if per else ())
        )
        return WeightView(
            _out_major(arr, op, node),
            f"int8 QOperator {'per-channel' if per else 'per-tensor'}",
            [n for n in (w, s, z) if n in idx.inits],
            _in_channels(arr, op, node),
            list(arr.shape),
        )
    if op in ("ConvInteger", "MatMulInteger"):
        w = inp(1)
        if w not in idx.inits:
            return None
        arr = tensor_array(idx.inits[w]).astype(np.float32)
        zp = idx.init_array(inp(3)) if inp(3) else None
        if zp is not None and zp.size == 1:
            arr = arr - zp.astype(np.float32).reshape(())
        return WeightView(
            _out_major(arr, op, node),
            "int8 integer op (dynamic)",
            [w],
            _in_channels(arr, op, node),
            list(arr.shape),
        )
    if op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedMatMul"):
        cand = inp(1)
        got = _trace_const(cand, idx)
        if got is None and op in ("Gemm", "MatMul"):
            got = _trace_const(inp(0), idx)
        if got is None:
            return None
        arr, prec, inits = got
        bias = _trace_const(inp(2), idx) if op in ("Conv", "ConvTranspose", "Gemm") else None
        if bias is not None:
            inits = inits + bias[2]  # a quantized bias brings its own scale / zero point
        return WeightView(
            _out_major(arr, op, node), prec, inits, _in_channels(arr, op, node), list(arr.shape)
        )
    if op == "Gather":
        got = _trace_const(inp(0), idx)
        if got is None or got[0].ndim < 2:
            return None  # shape lookups and codebook decoders are not layers
        arr, prec, inits = got
        return WeightView(_out_major(arr, op, node), prec, inits, None, list(arr.shape))
    return None


def _in_channels(arr: np.ndarray, op: str, node: onnx.NodeProto) -> int | None:
    if op in ("Conv", "QLinearConv", "ConvInteger"):
        return int(arr.shape[1]) * int(get_attr(node, "group", 1) or 1) if arr.ndim > 1 else None
    if op == "ConvTranspose":
        return int(arr.shape[0])
    if op == "Gemm":
        return int(arr.shape[1] if get_attr(node, "transB", 0) else arr.shape[0])
    if arr.ndim == 2:
        return int(arr.shape[0])
    return None


def _nbits_view(node: onnx.NodeProto, idx: GraphIndex) -> WeightView | None:
    k, n = int(get_attr(node, "K", 0)), int(get_attr(node, "N", 0))
    bits, block = int(get_attr(node, "bits", 4)), int(get_attr(node, "block_size", 32))
    w = node.input[1]
    if w not in idx.inits:
        return None
    inits = [x for x in node.input[1:] if x in idx.inits]
    packed = tensor_array(idx.inits[w]).reshape(n, -1)
    prec = f"int{bits} MatMulNBits (block {block})"
    if bits != 4:
        return WeightView(None, prec, inits, k, [k, n])
    lo, hi = packed & 0x0F, packed >> 4
    q = np.stack([lo, hi], axis=-1).reshape(n, -1)[:, : ((k + block - 1) // block) * block].astype(np.float32)
    scales = idx.init_array(node.input[2]).astype(np.float32).reshape(n, -1)
    zp_name = node.input[3] if len(node.input) > 3 else ""
    if zp_name in idx.inits and idx.inits[zp_name].data_type == onnx.TensorProto.UINT8:
        zp_packed = tensor_array(idx.inits[zp_name]).reshape(n, -1)
        zp = np.stack([zp_packed & 0x0F, zp_packed >> 4], axis=-1).reshape(n, -1)[:, : scales.shape[1]]
        zp = zp.astype(np.float32)
    else:
        zp = np.full_like(scales, 8.0)
    arr = ((q.reshape(n, -1, block) - zp[..., None]) * scales[..., None]).reshape(n, -1)[:, :k]
    return WeightView(arr, prec, inits, k, [k, n])


def _sparsity(a: np.ndarray | None) -> float | None:
    if a is None or a.size == 0:
        return None
    return float(np.count_nonzero(a == 0) / a.size)


def kept_rows(wa: np.ndarray, wb: np.ndarray, tol: float = ROW_MATCH_TOL) -> list[int] | None:
    """Indices of A's rows that B's rows are (in order), or None when they do not all match."""
    if wa.shape[1] != wb.shape[1] or wb.shape[0] > wa.shape[0]:
        return None
    na = np.linalg.norm(wa, axis=1)
    # Relative distance of every B row to every A row (|b - a| / |a|); fine for a few thousand rows.
    d2 = (wb**2).sum(1)[:, None] + (wa**2).sum(1)[None, :] - 2.0 * wb @ wa.T
    dist = np.sqrt(np.maximum(d2, 0.0)) / np.maximum(na[None, :], 1e-12)
    best = dist.argmin(1)
    if not np.all(dist[np.arange(len(best)), best] <= tol):
        return None
    if len(set(best.tolist())) != len(best):
        return None
    return sorted(int(i) for i in best)


# ---------------------------------------------------------------------- matching


def _match(a_names: list[str], b_nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """A layer name -> B nodes standing for it: same name, else `X/...` (or an `X_...` rename)."""
    a_set = set(a_names)
    out: dict[str, list[onnx.NodeProto]] = {n: [] for n in a_names}
    by_len = sorted(a_names, key=len, reverse=True)
    for node in b_nodes:
        if node.name in a_set:
            out[node.name].append(node)
            continue
        for a in by_len:  # longest prefix wins (/fc1/Gemm vs /fc1/Gemm_1)
            rest = node.name[len(a) :]
            if node.name.startswith(a) and rest[:1] in ("/", "_"):
                out[a].append(node)
                break
    return out


def _split_kind(parts: list[onnx.NodeProto]) -> str:
    suffixes = " ".join(p.name.rsplit("/", 1)[-1].lower() for p in parts)
    if "svd" in suffixes:
        return "svd"
    if "tucker" in suffixes:
        return "tucker"
    if "cp" in suffixes.split("_"):
        return "cp"
    if len(parts) == 3 and all(p.op_type == "Conv" for p in parts):
        return "tucker"
    return "low-rank" if len(parts) == 2 else "split"


def diff_models(a: onnx.ModelProto, b: onnx.ModelProto) -> ModelDiff:
    """Per-layer structural diff of B against A (see the module docstring)."""
    ana, anb = analyze(a, with_stats=False), analyze(b, with_stats=False)
    ia, ib = GraphIndex(a), GraphIndex(b)
    b_layers = anb.by_name()
    weighted_b = []
    for n in b.graph.node:
        if n.op_type in WEIGHTED_OPS:
            v = _weight_view(n, ib)
            if v is not None:
                weighted_b.append((n, v))
    b_views = {n.name: v for n, v in weighted_b}
    matches = _match([la.name for la in ana.layers], [n for n, _ in weighted_b])
    matched_b: set[str] = set()
    deltas: list[LayerDelta] = []
    for la in ana.layers:
        node_a = ia.nodes[la.name]
        va = _weight_view(node_a, ia)
        parts = matches[la.name]
        matched_b.update(p.name for p in parts)
        if not parts:
            deltas.append(
                LayerDelta(
                    la.name,
                    "removed",
                    la.op_type,
                    [],
                    [],
                    la.weight_shape,
                    [],
                    la.params,
                    0,
                    la.macs,
                    0,
                    la.weight_bytes,
                    0,
                    va.precision if va else la.dtype,
                    "—",
                    _sparsity(va.array if va else None),
                    None,
                )  # fmt: skip
            )
            continue
        deltas.append(_layer_delta(la, node_a, va, parts, b_views, b_layers, ib))
    for n, v in weighted_b:
        if n.name in matched_b:
            continue
        lb = b_layers.get(n.name)
        deltas.append(
            LayerDelta(
                n.name,
                "added",
                None,
                [n.op_type],
                [n.name],
                None,
                [v.shape],
                0,
                _params_of(v, ib),
                0,
                lb.macs if lb else 0,
                0,
                sum(tensor_nbytes(ib.inits[x]) for x in v.inits),
                "—",
                v.precision,
                None,
                _sparsity(v.array),
            )  # fmt: skip
        )
    names_a = {n.name: n.op_type for n in a.graph.node}
    names_b = {n.name: n.op_type for n in b.graph.node}
    added = [(n, op) for n, op in names_b.items() if n not in names_a]
    removed = [(n, op) for n, op in names_a.items() if n not in names_b]
    totals = {
        "params": (ana.total_params, anb.total_params),
        "macs": (ana.total_macs, _total_macs(deltas, anb)),
        "weight_bytes": (ana.total_weight_bytes, anb.total_weight_bytes),
        "model_bytes": (model_nbytes(a), model_nbytes(b)),  # external tensors counted inline
    }
    return ModelDiff(deltas, added, removed, totals)


def _total_macs(deltas: list[LayerDelta], anb: ModelAnalysis) -> int:
    # Layers analyze() cannot see (k-means decoded weights) still compute: count them via deltas.
    return sum(d.macs_b for d in deltas)


def _params_of(v: WeightView, ib: GraphIndex) -> int:
    return sum(int(np.prod(ib.inits[x].dims)) for x in v.inits if x in ib.inits)


def _layer_delta(la, node_a, va, parts, b_views, b_layers, ib) -> LayerDelta:
    views = [b_views[p.name] for p in parts]
    shapes_b = [v.shape for v in views]
    # Stored elements: weights + bias, or for quantized layers the packed payload (scales excluded).
    params_b = 0
    for p, v in zip(parts, views):
        lb = b_layers.get(p.name)
        if lb is not None and lb.params:
            params_b += lb.params
        elif v.array is not None:
            params_b += int(v.array.size)
    macs_b = 0
    for p, v in zip(parts, views):
        lb = b_layers.get(p.name)
        if lb is not None:
            macs_b += lb.macs
        elif v.array is not None and va is not None and va.array is not None:
            macs_b += int(la.macs * v.array.size / max(va.array.size, 1))  # decoded weights compute alike
    bytes_b = sum(tensor_nbytes(ib.inits[x]) for v in views for x in v.inits if x in ib.inits)
    prec_b = ", ".join(dict.fromkeys(v.precision for v in views))
    arrays_b = [v.array for v in views if v.array is not None]
    sp_b = (
        float(sum(np.count_nonzero(x == 0) for x in arrays_b) / max(sum(x.size for x in arrays_b), 1))
        if arrays_b
        else None
    )
    d = LayerDelta(
        la.name, "changed", la.op_type, [p.op_type for p in parts], [p.name for p in parts],
        la.weight_shape, shapes_b, la.params, params_b, la.macs, macs_b, la.weight_bytes, bytes_b,
        va.precision if va else la.dtype, prec_b, _sparsity(va.array if va else None), sp_b,
    )  # fmt: skip
    if len(parts) > 1:
        ranks = [int(v.array.shape[0]) for v in views[:-1] if v.array is not None]
        d.split = {"kind": _split_kind(parts), "parts": [p.name for p in parts], "ranks": ranks}
    elif va is not None and va.array is not None and views[0].array is not None:
        wa, wb = va.array, views[0].array
        if wb.shape[0] < wa.shape[0]:
            kept = kept_rows(wa, wb) if wa.shape[1] == wb.shape[1] else None
            n_pruned = wa.shape[0] - wb.shape[0]
            d.pruned = {
                "n_pruned": n_pruned,
                "n_total": int(wa.shape[0]),
                "kept": kept if kept is not None and len(kept) <= 4 * MAX_LISTED else None,
                "pruned": sorted(set(range(wa.shape[0])) - set(kept)) if kept is not None else None,
            }
        elif wb.shape == wa.shape:
            za = np.all(wa == 0, axis=1)
            zb = np.all(wb == 0, axis=1)
            newly = np.flatnonzero(zb & ~za)
            if len(newly):
                d.notes.append(
                    f"zeroed {len(newly)} of {wa.shape[0]} output channels: {_short_list(newly.tolist())}"
                )
        if va.in_channels and views[0].in_channels and views[0].in_channels < va.in_channels:
            d.inputs_reduced = (va.in_channels, views[0].in_channels)
    same = (
        [p.name for p in parts] == [la.name]
        and parts[0].op_type == la.op_type
        and va is not None
        and views[0].array is not None
        and va.array is not None
        and va.precision == views[0].precision
        and va.array.shape == views[0].array.shape
        and np.array_equal(va.array, views[0].array)
    )
    if same:
        d.status = "unchanged"
    return d
