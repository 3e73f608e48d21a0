"""K-means weight sharing (stage ENCODE, Deep Compression): each weight becomes a uint8 (or
packed uint4) index into a per-layer codebook of at most 2**bits floats. In ONNX the weight is
rebuilt by Cast(indices) -> Gather(codebook, .) nodes named X/codebook_cast, X/codebook_gather;
ONNX Runtime folds them at session load, so the file shrinks and inference speed is unchanged."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import Field, model_validator

from studio.core.errors import TechniqueError
from studio.core.graph import analyze
from studio.core.onnx_utils import (
    GraphIndex,
    all_names,
    remove_unused_initializers,
    tensor_array,
    topo_sort,
    unique_name,
)
from studio.plugin_api.technique import YES, BaseTechnique, LayerEstimate, Params, Stage, no

from .codebook import huffman_bits, huffman_bytes_from_histogram, kmeans_codebook

_ITEMSIZE = {"float": 4, "float16": 2, "double": 8}
_ITEMSIZE_OF = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8}
_FLOAT_TYPES = tuple(_ITEMSIZE_OF)
UINT4_OPSET = 21  # Cast from uint4 exists from opset 21 (Gather itself never takes uint4)
METADATA_PREFIX = "studio.kmeans:"


class KMeansParams(Params):
    """`bits` per weight index (2..8). `pack_uint4` stores indices two per byte (bits <= 4);
    it needs opset 21, so the model's opset is upgraded (falls back to uint8 if that fails)."""

    bits: int = Field(8, ge=2, le=8)
    pack_uint4: bool = False

    @model_validator(mode="after")
    def _pack(self):
        if self.pack_uint4 and self.bits > 4:
            raise ValueError("pack_uint4 needs bits <= 4")
        return self


