"""Glue between our ModelProto-in/ModelProto-out contract and onnxruntime.quantization.

ORT's quantizers read and write files and rename the nodes they touch (`X` -> `X_quant`,
`X_Q4`, `X_MatMul` ...). These helpers run them in a temporary folder and then restore our
naming convention: the quantized compute node keeps the layer name `X`, helper nodes become
`X/<suffix>`, and layers the plan did not name come back exactly as they were.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from studio.core.onnx_utils import (
    GraphIndex,
    all_names,
    get_attr,
    remove_unused_initializers,
    tensor_array,
    topo_sort,
    unique_name,
)

# Ops that carry a quantized layer's arithmetic: they take the layer's name after renaming.
MAIN_QUANT_OPS = {
    "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulNBits", "QLinearMatMul",
    "QLinearConv", "QGemm", "MatMul", "Conv", "Gemm",
}  # fmt: skip
# Protobuf's hard limit; above it ORT must write the model with external data.
_PROTO_LIMIT = 2**31 - 1 - 64 * 2**20


@functools.cache
def cpu_has_vnni() -> bool:
    """True when this x86 CPU has VNNI (int8 dot products without u8*s8 saturation)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        flags = ""
    if not flags:
        try:  # macOS / others: lscpu may exist
            flags = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return False
    flags = flags.lower()
    return "vnni" in flags  # avx512_vnni, avx_vnni, avx_vnni_int8


def auto_reduce_range(value: bool | None) -> bool:
    """ORT's CPU guidance: 7-bit weights only on x86 without VNNI (u8*s8 pairs may saturate)."""
    if value is not None:
        return value
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    return not cpu_has_vnni()


def is_large(model: onnx.ModelProto) -> bool:
    return model.ByteSize() > _PROTO_LIMIT


