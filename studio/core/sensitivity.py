"""Measured per-layer sensitivity: for each layer × setting, the metric drop of the model with
only that change, on a calibration subset.

Why it is cheap (the `cost` of a table says by how much, against the naive "compress the whole
model and evaluate it fully once per (layer, setting)"):

* activation caching: the original runs once with every tensor the sweep needs as an extra output;
* suffix evaluation: a change to layer L can only affect what runs after it, so each measurement
  applies the change to the *suffix* graph (from L's live inputs to the model outputs) and runs it
  on the cached inputs: the prefix is never recomputed;
* weight-fed cells: a setting whose technique offers `simulate_weight` (k-means, int8 Gather
  tables) only changes the layer's weight; it is computed numerically (exactly what the
  technique stores) and fed to one cached suffix session per layer that reads the weight as an
  input, so no model is rebuilt and no session is created per setting;
* early stops: settings of one family run from mild to strong (channels 0.25 → 0.75) and the rest
  of a family is skipped once a setting loses more than `hopeless_drop`; every measurement first
  runs on a quarter of the samples and stops there when the drop is already far over it.

Drops are fractions (0.01 = 1 point): of top-1 accuracy when the calibration data has labels, of
top-1 agreement with the original for unlabeled classifiers, else of the mean cosine similarity
with the original output (per real token for sequence models). `proxy=True` measures instead the
noise-to-signal ratio at the layer's own output (or, when the change reshapes it, at the next
weighted layers), label-free and faster; that table is *estimated*.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from studio.core.errors import DatasetError, StudioError
from studio.core.evaluate import Dataset, make_session
from studio.core.graph import ModelAnalysis, analyze
from studio.core.jobs import JobContext, Progress
from studio.core.model import ModelHandle
from studio.core.recipe import LayerPlan, Recipe, Step

STRUCTURAL_STAGES = ("decompose", "prune")
DEFAULT_HOPELESS_DROP = 0.05  # 5 points: stronger settings of the family are not measured
QUICK_FRACTION = 0.25
FAR_FACTOR = 2.0  # a quick measurement this far over `hopeless_drop` is final
TABLE_VERSION = 1


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One candidate change of one layer: a technique with fixed params at its stage.

    `family` + `level` order settings by strength for the early stop (level 0 is the mildest)."""

    technique: str
    stage: str
    params: tuple[tuple[str, Any], ...] = ()
    family: str = ""
    level: int = 0
    only: str = ""  # restrict to an op type ("Gather") or a layer-name glob ("*intermediate*")

    @property
    def key(self) -> str:
        """Short stable label: `channels:0.5`, `svd:0.25`, `int8_static`, `kmeans:4`."""
        vals = [v for k, v in self.params if k in _PRIMARY.get(self.technique, ())]
        return self.technique + (":" + ":".join(_fmt(v) for v in vals) if vals else "")

    @property
    def structural(self) -> bool:
        return self.stage in STRUCTURAL_STAGES

    def step(self) -> Step:
        return Step(technique=self.technique, params=dict(self.params))

    def plan(self) -> LayerPlan:
        return LayerPlan(**{self.stage: self.step()})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["key"] = self.key
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Setting:
        return cls(d["technique"], d["stage"], tuple(sorted(d.get("params", {}).items())), d.get("family", ""),
                   int(d.get("level", 0)), d.get("only", ""))  # fmt: skip


_PRIMARY = {"channels": ("ratio",), "magnitude": ("ratio",), "svd": ("rank_ratio", "energy"),
            "tucker": ("rank_ratio",), "kmeans": ("bits",), "int4_weight": ("bits",)}  # fmt: skip


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _s(tech, stage, family, level, **params) -> Setting:
    return Setting(tech, stage, tuple(sorted(params.items())), family, level)


def default_settings(*, has_calibration: bool = True) -> list[Setting]:
    """The standard sweep: channel pruning 25/50/75 %, SVD rank 1/2, 1/4, 1/8, int8 (static when
    calibration data exists, dynamic for MatMul), int4 weight-only, k-means 8 and 4 bit."""
    out = [_s("channels", "prune", "channels", i, ratio=r) for i, r in enumerate((0.25, 0.5, 0.75))]
    out += [_s("svd", "decompose", "svd", i, rank_ratio=r) for i, r in enumerate((0.5, 0.25, 0.125))]
    if has_calibration:
        out.append(_s("int8_static", "quantize", "quant", 0))
    out.append(_s("int8_dynamic", "quantize", "quant", 0))
    out.append(_s("int4_weight", "quantize", "quant", 1, bits=4))
    out += [
        _s("kmeans", "encode", "kmeans", 0, bits=8),
        _s("kmeans", "encode", "kmeans", 1, bits=4, pack_uint4=True),
    ]
    return out