class KMeansSharing(BaseTechnique):
    """Per-layer k-means weight sharing with a float codebook and integer indices."""

    name: ClassVar[str] = "kmeans"
    label: ClassVar[str] = "Weight sharing (k-means)"
    stage: ClassVar[Stage] = Stage.ENCODE
    Params: ClassVar[type[Params]] = KMeansParams
    primary_param: ClassVar[str | None] = "bits"
    description: ClassVar[str] = (
        "Cluster each layer's weights into 2**bits shared values (linear init, scikit-learn k-means). "
        "Stored as uint8 indices + a float codebook; the Huffman-coded size is reported as an estimate."
    )

    def applies_to(self, layer):
        if layer.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"):
            return no(f"k-means sharing handles Conv/Gemm/MatMul/Gather weights, not {layer.op_type}")
        if layer.dtype not in _ITEMSIZE:
            return no(f"weight is already {layer.dtype} (quantized or encoded)")
        return YES

    def estimate(self, layer, params, before):
        itemsize = _ITEMSIZE.get(layer.dtype, 4)
        n_w = int(np.prod(layer.weight_shape))
        bias_params = max(0, layer.params - n_w)
        n = max(0, before.params - bias_params)  # after an earlier decompose the weight is smaller
        packed = params.pack_uint4 and params.bits <= 4
        index_bytes = (n + 1) // 2 if packed else n
        codebook_bytes = min(2**params.bits, max(n, 1)) * itemsize
        if not _saves_bytes(n, params, itemsize):
            return LayerEstimate(
                before.params,
                before.macs,
                before.weight_bytes,
                notes=[
                    f"kmeans {params.bits} bit skipped: the codebook costs more than it saves on {n} weights"
                ],
            )
        notes = [
            f"kmeans {params.bits} bit: {'uint4' if packed else 'uint8'} indices {index_bytes} B + codebook "
            f"{codebook_bytes} B; bit-packed size {(n * params.bits + 7) // 8 + codebook_bytes} B"
        ]
        if layer.stats is not None and layer.stats.hist_counts:
            scale = n / max(sum(layer.stats.hist_counts), 1)
            huff = huffman_bytes_from_histogram(
                np.asarray(layer.stats.hist_counts) * scale, layer.stats.hist_edges, params.bits
            )
            notes.append(f"Huffman-coded indices ~{huff} B (estimated from the weight histogram)")
        return LayerEstimate(
            params=before.params,
            macs=before.macs,
            weight_bytes=index_bytes + codebook_bytes + bias_params * itemsize,
            notes=notes,
        )

    def simulate_weight(self, layer, weight: np.ndarray, params, seed: int = 0) -> np.ndarray:
        """The float weight `apply` makes this layer compute with (codebook[indices]); the sweep
        feeds it to a cached suffix session instead of rebuilding the model. Exact: same k-means."""
        n = int(weight.size)
        if weight.dtype.itemsize not in (2, 4, 8) or not _saves_bytes(n, params, weight.dtype.itemsize):
            return weight  # apply() skips such a layer
        codebook, indices = kmeans_codebook(weight, params.bits, seed=seed)
        return codebook.astype(weight.dtype)[indices]

    def apply(self, model, plan, ctx):
        if any(p.pack_uint4 for p in plan.values()):
            model = _ensure_uint4_opset(model, ctx)
        analysis = ctx.analysis if ctx.analysis is not None else analyze(model, with_stats=False)
        layers = analysis.by_name()
        idx = GraphIndex(model)
        names = all_names(model)
        decoded: dict[str, str] = {}  # weight initializer -> its Gather output (tied weights reuse it)
        report: dict[str, dict] = {}
        inserts: dict[tuple, list[onnx.NodeProto]] = {}  # new nodes go before their consumer
        for i, (lname, p) in enumerate(plan.items()):
            ctx.progress(i / len(plan), f"k-means {lname}")
            node = idx.nodes.get(lname)
            layer = layers.get(lname)
            if node is None or layer is None:
                raise TechniqueError(f"kmeans: layer {lname!r} is not in the model")
            w_name = layer.weight_name
            pos = [j for j, x in enumerate(node.input) if x == w_name]
            if not pos or w_name not in idx.inits or idx.inits[w_name].data_type not in _FLOAT_TYPES:
                ctx.warn(f"{lname}: kmeans skipped, its weight is not a stored float tensor")
                continue
            if w_name not in decoded:
                w_t = idx.inits[w_name]
                n = int(np.prod(w_t.dims))
                if not _saves_bytes(n, p, _ITEMSIZE_OF.get(w_t.data_type, 4)):
                    ctx.warn(
                        f"{lname}: kmeans skipped, a {2**p.bits}-entry codebook costs more than it saves on {n} weights"
                    )
                    continue
                w = tensor_array(w_t)
                codebook, indices = kmeans_codebook(w, p.bits, seed=ctx.seed)
                packed = p.pack_uint4 and p.bits <= 4 and _opset(model) >= UINT4_OPSET
                idx_name = unique_name(names, f"{w_name}/codebook_indices")
                if packed:
                    it = _uint4_tensor(idx_name, indices)
                else:
                    it = numpy_helper.from_array(np.ascontiguousarray(indices, dtype=np.uint8), idx_name)
                cb_name = unique_name(names, f"{w_name}/codebook")
                cb = numpy_helper.from_array(codebook.astype(w.dtype), cb_name)
                model.graph.initializer.extend([it, cb])
                cast_out = unique_name(names, f"{lname}/codebook_cast_output_0")
                out = unique_name(names, f"{lname}/codebook_gather_output_0")
                new = [
                    helper.make_node(
                        "Cast",
                        [idx_name],
                        [cast_out],
                        name=f"{lname}/codebook_cast",
                        to=onnx.TensorProto.INT32,
                    ),
                    helper.make_node(
                        "Gather", [cb_name, cast_out], [out], name=f"{lname}/codebook_gather", axis=0
                    ),
                ]
                inserts.setdefault((node.name, tuple(node.output)), []).extend(new)
                decoded[w_name] = out
                counts = np.bincount(indices.ravel(), minlength=len(codebook))
                err = float(np.sqrt(np.mean((codebook[indices] - w) ** 2)) / (np.std(w) or 1.0))
                report[lname] = {
                    "bits": p.bits,
                    "codebook_entries": len(codebook),
                    "weights": int(w.size),
                    "index_dtype": "uint4" if packed else "uint8",
                    "stored_bytes": int((w.size + 1) // 2 if packed else w.size) + int(cb.ByteSize()),
                    "bitpacked_bytes_estimated": int(
                        (w.size * p.bits + 7) // 8 + codebook.size * w.dtype.itemsize
                    ),
                    "huffman_bytes_estimated": int(
                        (huffman_bits(counts) + 7) // 8 + codebook.size * w.dtype.itemsize
                    ),
                    "relative_rmse": round(err, 5),
                }
                if len(idx.consumers.get(w_name, [])) > 1:
                    ctx.warn(
                        f"{lname}: weight {w_name} is shared; every consumer listed in the plan reads the codebook"
                    )
            for j in pos:
                node.input[j] = decoded[w_name]
        if inserts:
            nodes = []
            for n in model.graph.node:
                nodes.extend(inserts.get((n.name, tuple(n.output)), []))
                nodes.append(n)
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            topo_sort(model)  # a tied weight's later consumers may come first in the graph
        remove_unused_initializers(model)
        for lname, info in report.items():
            _set_metadata(model, METADATA_PREFIX + lname, json.dumps(info))
        return model


def _saves_bytes(n: int, p: KMeansParams, itemsize: int) -> bool:
    """Whether indices + codebook are smaller than the float weights (not so for tiny layers)."""
    index_bytes = (n + 1) // 2 if p.pack_uint4 and p.bits <= 4 else n
    return index_bytes + min(2**p.bits, max(n, 1)) * itemsize < n * itemsize


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _ensure_uint4_opset(model: onnx.ModelProto, ctx) -> onnx.ModelProto:
    """Upgrade to opset 21 for uint4 indices; on failure keep the model and store uint8."""
    if _opset(model) >= UINT4_OPSET:
        model.ir_version = max(model.ir_version, 10)
        return model
    try:
        from onnx import version_converter

        up = version_converter.convert_version(model, UINT4_OPSET)
        up.ir_version = max(up.ir_version, 10)
        return up
    except Exception as e:  # noqa: BLE001 - any converter failure means: keep uint8
        ctx.warn(
            f"kmeans: could not upgrade the model to opset {UINT4_OPSET} for uint4 indices ({e}); kept uint8"
        )
        return model


def _uint4_tensor(name: str, indices: np.ndarray) -> onnx.TensorProto:
    """Two indices per byte, first element in the low nibble (the ONNX 4-bit layout)."""
    flat = np.asarray(indices, dtype=np.uint8).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] & 0x0F) | (flat[1::2] << 4)
    return helper.make_tensor(name, onnx.TensorProto.UINT4, indices.shape, packed.tobytes(), raw=True)


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for e in model.metadata_props:
        if e.key == key:
            e.value = value
            return
    model.metadata_props.add(key=key, value=value)
