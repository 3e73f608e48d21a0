"""Small graph-editing helpers every technique shares (one place for protobuf surgery).

onnx_ir is the tool for larger rewrites; these helpers cover the common lookups and edits on a
plain ModelProto so plugins do not each re-implement them.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_NP_OF = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.BOOL: np.bool_,
}


# Key under a tensor's external_data naming the model's folder (set by load_model). onnx knows
# the key; ONNX Runtime does not, so `ort_model_bytes` strips it before a session sees the model.
EXTERNAL_BASE_KEY = "basepath"


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def external_info(t: onnx.TensorProto, base_dir: str | None = None) -> tuple[Path, int, int | None]:
    """(file, offset, length) of an external tensor; ModelLoadError when its file lies outside
    the model's folder (after following symlinks) or the folder is unknown."""
    from studio.core.errors import ModelLoadError

    kv = {e.key: e.value for e in t.external_data}
    loc = kv.get("location", "")
    base = base_dir or kv.get(EXTERNAL_BASE_KEY)
    if not base:
        raise ModelLoadError(
            f"tensor {t.name!r} keeps its data in {loc!r}, but the model's folder is unknown",
            hint="open the model with load_model so external data can be found",
        )
    base_real = Path(base).resolve()
    target = (base_real / loc).resolve()
    if not loc or os.path.isabs(loc) or not str(target).startswith(str(base_real) + os.sep):
        raise ModelLoadError(
            f"tensor {t.name!r} points at external data {loc!r} outside the model's folder",
            hint="external data files must sit beside the model",
        )
    try:
        offset = int(kv.get("offset") or 0)
        length = int(kv["length"]) if kv.get("length") else None
    except ValueError as e:
        raise ModelLoadError(f"tensor {t.name!r}: bad external data offset/length ({e})") from e
    if offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(f"tensor {t.name!r}: negative external data offset/length")
    return target, offset, length


def read_external_bytes(t: onnx.TensorProto, base_dir: str | None = None) -> bytes:
    """The bytes of an external tensor (one copy); ModelLoadError when the file is short."""
    from studio.core.errors import ModelLoadError

    path, offset, length = external_info(t, base_dir)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read() if length is None else f.read(length)
    except OSError as e:
        raise ModelLoadError(f"tensor {t.name!r}: cannot read external data {path.name!r}: {e}") from e
    if length is not None and len(data) != length:
        raise ModelLoadError(
            f"tensor {t.name!r}: external data {path.name!r} holds {len(data)} of {length} bytes",
            hint="the data file is truncated",
        )
    return data


def tensor_array(t: onnx.TensorProto, base_dir: str | None = None) -> np.ndarray:
    """Read-only array view of an initializer; avoids the copy numpy_helper makes for raw data.
    External tensors are memory-mapped from their file (zero-copy: pages load as they are read,
    into the page cache, so a 1 GB weight costs about 1 GB of RSS only while being touched)."""
    if t.HasField("raw_data") and t.data_type in _NP_OF and sys.byteorder == "little":
        if t.data_type == onnx.TensorProto.BOOL:
            return numpy_helper.to_array(t)
        return np.frombuffer(t.raw_data, dtype=_NP_OF[t.data_type]).reshape(tuple(t.dims))
    if is_external(t):
        if t.data_type in _NP_OF and sys.byteorder == "little":
            return _mapped_array(t, base_dir)
        c = onnx.TensorProto()  # other dtypes (bfloat16, int4, strings): decode a loaded copy
        c.CopyFrom(t)
        c.raw_data = read_external_bytes(t, base_dir)
        c.data_location = onnx.TensorProto.DEFAULT
        del c.external_data[:]
        return numpy_helper.to_array(c)
    return numpy_helper.to_array(t)