def parse_settings(text: str, *, has_calibration: bool = True) -> list[Setting]:
    """`channels:0.25,0.5 svd:0.25 int8 kmeans:8,4` (space or `;` separated families).

    `name@Op` or `name@GLOB` restricts a family to an op type or layer names:
    `kmeans@Gather:8,4 channels@*intermediate*:0.25`."""
    from studio.plugin_api.registry import default_registry

    reg = default_registry()
    out: list[Setting] = []
    for part in text.replace(";", " ").split():
        name, _, vals = part.partition(":")
        name, _, only = name.partition("@")
        if name == "int8":
            if has_calibration:
                out.append(replace(_s("int8_static", "quantize", "quant", 0), only=only))
            out.append(replace(_s("int8_dynamic", "quantize", "quant", 0), only=only))
            continue
        try:
            tech = reg.get(name)
        except StudioError as e:
            raise StudioError(f"--settings: {e.message}") from None
        prim = getattr(tech, "primary_param", None)
        nums = [v for v in vals.split(",") if v]
        if not nums or prim is None:
            out.append(replace(_s(name, tech.stage.key, name, 0), only=only))
            continue
        parsed = [float(v) if "." in v else int(v) for v in nums]
        # Order by strength: smaller rank / more bits is milder; for prune ratios larger is stronger.
        stronger_is_larger = name in ("channels", "magnitude")
        parsed.sort(reverse=not stronger_is_larger)
        for i, v in enumerate(parsed):
            extra = {"pack_uint4": True} if name == "kmeans" and int(v) <= 4 else {}
            out.append(replace(_s(name, tech.stage.key, name, i, **{prim: v}, **extra), only=only))
    if not out:
        raise StudioError("--settings: no settings given", hint="e.g. --settings 'channels:0.25,0.5 int8'")
    return out


def applicable(layer, setting: Setting, registry=None) -> str | None:
    """None when the setting can run on the layer, else the reason it cannot."""
    if setting.only:
        import fnmatch

        if any(c in setting.only for c in "*?[/"):
            if not fnmatch.fnmatchcase(layer.name, setting.only):
                return f"restricted to layers matching {setting.only}"
        elif layer.op_type != setting.only:
            return f"restricted to {setting.only} layers"
    from studio.plugin_api.registry import default_registry

    try:
        tech = (registry or default_registry()).get(setting.technique)
    except StudioError as e:
        return e.message
    sup = tech.applies_to(layer)
    if not sup:
        return sup.reason
    if setting.technique == "int8_static" and _is_sequence(layer):
        return "int8_dynamic is measured for transformer MatMuls (static int8 saturates there)"
    if (
        setting.technique == "int8_dynamic"
        and not _is_sequence(layer)
        and layer.op_type not in ("MatMul", "Gather")
    ):
        return "int8_static is measured for Conv / Gemm layers"
    if setting.technique == "svd" and setting.params:
        k, n = layer.weight_shape[0], layer.weight_shape[-1]
        r = max(1, int(round(dict(setting.params).get("rank_ratio", 0.25) * min(k, n))))
        if r >= k * n / (k + n):
            return f"rank {r} would not reduce a {k}x{n} weight"
    return None


def _is_sequence(layer) -> bool:
    a = layer.input_shapes[0] if layer.input_shapes else None
    return layer.op_type == "MatMul" and bool(a and len(a) >= 3)


# ---------------------------------------------------------------------- the table


