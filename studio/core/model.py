"""ModelHandle: the one IR (ONNX) plus where it came from. Loading, normalising, atomic saving."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from studio.core.errors import ModelLoadError, UnsupportedModelError

ONNX_SUFFIXES = {".onnx"}
TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".torchscript", ".ptl"}
MAX_PROTO_BYTES = 2**31 - 1
SMALL_TENSOR_BYTES = 16 << 20  # exact raw_data length checks below this (they copy)


@dataclass
class ModelHandle:
    """An ONNX model in memory plus its provenance. Never written back over `source_path`."""

    proto: onnx.ModelProto
    source_path: Path | None = None
    sha256: str = ""
    source_kind: str = "onnx"  # onnx | torchscript | state_dict | pickle
    onnx_path: Path | None = None  # an ONNX file holding this model (source or cached export)
    torch_source: dict | None = None  # {path, factory, trust_pickle} for fine-tuning
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source_path.stem if self.source_path else (self.proto.graph.name or "model")

    def input_names(self) -> list[str]:
        inits = {t.name for t in self.proto.graph.initializer}
        return [i.name for i in self.proto.graph.input if i.name not in inits]

    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]

    @property
    def base_dir(self) -> Path | None:
        """Folder the model's external data files are resolved against (the ONNX file's)."""
        return Path(self.onnx_path).parent if self.onnx_path else None

    def has_external_data(self) -> bool:
        """True while some tensors still live in their files (as opened: not loaded)."""
        from studio.core.onnx_utils import external_tensors

        return bool(external_tensors(self.proto))

    def materialize(self) -> onnx.ModelProto:
        """Load external tensors into the proto (in place) for code that needs every byte in
        memory; opening keeps them in their files so analysis reads them zero-copy."""
        load_external_into(self.proto, str(self.base_dir) if self.base_dir else None)
        return self.proto

    def serialized(self) -> bytes:
        if not self.has_external_data():
            return self.proto.SerializeToString()
        p = onnx.ModelProto()
        p.CopyFrom(self.proto)
        load_external_into(p, str(self.base_dir) if self.base_dir else None)
        return p.SerializeToString()

    def copy(self) -> ModelHandle:
        p = onnx.ModelProto()
        p.CopyFrom(self.proto)
        return ModelHandle(
            p, self.source_path, self.sha256, self.source_kind, self.onnx_path, self.torch_source
        )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(
    path: str | os.PathLike,
    *,
    factory: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    normalize_graph: bool = True,
) -> ModelHandle:
    """Open an .onnx file (with external data) or a PyTorch file (exported to ONNX once, cached)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a directory, not a model file", hint="pass the .onnx or .pt file inside it"
        )
    suffix = path.suffix.lower()
    torch_source = None
    kind = "onnx"
    onnx_path = path
    if suffix in TORCH_SUFFIXES or (suffix not in ONNX_SUFFIXES and _looks_like_zip_or_pickle(path)):
        try:
            from studio.backends import torch_loader
        except ImportError as e:  # pragma: no cover - torch extra missing
            raise ModelLoadError(f"{path}: PyTorch files need the torch extra ({e})") from e
        onnx_path = torch_loader.export_torch_to_onnx(
            path, factory=factory, trust_pickle=trust_pickle, input_shape=input_shape
        )
        kind = "state_dict" if factory else "torch"
        torch_source = {
            "path": str(path),
            "factory": factory,
            "trust_pickle": trust_pickle,
            "input_shape": list(input_shape) if input_shape else None,
        }
    proto = load_onnx_file(onnx_path)
    handle = ModelHandle(
        proto=proto,
        source_path=path,
        sha256=file_sha256(path),
        source_kind=kind,
        onnx_path=onnx_path,
        torch_source=torch_source,
    )
    if normalize_graph:
        handle.warnings.extend(normalize(handle.proto))
    return handle