def _mapped_array(t: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    from studio.core.errors import ModelLoadError

    path, offset, length = external_info(t, base_dir)
    dt = np.dtype(_NP_OF[t.data_type])
    shape = tuple(int(d) for d in t.dims)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if length is not None and length != nbytes:
        raise ModelLoadError(
            f"tensor {t.name!r} declares shape {list(shape)} ({nbytes} bytes) but its external "
            f"data holds {length} bytes"
        )
    if nbytes == 0:
        return np.empty(shape, dt)
    try:
        if path.stat().st_size < offset + nbytes:
            raise ModelLoadError(
                f"tensor {t.name!r}: external data {path.name!r} is shorter than offset + length",
                hint="the data file is truncated",
            )
        mm = np.memmap(path, dtype=dt, mode="r", offset=offset, shape=shape)
    except OSError as e:
        raise ModelLoadError(f"tensor {t.name!r}: cannot map external data {path.name!r}: {e}") from e
    return mm.view(np.ndarray)  # plain ndarray (the map stays alive as its base), not writeable


def external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor (initializers, attributes, subgraphs) whose data lives in a file."""
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(proto) if is_external(t)]


def model_nbytes(proto: onnx.ModelProto) -> int:
    """Serialized size of a model with its external tensors counted as if inline (their data
    length; a few bytes of field overhead apart), without reading them. `ByteSize()` alone
    counts an external tensor as its file reference only."""
    return proto.ByteSize() + sum(tensor_nbytes(t) for t in external_tensors(proto))


def _has_base_key(t: onnx.TensorProto) -> bool:
    return any(e.key == EXTERNAL_BASE_KEY for e in t.external_data)


def ort_model_bytes(proto: onnx.ModelProto) -> tuple[bytes, str | None]:
    """Serialized model for ONNX Runtime plus the folder its external data lives in (None when
    it has none). External tensors stay external: ORT reads them itself, so no in-memory copy of
    the weights is made here. Strips our folder key, which ORT rejects."""
    if not any(_has_base_key(t) for t in external_tensors(proto)):
        return proto.SerializeToString(), None
    m = onnx.ModelProto()
    m.CopyFrom(proto)  # cheap: external tensors hold no data
    folder = None
    for t in external_tensors(m):
        if not _has_base_key(t):
            continue  # not opened by load_model: left as it is, for ORT to judge
        external_info(t)  # the confinement check again, before ORT reads anything
        kv = [(e.key, e.value) for e in t.external_data if e.key != EXTERNAL_BASE_KEY]
        base = next(e.value for e in t.external_data if e.key == EXTERNAL_BASE_KEY)
        folder = folder or base
        if base != folder:  # data from a second folder (rare): embed it, ORT takes one folder
            t.raw_data = read_external_bytes(t)
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
            continue
        del t.external_data[:]
        for k, v in kv:
            e = t.external_data.add()
            e.key, e.value = k, v
    return m.SerializeToString(), folder


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's data without materialising it."""
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    if t.data_type in _NP_OF:
        return n * np.dtype(_NP_OF[t.data_type]).itemsize
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (n + 1) // 2
    if t.data_type == onnx.TensorProto.BFLOAT16:
        return n * 2
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return n * 4


def dtype_name(data_type: int) -> str:
    return onnx.TensorProto.DataType.Name(data_type).lower()


class GraphIndex:
    """Lookups over one graph: initializers by name, producer of a value, consumers of a value."""

    def __init__(self, model_or_graph):
        g = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
        self.graph = g
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.nodes: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            self.nodes[n.name] = n
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.value_info = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
        self.graph_outputs = {o.name for o in g.output}

    def shape(self, value: str) -> list | None:
        """Static shape of a value: ints for known dims, strings for symbolic, None if unknown."""
        if value in self.inits:
            return list(self.inits[value].dims)
        vi = self.value_info.get(value)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append("?")
        return dims

    def init_array(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else tensor_array(t)

    def const_source(self, value: str) -> str | None:
        """Initializer behind a value, looking through DequantizeLinear / Cast / Identity."""
        if value in self.inits:
            return value
        p = self.producer.get(value)
        if (
            p is not None
            and p.op_type in ("DequantizeLinear", "Cast", "Identity")
            and p.input[0] in self.inits
        ):
            return p.input[0]
        return None


def replace_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """Replace (or add) an initializer by name, keeping its position."""
    new = numpy_helper.from_array(np.ascontiguousarray(array), name)
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(new)
            return
    model.graph.initializer.append(new)


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    used |= _subgraph_inputs(model.graph)
    used |= {o.name for o in model.graph.output}
    removed = {t.name for t in model.graph.initializer if t.name not in used}
    keep = [t for t in model.graph.initializer if t.name not in removed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    # Drop graph inputs that only existed to feed removed initializers (old exporters list them).
    inputs = [i for i in model.graph.input if i.name not in removed]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def _subgraph_inputs(g: onnx.GraphProto) -> set[str]:
    """Names read by nodes of subgraphs (If/Loop/Scan bodies) — they may use outer initializers."""
    out: set[str] = set()
    for n in g.node:
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sg in subs:
                for sn in sg.node:
                    out.update(i for i in sn.input if i)
                out |= _subgraph_inputs(sg)
    return out


def unique_name(existing: set[str], base: str) -> str:
    if base not in existing:
        existing.add(base)
        return base
    i = 1
    while f"{base}_{i}" in existing:
        i += 1
    existing.add(f"{base}_{i}")
    return f"{base}_{i}"


def all_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    s = {t.name for t in g.initializer} | {n.name for n in g.node}
    for n in g.node:
        s.update(n.input)
        s.update(n.output)
    s.update(i.name for i in g.input)
    s.update(o.name for o in g.output)
    return s


def topo_sort(model: onnx.ModelProto) -> None:
    """Reorder nodes topologically (after insertions); raises ValueError on a cycle."""
    g = model.graph
    avail = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                ordered.append(n)
                avail.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            raise ValueError(f"graph has a cycle or a missing input near node {rest[0].name!r}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def get_attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def clear_value_info(model: onnx.ModelProto, names: set[str] | None = None) -> None:
    """Drop stale intermediate shapes (after a rewrite changes them); shape inference refills."""
    keep = [vi for vi in model.graph.value_info if names is not None and vi.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