@dataclass
class SensitivityTable:
    """layer → setting key → drop (fraction; 0.01 = 1 point). JSON-serialisable.

    `skipped[layer][key]` says why a cell has no number (not applicable / early stop);
    `samples[layer][key]` how many samples the number was taken on (a quick early exit uses
    fewer); `cosine_drop` is the secondary, smooth fidelity drop (1 - cosine) of each cell."""

    metric: str  # top1 | top1_agreement | cosine_mean | layer_output_nsr
    kind: str  # measured | fidelity | estimated
    source: str
    n_samples: int
    baseline: float
    settings: list[dict]
    drops: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    cosine_drop: dict[str, dict[str, float]] = field(default_factory=dict)
    # Cells not run because a stronger setting of the same family was lossless: bounded by it.
    inferred: dict[str, dict[str, dict]] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    model_sha256: str = ""
    version: int = TABLE_VERSION

    def setting_objects(self) -> list[Setting]:
        return [Setting.from_dict(d) for d in self.settings]

    def drop(self, layer: str, key: str) -> float | None:
        """The measured drop, else the bound inferred from a stronger lossless setting."""
        v = self.drops.get(layer, {}).get(key)
        if v is None and key in self.inferred.get(layer, {}):
            v = self.inferred[layer][key]["drops"]
        return v

    def cosine(self, layer: str, key: str) -> float | None:
        v = self.cosine_drop.get(layer, {}).get(key)
        if v is None and key in self.inferred.get(layer, {}):
            v = self.inferred[layer][key]["cosine_drop"]
        return v

    def to_dict(self) -> dict:
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> SensitivityTable:
        d = dict(d)
        if int(d.get("version", 1)) > TABLE_VERSION:
            raise StudioError("sensitivity table is from a newer Pareto Studio; re-run the sweep")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityTable:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise StudioError(f"{path}: not a sensitivity table ({type(e).__name__})") from e

    def describe_value(self, v: float | None) -> str:
        """A cell as shown to users: points for drops, dB for the proxy."""
        if v is None:
            return "—"
        if self.metric == "layer_output_nsr":
            return "inf dB" if v <= 0 else f"{-10 * np.log10(v):.1f} dB"
        return f"{v * 100:+.2f}"


def _json_safe(o):
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_safe(v) for v in o]
    if isinstance(o, float | np.floating):
        f = float(o)
        return None if f != f or f in (float("inf"), float("-inf")) else f
    if isinstance(o, np.integer):
        return int(o)
    return o


# ---------------------------------------------------------------------- metrics


def choose_metric(ref_out: np.ndarray, labels: np.ndarray | None) -> tuple[str, str]:
    """(metric, kind): accuracy with labels; agreement for unlabeled classifiers; else cosine."""
    if labels is not None:
        return "top1", "measured"
    if ref_out.ndim == 2 and ref_out.shape[1] > 1:
        return "top1_agreement", "fidelity"
    return "cosine_mean", "fidelity"