def _looks_like_zip_or_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def load_onnx_file(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file; external data must live inside the model's folder."""
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: the file is empty", hint="re-export the model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (
        DecodeError,
        RuntimeWarning,
        ValueError,
        OSError,
        onnx.onnx_cpp2py_export.checker.ValidationError,
    ) as e:
        raise ModelLoadError(
            f"{path}: not a valid ONNX file ({type(e).__name__}: {str(e)[:120]})",
            hint="is it truncated or of another format?",
        ) from e
    except Exception as e:  # protobuf raises a variety of internal errors on garbage
        raise ModelLoadError(
            f"{path}: not a valid ONNX file ({type(e).__name__})",
            hint="is it truncated or of another format?",
        ) from e
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(
            f"{path}: parsed as protobuf but holds no ONNX graph", hint="is it an ONNX model?"
        )
    check_initializers(proto, max_inline_bytes=size)
    _load_external_data_confined(proto, path.parent)
    check_graph_structure(proto)
    return proto


# Typed repeated field holding each data type's values when raw_data is not used (one per element).
_TYPED_FIELD = {
    onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.INT32: "int32_data",
    onnx.TensorProto.INT16: "int32_data", onnx.TensorProto.INT8: "int32_data",
    onnx.TensorProto.UINT16: "int32_data", onnx.TensorProto.UINT8: "int32_data",
    onnx.TensorProto.BOOL: "int32_data", onnx.TensorProto.FLOAT16: "int32_data",
    onnx.TensorProto.UINT32: "uint64_data", onnx.TensorProto.UINT64: "uint64_data",
}  # fmt: skip


def check_initializers(proto: onnx.ModelProto, *, max_inline_bytes: int | None = None) -> None:
    """ModelLoadError when an initializer's dims do not fit the data it holds (negative dims,
    declared sizes beyond the bytes in the file). Never copies big tensor data: in upb protobuf
    both `len(t.raw_data)` and `t.ByteSize()` copy, so large tensors are bounded by the file."""
    from studio.core.onnx_utils import tensor_nbytes

    for t in proto.graph.initializer:
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"initializer {t.name!r} has a negative dimension {list(t.dims)}")
        n = int(np.prod(t.dims, dtype=object)) if len(t.dims) else 1
        want = (
            tensor_nbytes(t)
            if t.data_type in _TYPED_FIELD or t.data_type == onnx.TensorProto.FLOAT16
            else None
        )
        if t.data_location == onnx.TensorProto.EXTERNAL:
            length = next((e.value for e in t.external_data if e.key == "length"), None)
            if want is not None and length is not None and length.isdigit() and int(length) != want:
                raise ModelLoadError(
                    f"initializer {t.name!r} declares shape {list(t.dims)} ({want} bytes) but its "
                    f"external data holds {length} bytes",
                    hint="the file is corrupt or was written by a broken exporter",
                )
            continue
        if t.HasField("raw_data"):
            if want is None:
                continue
            have = None
            if max_inline_bytes is not None and want > max_inline_bytes:
                have = f"at most {max_inline_bytes} (the file's size)"
            elif want <= SMALL_TENSOR_BYTES and len(t.raw_data) != want:
                have = str(len(t.raw_data))
            if have is not None:
                raise ModelLoadError(
                    f"initializer {t.name!r} declares shape {list(t.dims)} ({want} bytes) but holds {have} bytes",
                    hint="the file is corrupt or was written by a broken exporter",
                )
        elif t.data_type in _TYPED_FIELD and n > 0:
            have_n = len(getattr(t, _TYPED_FIELD[t.data_type]))
            if have_n != n:
                raise ModelLoadError(
                    f"initializer {t.name!r} declares shape {list(t.dims)} ({n} values) but holds {have_n}",
                    hint="the file is corrupt or was written by a broken exporter",
                )