@contextmanager
def quiet_ort_logging():
    """ORT's quantizers log 'please pre-process' warnings per call; keep the CLI/GUI output clean."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def run_file_tool(
    model: onnx.ModelProto, fn: Callable[[onnx.ModelProto, str, bool], None]
) -> onnx.ModelProto:
    """Call an ORT tool `fn(model, out_path, external)` that writes a file; load the result back."""
    external = is_large(model)
    with tempfile.TemporaryDirectory(prefix="studio-quant-") as d:
        out = os.path.join(d, "quantized.onnx")
        with quiet_ort_logging():
            fn(model, out, external)
        # External data (if any) sits beside `out`; onnx.load pulls it into memory before cleanup.
        return onnx.load(out, load_external_data=True)


# ---------------------------------------------------------------------- calibration


class ArrayDataReader:
    """onnxruntime CalibrationDataReader over in-memory arrays (N samples on axis 0)."""

    def __init__(self, model: onnx.ModelProto, arrays: dict[str, np.ndarray], batch_size: int = 16):
        from studio.core.errors import DatasetError

        inits = {t.name for t in model.graph.initializer}
        self.inputs = [i for i in model.graph.input if i.name not in inits]
        missing = [i.name for i in self.inputs if i.name not in arrays]
        if missing:
            raise DatasetError(
                f"calibration data has no array for model input(s) {missing}; it has {sorted(arrays)}",
                hint="name the arrays after the model's inputs",
            )
        from onnx.helper import tensor_dtype_to_np_dtype

        self.arrays = {}
        for i in self.inputs:
            dt = tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            self.arrays[i.name] = np.ascontiguousarray(arrays[i.name], dtype=dt)
        self.n = len(next(iter(self.arrays.values())))
        # A model exported with a fixed batch dimension must be fed exactly that many samples.
        fixed = [
            i.type.tensor_type.shape.dim[0].dim_value
            for i in self.inputs
            if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].HasField("dim_value")
        ]
        self.fixed_batch = bool(fixed and fixed[0] > 0)
        self.batch = fixed[0] if self.fixed_batch else batch_size
        self.pos = 0

    def get_next(self) -> dict | None:
        end = min(self.pos + self.batch, self.n)
        if self.pos >= self.n or (self.fixed_batch and end - self.pos < self.batch):
            return None
        feed = {k: v[self.pos : end] for k, v in self.arrays.items()}
        self.pos = end
        return feed

    def __iter__(self):
        return self

    def __next__(self):
        r = self.get_next()
        if r is None:
            raise StopIteration
        return r

    def __len__(self) -> int:
        return self.n

    def rewind(self) -> None:
        self.pos = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pos = start_index


# ---------------------------------------------------------------------- Gemm -> MatMul


def gemm_to_matmul(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """Rewrite the named plain Gemms (alpha=beta=1, transA=0, initializer B) as MatMul `X` plus
    `Add` `X/bias`, in place. Weight-only int8/int4 kernels exist for MatMul only. Returns the
    names converted."""
    names = set(names)
    idx = GraphIndex(model)
    taken = all_names(model)
    done = []
    new_nodes = []
    for node in model.graph.node:
        if node.name not in names or node.op_type != "Gemm" or not gemm_is_plain(node):
            new_nodes.append(node)
            continue
        b = node.input[1]
        if b not in idx.inits:
            new_nodes.append(node)
            continue
        if get_attr(node, "transB", 0):
            w = tensor_array(idx.inits[b]).T
            b = unique_name(taken, f"{b}_t")
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), b))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = unique_name(taken, f"{node.output[0]}_matmul") if has_bias else node.output[0]
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], b], [mm_out], name=node.name))
        if has_bias:
            new_nodes.append(
                onnx.helper.make_node(
                    "Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}/bias"
                )
            )
        done.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    remove_unused_initializers(model)
    return done


def gemm_is_plain(node: onnx.NodeProto) -> bool:
    return (
        get_attr(node, "alpha", 1.0) == 1.0
        and get_attr(node, "beta", 1.0) == 1.0
        and not get_attr(node, "transA", 0)
    )


# ---------------------------------------------------------------------- naming repair


def restore_names(
    before: onnx.ModelProto, after: onnx.ModelProto, planned: Iterable[str], *, gemm_rewritten: bool = False
) -> list[str]:
    """Give ORT's output our naming convention, in place; returns the planned layers that ORT
    left unquantized (still their original op, same name) so the caller can warn.

    * the main quantized op derived from planned `X` (named `X_quant`, `X_Q4`, ...) becomes `X`;
    * other nodes ORT derived from `X` become `X/<rest>`; unnamed new nodes get unique names;
    * if ORT rewrote an unplanned Gemm `G` into `G_MatMul` + `G_Add` (its dynamic mode does this
      to every Gemm), the original `G` is put back.
    """
    planned = set(planned)
    orig_nodes = {n.name: n for n in before.graph.node}
    g = after.graph
    if gemm_rewritten:
        _restore_gemms(before, after, planned)
    cur_names = {n.name for n in g.node}
    taken = all_names(after)
    prefixes = sorted(planned, key=len, reverse=True)
    renames: dict[str, str] = {}
    for node in g.node:
        if node.name in orig_nodes:
            continue
        owner = next((p for p in prefixes if node.name.startswith(p + "_")), None)
        if owner is None:
            if not node.name:
                node.name = unique_name(taken, f"quant/{node.op_type}")
            continue
        if owner not in cur_names and node.op_type in MAIN_QUANT_OPS and owner not in renames.values():
            renames[node.name] = owner
        else:
            renames[node.name] = unique_name(taken, f"{owner}/{node.name[len(owner) + 1 :]}")
    for node in g.node:
        if node.name in renames:
            node.name = renames[node.name]
    final = {n.name: n for n in g.node}
    return [
        x for x in planned if x in final and x in orig_nodes and final[x].op_type == orig_nodes[x].op_type
    ]


def _restore_gemms(before: onnx.ModelProto, after: onnx.ModelProto, planned: set[str]) -> None:
    g = after.graph
    present = {n.name for n in g.node}
    originals = [
        n
        for n in before.graph.node
        if n.op_type == "Gemm" and n.name not in planned and n.name not in present
    ]
    if not originals:
        return
    by_name = {n.name: i for i, n in enumerate(g.node)}
    drop: set[int] = set()
    insert_at: dict[int, onnx.NodeProto] = {}
    for orig in originals:
        parts = [by_name.get(orig.name + s) for s in ("_MatMul", "_Add", "_Transpose")]
        parts = [p for p in parts if p is not None]
        # Only undo an untouched rewrite: a still-float MatMul, not one ORT went on to quantize.
        if not parts or g.node[parts[0]].op_type != "MatMul":
            continue
        drop.update(parts)
        insert_at[min(parts)] = orig
    nodes = []
    for i, n in enumerate(g.node):
        if i in insert_at:
            nodes.append(insert_at[i])
        if i not in drop:
            nodes.append(n)
    # Original initializers (the untransposed B) are still in the model: ORT keeps them.
    inits = {t.name for t in g.initializer}
    for orig in insert_at.values():
        for name in orig.input:
            if name and name not in inits:
                src = next((t for t in before.graph.initializer if t.name == name), None)
                if src is not None:
                    g.initializer.append(src)
                    inits.add(name)
    del g.node[:]
    g.node.extend(nodes)
    remove_unused_initializers(after)


def drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Remove float32 -> float16 -> float32 Cast pairs, in place; returns how many.

    The fp16 converter wraps every blocked node in Casts, so two neighbouring float32 nodes get
    a pointless (and lossy) round trip through float16 between them."""
    g = model.graph
    idx = GraphIndex(model)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def elem(v):
        vi = idx.value_info.get(v)
        return vi.type.tensor_type.elem_type if vi is not None else None

    rewire: dict[str, str] = {}
    dead: set[str] = set()
    for a in g.node:
        if a.op_type != "Cast" or get_attr(a, "to") != f16 or a.output[0] in idx.graph_outputs:
            continue
        src = a.input[0]
        if elem(src) != f32:  # unknown dtype: leave it alone
            continue
        users = idx.consumers.get(a.output[0], [])
        if not users or any(u.op_type != "Cast" or get_attr(u, "to") != f32 for u in users):
            continue
        if any(u.output[0] in idx.graph_outputs for u in users):
            continue
        for u in users:
            rewire[u.output[0]] = src
            dead.add(u.name)
        dead.add(a.name)
    if not dead:
        return 0
    keep = [n for n in g.node if n.name not in dead]
    for n in keep:
        for i, v in enumerate(n.input):
            if v in rewire:
                n.input[i] = rewire[v]
    del g.node[:]
    g.node.extend(keep)
    return len(dead) // 2


def name_weight_dequantizers(model: onnx.ModelProto, planned: Iterable[str]) -> None:
    """Rename the DequantizeLinear nodes that feed only layer `X` its weight/bias to
    `X/weight_dq`, `X/bias_dq` (ORT names them after the tensor)."""
    idx = GraphIndex(model)
    taken = {n.name for n in model.graph.node}
    for x in planned:
        node = idx.nodes.get(x)
        if node is None:
            continue
        for i, role in ((1, "weight"), (2, "bias")):
            if len(node.input) <= i:
                continue
            p = idx.producer.get(node.input[i])
            if (
                p is not None
                and p.op_type == "DequantizeLinear"
                and p.input[0] in idx.inits
                and len(idx.consumers.get(node.input[i], [])) == 1
            ):
                taken.discard(p.name)
                p.name = unique_name(taken, f"{x}/{role}_dq")


def finish(model: onnx.ModelProto) -> onnx.ModelProto:
    """Common tail: node order, dead initializers, stale value_info dropped (pipeline re-infers)."""
    topo_sort(model)
    remove_unused_initializers(model)
    return model