def cosine_mean(ref: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean cosine per sample (per real token for [N, T, H] outputs with a [N, T] mask)."""
    if ref.shape != out.shape:
        raise DatasetError(f"output shapes differ: original {list(ref.shape)}, variant {list(out.shape)}")
    if ref.ndim == 3:
        r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
        o = out.reshape(-1, out.shape[-1]).astype(np.float64)
        if mask is not None and tuple(mask.shape) == tuple(ref.shape[:2]):
            keep = np.asarray(mask).reshape(-1) != 0
            if keep.any():
                r, o = r[keep], o[keep]
    else:
        r = ref.reshape(len(ref), -1).astype(np.float64)
        o = out.reshape(len(out), -1).astype(np.float64)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    cos = np.where(den > 0, (r * o).sum(1) / np.maximum(den, 1e-30), 1.0)
    cos = np.where((r == o).all(1), 1.0, cos)
    return float(cos.mean())


def metric_drop(
    metric: str, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None, mask: np.ndarray | None
) -> float:
    """Drop of `metric` of `out` against the original outputs `ref` (fraction; >0 = worse)."""
    if metric == "top1":
        a0 = float((ref.reshape(len(ref), -1).argmax(1) == labels).mean())
        a1 = float((out.reshape(len(out), -1).argmax(1) == labels).mean())
        return a0 - a1
    if metric == "top1_agreement":
        return 1.0 - float(
            (ref.reshape(len(ref), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)).mean()
        )
    return 1.0 - cosine_mean(ref, out, mask)


def nsr(ref: np.ndarray, out: np.ndarray) -> float:
    """Noise-to-signal power ratio (10^(-SQNR/10)); 0 for identical outputs."""
    r = ref.astype(np.float64)
    noise = float(((r - out.astype(np.float64)) ** 2).sum())
    return noise / max(float((r**2).sum()), 1e-30)


# ---------------------------------------------------------------------- graph cutting


def node_macs(analysis: ModelAnalysis) -> dict[str, int]:
    return {la.name: int(la.macs) for la in analysis.layers}


def _batch_major(proto: onnx.ModelProto, ds: Dataset) -> tuple[set[str], dict[str, tuple]]:
    """Tensors whose axis 0 is the batch (checked with 2 and 3 samples) and their dtype/shape."""
    names = [o for n in proto.graph.node for o in n.output if o]
    probe = _with_outputs(proto, names)
    sess = make_session(probe, threads=1)
    got = []
    for k in (2, 3):
        sub = {i.name: ds.inputs[i.name][:k] for i in sess.get_inputs()}
        got.append(dict(zip([o.name for o in sess.get_outputs()], sess.run(None, sub))))
    major, specs = set(), {}
    for name in names:
        a, b = got[0].get(name), got[1].get(name)
        if a is None or b is None or a.ndim == 0 or b.ndim == 0:
            continue
        if a.shape[0] == 2 and b.shape[0] == 3 and a.shape[1:] == b.shape[1:]:
            major.add(name)
            specs[name] = (a.dtype, a.shape[1:])
    return major, specs


def _with_outputs(proto: onnx.ModelProto, names) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
            have.add(n)
    return m


def suffix_nodes(
    proto: onnx.ModelProto, start: int, outputs: list[str], batch_major: set[str]
) -> tuple[list[int], list[str]]:
    """Node indices from `start` needed for `outputs`, and the live tensors they read.

    A live tensor that is not batch-major (a shape computed from the input, a Constant) is
    recomputed inside the suffix instead, so the suffix runs on any slice of the samples."""
    nodes = list(proto.graph.node)
    inits = {t.name for t in proto.graph.initializer}
    graph_inputs = {i.name for i in proto.graph.input}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    chosen = set(range(start, len(nodes)))
    while True:
        # Keep only what the outputs depend on.
        need, stack = set(), [producer[o] for o in outputs if o in producer and producer[o] in chosen]
        while stack:
            i = stack.pop()
            if i in need:
                continue
            need.add(i)
            for x in nodes[i].input:
                j = producer.get(x)
                if j is not None and j in chosen and j not in need:
                    stack.append(j)
        produced = {o for i in need for o in nodes[i].output}
        live = sorted({x for i in need for x in nodes[i].input if x and x not in produced and x not in inits})
        pull = [x for x in live if x not in graph_inputs and x not in batch_major and x in producer]
        if not pull:
            return sorted(need), live
        chosen = need | {producer[x] for x in pull}


def build_submodel(
    proto: onnx.ModelProto, node_idx: list[int], live: list[str], outputs: list[str], specs: dict
) -> onnx.ModelProto:
    """A standalone model of the chosen nodes with `live` as inputs (batch axis symbolic)."""
    from onnx import helper

    g = proto.graph
    nodes = [g.node[i] for i in node_idx]
    used = {x for n in nodes for x in n.input}
    for n in nodes:  # initializers read inside subgraphs (If / Loop bodies)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {x for sn in a.g.node for x in sn.input}
    inputs = []
    graph_in = {i.name: i for i in g.input}
    for name in live:
        if name in graph_in:
            inputs.append(graph_in[name])
        else:
            dt, shape = specs[name]
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
            inputs.append(helper.make_tensor_value_info(name, elem, ["batch", *shape]))
    outs = {o.name: o for o in g.output}
    out_vi = [outs.get(o) or onnx.ValueInfoProto(name=o) for o in outputs]
    sub = helper.make_graph(
        nodes, f"{g.name}_suffix", inputs, out_vi, [t for t in g.initializer if t.name in used]
    )
    # Techniques read shapes (channel pruning through Flatten): keep the inferred ones we have.
    inner = {x for n in nodes for x in list(n.input) + list(n.output)}
    sub.value_info.extend(
        vi for vi in g.value_info if vi.name in inner and vi.name not in set(live) | set(outputs)
    )
    m = helper.make_model(sub, opset_imports=list(proto.opset_import), producer_name="pareto-studio")
    m.ir_version = proto.ir_version
    m.functions.extend(proto.functions)
    return m


def downstream_layers(proto: onnx.ModelProto, layer: str, layer_names: set[str], limit: int = 6) -> list[str]:
    """The nearest weighted layers fed (through unweighted ops) by `layer`'s outputs."""
    cons: dict[str, list] = {}
    for n in proto.graph.node:
        for x in n.input:
            cons.setdefault(x, []).append(n)
    node = next(n for n in proto.graph.node if n.name == layer)
    found, seen, frontier = [], set(), list(node.output)
    while frontier and len(found) < limit:
        t = frontier.pop(0)
        for c in cons.get(t, []):
            if c.name in seen:
                continue
            seen.add(c.name)
            if c.name in layer_names:
                found.append(c.name)
            else:
                frontier.extend(c.output)
    return found


# ---------------------------------------------------------------------- one layer (worker)

_MODEL_CACHE: dict[str, onnx.ModelProto] = {}


def _model(ref) -> onnx.ModelProto:
    if isinstance(ref, onnx.ModelProto):
        return ref
    key = f"{ref}:{os.path.getmtime(ref)}"
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = onnx.load(str(ref))
    return _MODEL_CACHE[key]


def measure_layer(spec: dict) -> dict:
    """Worker: all settings of one layer on its suffix graph. Returns one row of the table plus
    the MAC-weighted forward cost it spent. `spec` is plain data (picklable)."""
    proto = _model(spec["model"])
    layer = spec["layer"]
    feed: dict[str, np.ndarray] = spec["feed"]
    n = len(next(iter(feed.values())))
    quick_n = max(1, int(np.ceil(n * spec["quick_fraction"]))) if n >= 8 else n
    sub = build_submodel(proto, spec["node_idx"], spec["live"], spec["outputs"], spec["specs"])
    handle = ModelHandle(sub, sha256=f"suffix:{layer}")
    ref: list[np.ndarray] = spec["ref"]
    labels, mask = spec.get("labels"), spec.get("mask")
    proxy, hopeless = spec["proxy"], spec["hopeless_drop"]
    macs, threads = spec["suffix_macs"], spec.get("threads", 0)
    cost = 0.0
    calib_passes = weight_fed = 0
    row: dict[str, Any] = {
        "drops": {},
        "samples": {},
        "skipped": {},
        "cosine_drop": {},
        "seconds": {},
        "inferred": {},
    }
    if proxy:  # reference values at the observation points come from the original suffix
        ref = _run(sub, feed, threads)
        cost += macs * n
    families: dict[str, list[Setting]] = {}
    for s in [Setting.from_dict(d) for d in spec["settings"]]:
        families.setdefault(s.family, []).append(s)
    for fam in families.values():
        fam.sort(key=lambda s: s.level)
        queue = [len(fam) // 2]  # mid first: its result prunes one side of the family
        seen: set[int] = set()
        while queue:
            i = queue.pop(0)
            if i in seen or not 0 <= i < len(fam):
                continue
            seen.add(i)
            s = fam[i]
            res = _measure_setting(s, layer, handle, feed, n, quick_n, spec, ref, labels, mask, threads)
            weight_fed += res.pop("weight_fed", 0)
            cost += macs * res.pop("forward_samples", 0)
            calib_passes += res.pop("calib_passes", 0)
            if "skipped" in res:
                row["skipped"][s.key] = res["skipped"]
                queue += [i + 1, i - 1]
                continue
            for k in ("drops", "cosine_drop", "samples", "seconds"):
                row[k][s.key] = res[k]
            d, c = res["drops"], res["cosine_drop"]
            if d > hopeless and not proxy:
                for j in range(i + 1, len(fam)):
                    seen.add(j)
                    row["skipped"][fam[j].key] = f"early stop: {s.key} already lost {d * 100:.1f} pt"
                queue.append(i - 1)
            elif not proxy and d <= hopeless * SAFE_FRACTION and c <= hopeless * SAFE_FRACTION:
                # Milder settings of the same family cannot lose more (monotone): bounded, not run.
                for j in range(i - 1, -1, -1):
                    seen.add(j)
                    row["inferred"][fam[j].key] = {"from": s.key, "drops": d, "cosine_drop": c}
                queue.append(i + 1)
            else:
                queue += [i + 1, i - 1]
    row["cost_macs"] = cost
    row["calib_passes"] = calib_passes
    row["weight_fed"] = weight_fed
    spec.pop("_fast", None)
    return row


_CALIBRATING = {"int8_static"}
SAFE_FRACTION = 0.02  # a drop under 2 % of `hopeless_drop` counts as lossless for inference


def _measure_setting(s, layer, handle, feed, n, quick_n, spec, ref, labels, mask, threads) -> dict:
    """Apply one setting to the suffix and measure it (quarter first, the rest only if needed)."""
    from studio.core.jobs import drive
    from studio.core.pipeline import compress

    t0 = time.perf_counter()
    out: dict[str, Any] = {"forward_samples": 0, "calib_passes": 0}
    cache = spec.setdefault("_fast", {})
    weight = _simulated_weight(s, spec, handle.proto, cache)
    fed = _weight_fed_session(handle.proto, layer, spec, threads, cache) if weight is not None else None
    if fed is not None:
        # Fast path: the change is exactly "this weight takes these values"; the cached suffix
        # session reads the weight as an input (no model rebuild, no session per setting).
        sess, w_input, order = fed
        out["weight_fed"] = 1

        def run(a, b):
            res = sess.run(None, {**{x: v[a:b] for x, v in feed.items()}, w_input: weight})
            return [res[i] for i in order]
    else:
        try:
            variant = drive(compress(handle, Recipe(layers={layer: s.plan()}), calibration=feed, check=False))
        except StudioError as e:
            return {**out, "skipped": f"not applicable: {e.message}"[:300]}
        except Exception as e:  # noqa: BLE001 - a technique bug is a cell note, not a dead sweep
            return {**out, "skipped": f"failed: {type(e).__name__}: {e}"[:300]}
        if s.technique in _CALIBRATING or (s.technique == "channels" and dict(s.params).get("refit", True)):
            out["forward_samples"] += min(n, 256)  # calibration / refit passes run the suffix once
            out["calib_passes"] = 1
        try:
            sess = make_session(variant.proto, threads=threads)
        except Exception as e:  # noqa: BLE001
            return {**out, "skipped": f"failed: ORT cannot load the result: {str(e)[:200]}"}
        names = [o.name for o in sess.get_outputs()]
        order = [names.index(o) for o in spec["outputs"] if o in names]

        def run(a, b):
            res = sess.run(None, {x: v[a:b] for x, v in feed.items()})
            return [res[i] for i in order]

    part = run(0, quick_n)
    out["forward_samples"] += quick_n
    d = _drop(spec, ref, part, quick_n, labels, mask)
    if d is None:
        return {**out, "skipped": "failed: output shapes changed unexpectedly"}
    used = quick_n
    hopeless = spec["hopeless_drop"]
    far = d[0] > FAR_FACTOR * hopeless
    # Sequential test: a quarter that is decisively lossless (or hopeless) is final.
    clear = (
        spec.get("quick_accept", True)
        and d[0] <= hopeless * SAFE_FRACTION
        and d[1] <= hopeless * SAFE_FRACTION
    )
    if quick_n < n and not far and not (clear and not spec["proxy"]):
        rest = run(quick_n, n)
        out["forward_samples"] += n - quick_n
        full = [np.concatenate([a, b]) for a, b in zip(part, rest)]
        d = _drop(spec, ref, full, n, labels, mask)
        used = n
    return {**out, "drops": d[0], "cosine_drop": d[1], "samples": used,
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def _simulated_weight(s: Setting, spec: dict, proto: onnx.ModelProto, cache: dict) -> np.ndarray | None:
    """The weight the technique would give the layer, when it offers `simulate_weight` (an
    optional technique hook: exact single-initializer changes such as k-means); else None."""
    from studio.core.onnx_utils import tensor_array
    from studio.plugin_api.registry import default_registry

    la = spec.get("layer_info")
    if la is None or not la.weight_name or not spec.get("weight_fed", True):
        return None
    try:
        tech = default_registry().get(s.technique)
    except StudioError:
        return None
    hook = getattr(tech, "simulate_weight", None)
    if hook is None:
        return None
    if "weight" not in cache:
        init = next((t for t in proto.graph.initializer if t.name == la.weight_name), None)
        cache["weight"] = None if init is None else tensor_array(init)
    if cache["weight"] is None:
        return None
    try:
        w = hook(la, cache["weight"], tech.parse_params(dict(s.params)), seed=0)
    except Exception:  # noqa: BLE001 - the full technique path measures it instead
        return None
    if w is None or w.shape != cache["weight"].shape:
        return None
    return np.ascontiguousarray(w, dtype=cache["weight"].dtype)


def _weight_fed_session(proto: onnx.ModelProto, layer: str, spec: dict, threads: int, cache: dict):
    """(session, weight input name, output order) of the suffix with the layer's weight read from
    a graph input by that layer only (tied weights keep their other readers); built once a layer."""
    if "session" in cache:
        return cache["session"]
    from onnx import helper

    from studio.core.onnx_utils import remove_unused_initializers

    cache["session"] = None
    w_name = spec["layer_info"].weight_name
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    node = next((n for n in m.graph.node if n.name == layer), None)
    init = next((t for t in m.graph.initializer if t.name == w_name), None)
    if node is None or init is None or w_name not in node.input:
        return None
    w_input = f"{w_name}/sweep_weight"
    for j, x in enumerate(node.input):
        if x == w_name:
            node.input[j] = w_input
    m.graph.input.append(helper.make_tensor_value_info(w_input, init.data_type, list(init.dims)))
    remove_unused_initializers(m)
    try:
        sess = make_session(m, threads=threads)
    except Exception:  # noqa: BLE001 - fall back to the full technique path
        return None
    names = [o.name for o in sess.get_outputs()]
    cache["session"] = (sess, w_input, [names.index(o) for o in spec["outputs"] if o in names])
    return cache["session"]


def _run(model, feed, threads) -> list[np.ndarray]:
    sess = make_session(model, threads=threads)
    return sess.run(None, feed)


def _drop(spec, ref, out, k, labels, mask) -> tuple[float, float] | None:
    """(primary drop, cosine drop) on the first k samples; proxy: (NSR, 1 - cosine)."""
    if spec["proxy"]:
        for r, o in zip(ref, out):
            if r.shape[1:] == o.shape[1:]:
                return nsr(r[:k], o), 1.0 - cosine_mean(r[:k].reshape(k, -1), o.reshape(k, -1))
        return None
    r0 = ref[0][:k]
    if r0.shape != out[0].shape:
        return None
    lab = None if labels is None else labels[:k]
    msk = None if mask is None else mask[:k]
    primary = metric_drop(spec["metric"], r0, out[0], lab, msk)
    return primary, 1.0 - cosine_mean(r0, out[0], msk)


# ---------------------------------------------------------------------- the sweep (job)


def sweep(
    handle: ModelHandle,
    calib: Dataset,
    *,
    settings: list[Setting] | None = None,
    layers: list[str] | None = None,
    proxy: bool = False,
    hopeless_drop: float = DEFAULT_HOPELESS_DROP,
    quick_fraction: float = QUICK_FRACTION,
    pool=None,
    ctx: JobContext | None = None,
) -> Generator[Progress, None, SensitivityTable]:
    """Generator job → SensitivityTable. Each finished layer yields
    `Progress(payload={"type": "sensitivity_row", "layer": name, "drops": {...}, ...})`.

    `pool` (studio.core.parallel.TaskPool) fans layers out; default: in this process."""
    from studio.core.evaluate import check_dataset
    from studio.core.parallel import TaskFailure, TaskPool
    from studio.plugin_api.registry import default_registry

    t_start = time.perf_counter()
    pool = pool or TaskPool()
    reg = default_registry()
    proto = handle.proto
    analysis = analyze(proto, with_stats=False)
    settings = settings if settings is not None else default_settings(has_calibration=True)
    by_name = analysis.by_name()
    if layers is not None:
        missing = [x for x in layers if x not in by_name]
        if missing:
            raise StudioError(f"no such layer(s) in the model: {missing[:3]}")
    todo = layers if layers is not None else [la.name for la in analysis.layers]
    sess = make_session(proto, threads=0)
    check_dataset(calib, sess)
    n = len(calib)
    yield Progress(0.0, "probing graph")
    major, specs = _batch_major(proto, calib)
    node_index = {nd.name: i for i, nd in enumerate(proto.graph.node)}
    outputs = [o.name for o in proto.graph.output]
    lnames = set(by_name)

    # Per layer: suffix nodes, live tensors, observation outputs.
    plans = {}
    for name in todo:
        obs = outputs
        if proxy:
            node = proto.graph.node[node_index[name]]
            obs = [o for o in node.output if o] + [
                o
                for d in downstream_layers(proto, name, lnames)
                for o in proto.graph.node[node_index[d]].output
            ]
        idx, live = suffix_nodes(proto, node_index[name], obs, major)
        plans[name] = (idx, live, obs)
    needed = sorted(
        {x for _, live, _ in plans.values() for x in live} | {o for _, _, obs in plans.values() for o in obs}
    )
    yield Progress(0.02, f"caching {len(needed)} activations on {n} samples")
    t_cache = time.perf_counter()
    cache_model = _with_outputs(proto, needed)
    cs = make_session(cache_model, threads=0)
    feed0 = {i.name: calib.inputs[i.name] for i in cs.get_inputs()}
    vals = dict(zip([o.name for o in cs.get_outputs()], cs.run(None, feed0)))
    t_full = time.perf_counter() - t_cache
    vals.update(feed0)
    ref = [vals[o] for o in outputs]
    metric, kind = choose_metric(ref[0], calib.labels)
    if proxy:
        metric, kind = "layer_output_nsr", "estimated"
    baseline = 1.0
    if metric == "top1":
        baseline = float((ref[0].reshape(n, -1).argmax(1) == calib.labels).mean())
    mask = calib.inputs.get("attention_mask")
    total_macs = max(sum(la.macs for la in analysis.layers), 1)
    macs_of = node_macs(analysis)
    model_ref: Any = proto
    tmpdir = None
    if pool.kind != "inline":
        tmpdir = tempfile.TemporaryDirectory(prefix="studio_sweep_")
        model_ref = os.path.join(tmpdir.name, "model.onnx")
        onnx.save(proto, model_ref)
    tasks, task_layers, skipped = [], [], {}
    for name in todo:
        idx, live, obs = plans[name]
        la = by_name[name]
        mine, why = [], {}
        for s in settings:
            reason = applicable(la, s, reg)
            if reason:
                why[s.key] = f"n/a: {reason}"
            else:
                mine.append(s)
        skipped[name] = why
        if not mine:
            continue
        nodes_in = {proto.graph.node[i].name for i in idx}
        suffix_macs = sum(m for nm, m in macs_of.items() if nm in nodes_in)
        spec = {
            "model": model_ref, "layer": name, "node_idx": idx, "live": live, "outputs": obs,
            "specs": {x: specs[x] for x in live if x in specs},
            "feed": {x: vals[x] for x in live}, "ref": [vals[o] for o in obs] if not proxy else None,
            "labels": calib.labels, "mask": mask, "metric": metric, "proxy": proxy,
            "hopeless_drop": hopeless_drop, "quick_fraction": quick_fraction,
            "settings": [s.to_dict() for s in sorted(mine, key=lambda s: (s.family, s.level))],
            "suffix_macs": suffix_macs, "threads": 1 if pool.kind != "inline" else 0, "layer_info": la,
        }  # fmt: skip
        tasks.append((spec,))
        task_layers.append(name)
    table = SensitivityTable(
        metric=metric,
        kind=kind,
        source=calib.source,
        n_samples=n,
        baseline=baseline,
        settings=[s.to_dict() for s in settings],
        layers=list(todo),
        model_sha256=handle.sha256,
    )
    for name in todo:
        table.skipped[name] = dict(skipped[name])
        table.drops[name], table.samples[name], table.cosine_drop[name] = {}, {}, {}
        table.inferred[name] = {}
    spent = total_macs * (n + 5)  # the caching pass (+ the 2- and 3-sample probes)
    evaluated = early = calib_passes = inferred = failed = weight_fed = 0
    sent = sum(len(sp[0]["settings"]) for sp in tasks)
    try:
        for done, (i, row) in enumerate(pool.imap_unordered(measure_layer, tasks, ctx), start=1):
            name = task_layers[i]
            if isinstance(row, TaskFailure):
                for s in tasks[i][0]["settings"]:
                    table.skipped[name][Setting.from_dict(s).key] = f"failed: {row.message}"[:300]
            else:
                table.drops[name].update(row["drops"])
                table.samples[name].update(row["samples"])
                table.cosine_drop[name].update(row["cosine_drop"])
                table.skipped[name].update(row["skipped"])
                table.inferred[name].update(row["inferred"])
                inferred += len(row["inferred"])
                failed += sum(1 for v in row["skipped"].values() if not v.startswith("early"))
                spent += row["cost_macs"]
                calib_passes += row["calib_passes"]
                weight_fed += row.get("weight_fed", 0)
                evaluated += len(row["drops"])
                early += sum(1 for k, v in row["samples"].items() if v < n)
            yield Progress(
                0.05 + 0.95 * done / max(len(tasks), 1),
                f"{name}: {len(table.drops[name])} setting(s) measured",
                payload={
                    "type": "sensitivity_row",
                    "layer": name,
                    "drops": dict(table.drops[name]),
                    "inferred": dict(table.inferred[name]),
                    "cosine_drop": dict(table.cosine_drop[name]),
                    "skipped": dict(table.skipped[name]),
                    "metric": metric,
                    "kind": kind,
                },
            )
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
        # The naive sweep runs the same calibration passes, on the whole model.
        # Pairs the naive sweep would evaluate: every applicable one that a technique accepts.
        pairs = sent - failed
        naive = float(total_macs) * (n * pairs + min(n, 256) * calib_passes)
        wall = time.perf_counter() - t_start
        table.cost = {
            "unit": "MAC-weighted forward passes over the calibration samples",
            "naive_macs": naive,
            "actual_macs": float(spent),
            "multiple": float(spent / naive) if naive else None,
            "pairs": pairs,
            "measured": evaluated,
            "quick_exits": early,
            "inferred": inferred,
            "skipped_early": sum(
                1 for r in table.skipped.values() for v in r.values() if v.startswith("early")
            ),
            "weight_fed": weight_fed,
            "wall_s": round(wall, 2),
            "full_forward_s": round(t_full, 4),
            "note": "naive = one full-model evaluation on every sample per (layer, setting) pair; actual "
            "= caching pass + suffix graphs (+ calibration passes of static int8 / refit); weight_fed = cells "
            "run on the cached weight-fed suffix session",
            "pool": pool.describe(),
        }
    return table