def check_graph_structure(proto: onnx.ModelProto) -> None:
    """ModelLoadError when a node reads a value nothing provides, or the main graph has a cycle."""
    g = proto.graph
    provided = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    produced: dict[str, int] = {}
    for k, n in enumerate(g.node):
        for o in n.output:
            produced[o] = k
    for n in g.node:
        for i in n.input:
            if i not in provided and i not in produced:
                raise ModelLoadError(
                    f"node {n.name or n.op_type!r} reads {i!r}, which no node, input or initializer provides",
                    hint="the model is incomplete (a missing initializer?)",
                )
    # Kahn's algorithm over node indices: whatever is left unordered sits on a cycle.
    waiting = [sum(1 for i in n.input if i in produced and i not in provided) for n in g.node]
    users: dict[int, list[int]] = {}
    for k, n in enumerate(g.node):
        for i in n.input:
            if i in produced and i not in provided:
                users.setdefault(produced[i], []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for u in users.get(k, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if done != len(g.node):
        stuck = next(g.node[k] for k, w in enumerate(waiting) if w > 0)
        raise ModelLoadError(
            f"the graph has a cycle (through node {stuck.name or stuck.op_type!r})",
            hint="ONNX graphs must be acyclic",
        )


def _load_external_data_confined(proto: onnx.ModelProto, base: Path) -> None:
    """Check every external tensor's file (inside the model's folder after following symlinks,
    present, long enough) and tag it with the folder. The data stays in its file: tensor_array
    maps it read-only, ORT sessions read it themselves, load_external_into loads it on demand."""
    from studio.core.onnx_utils import EXTERNAL_BASE_KEY, external_info, external_tensors

    base_abs = str(base.resolve())
    for t in external_tensors(proto):
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        # A basepath written in the file is never trusted: the folder is where the model is.
        keep = [(e.key, e.value) for e in t.external_data if e.key != EXTERNAL_BASE_KEY]
        del t.external_data[:]
        for k, v in keep + [(EXTERNAL_BASE_KEY, base_abs)]:
            e = t.external_data.add()
            e.key, e.value = k, v
        target, offset, length = external_info(t)  # raises for paths outside the folder
        if not target.is_file():
            raise ModelLoadError(
                f"tensor {t.name!r}: external data file {loc!r} is missing", hint=f"expected in {base}"
            )
        size = target.stat().st_size
        if offset + (length or 0) > size:
            raise ModelLoadError(
                f"tensor {t.name!r}: external data {loc!r} holds {size} bytes, the tensor needs "
                f"bytes {offset}..{offset + (length or 0)}",
                hint="the data file is truncated",
            )


def load_external_into(proto: onnx.ModelProto, base_dir: str | None = None) -> onnx.ModelProto:
    """Read every external tensor into raw_data (in place) and return the proto. For code that
    needs the whole model in memory (rewriting weights, serialising to one file). Holds one
    tensor twice at a time at most (file bytes, then protobuf's own copy)."""
    from studio.core.onnx_utils import external_tensors, read_external_bytes

    for t in external_tensors(proto):
        data = read_external_bytes(t, base_dir)
        t.raw_data = data
        del data
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    return proto


def normalize(proto: onnx.ModelProto) -> list[str]:
    """Make every exporter's output analysable: unique node names, Constant weights as
    initializers, shapes inferred. Returns warnings (never raises for shape problems)."""
    warnings: list[str] = []
    g = proto.graph
    if not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):
        raise UnsupportedModelError(
            "the model imports no standard ONNX opset", hint="only ai.onnx models are supported"
        )
    seen: set[str] = set()
    for i, n in enumerate(g.node):
        base = n.name or f"{n.op_type}_{i}"
        name = base
        k = 1
        while name in seen:
            name = f"{base}_{k}"
            k += 1
        seen.add(name)
        n.name = name
    # Constant nodes holding tensors (TF/Paddle converters) -> initializers, so weights are visible.
    keep = []
    init_names = {t.name for t in g.initializer}
    for n in g.node:
        if (
            n.op_type == "Constant"
            and n.domain in ("", "ai.onnx")
            and len(n.attribute) == 1
            and n.attribute[0].name == "value"
        ):
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            if t.name not in init_names:
                g.initializer.append(t)
                init_names.add(t.name)
                continue
        keep.append(n)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    warnings.extend(infer_shapes_inplace(proto))
    return warnings


def infer_shapes_inplace(proto: onnx.ModelProto) -> list[str]:
    """Shape inference on a copy without big weights (memory), merged back as value_info."""
    from studio.core.onnx_utils import tensor_nbytes

    g = proto.graph
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    lg = light.graph
    lg.name = g.name
    lg.input.extend(g.input)
    # Outputs without their declared shapes: non-strict inference would otherwise keep a wrong
    # declared shape silently, and the mismatch check below could never fire.
    for o in g.output:
        lo = lg.output.add()
        lo.CopyFrom(o)
        if lo.type.HasField("tensor_type"):
            lo.type.tensor_type.ClearField("shape")
    lg.node.extend(g.node)
    declared = {i.name for i in g.input}
    for t in g.initializer:
        # Declared size, not len(raw_data) / ByteSize(): both copy the whole tensor in upb.
        big = t.HasField("raw_data") or t.data_location == onnx.TensorProto.EXTERNAL
        if big and tensor_nbytes(t) > 4096:
            # A declared graph input with the same shape stands in for the weight (no data copy).
            if t.name not in declared:
                lg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            lg.initializer.append(t)
    lg.value_info.extend(g.value_info)
    try:
        inferred = onnx.shape_inference.infer_shapes(
            light, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as e:  # noqa: BLE001 - inference is best-effort
        return [f"shape inference failed: {str(e)[:200]}"]
    known = {vi.name for vi in g.value_info}
    inputs = {i.name for i in g.input} | {t.name for t in g.initializer}
    for vi in inferred.graph.value_info:
        if vi.name not in known and vi.name not in inputs:
            g.value_info.append(vi)
    # Exporters sometimes declare wrong output shapes; keep declared, warn on mismatch.
    inferred_out = {o.name: o for o in inferred.graph.output}
    warns = []
    for o in g.output:
        io = inferred_out.get(o.name)
        if (
            io is not None
            and io.type != o.type
            and o.type.tensor_type.HasField("shape")
            and io.type.tensor_type.HasField("shape")
        ):
            d1 = [d.dim_value for d in o.type.tensor_type.shape.dim]
            d2 = [d.dim_value for d in io.type.tensor_type.shape.dim]
            if len(d1) != len(d2) or any(a and b and a != b for a, b in zip(d1, d2)):
                warns.append(f"output {o.name!r} declares shape {d1} but the graph computes {d2}")
    return warns


def save_model(proto: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write atomically (temp file in the same folder + rename). Large models use external data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from studio.core.onnx_utils import external_tensors

    loaded_copy = bool(external_tensors(proto))
    if loaded_copy:
        # Opened with its data left in files: a saved model must stand alone (and no tensor may
        # point back at the source folder), so write it from a loaded copy.
        whole = onnx.ModelProto()
        whole.CopyFrom(proto)
        proto = load_external_into(whole)
    if external_data is None:
        external_data = proto.ByteSize() > MAX_PROTO_BYTES
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if external_data:
            data_name = path.name + ".data"
            # onnx.save_model moves tensor data out of the proto it is given: save a copy so the
            # caller's model stays whole and usable.
            if loaded_copy:
                to_save = proto  # already a private copy
            else:
                to_save = onnx.ModelProto()
                to_save.CopyFrom(proto)
            onnx.save_model(
                to_save,
                tmp,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name + ".tmp",
            )
            os.replace(path.parent / (data_name + ".tmp"), path.parent / data_name)
            # Point the model at the final data file name.
            m = onnx.load(tmp, load_external_data=False)
            for t in onnx.external_data_helper._get_all_tensors(m):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            onnx.save_model(m, tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(proto.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
