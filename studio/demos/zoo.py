"""Architecture zoo: small PyTorch models covering the graph patterns real networks use.

Each is built with seeded random weights (BatchNorm statistics calibrated on one random batch),
exported to ONNX opset 17 with a dynamic batch axis, and cached with a calibration set::

    resnet       residual CNN (BasicBlocks, 1x1 projection shortcut)
    mobilenetv2  inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 linear projection
    squeezenet   fire modules: 1x1 squeeze, parallel 1x1 / 3x3 expand joined by Concat
    shufflenet   grouped 1x1 convs, channel shuffle (Reshape-Transpose-Reshape), depthwise
    rnn          token embedding -> LSTM -> GRU -> linear head (last step)
    transformer  token embedding + 2 pre-norm encoder layers (MatMul attention, GELU MLP)
    yolo         two-scale backbone, nearest Resize + Concat neck, detection head with Split

Files go to a cache folder (``~/.cache/pareto-studio/zoo`` by default), never into the repo.
torch is imported inside functions only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPSET = 17
ZOO_VERSION = "2"
CALIB_SAMPLES = 64
VOCAB, SEQ_LEN = 1000, 16
NAMES = ("resnet", "mobilenetv2", "squeezenet", "shufflenet", "rnn", "transformer", "yolo")


@dataclass(frozen=True)
class ZooModel:
    name: str
    onnx_path: Path
    calib_path: Path  # npz keyed by the model's input name (no labels)
    description: str


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("pareto-studio")) / "zoo"


# ------------------------------------------------------------------------------ the models


def _modules():
    """Define the zoo's nn.Module classes (needs torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cbr(cin, cout, k=3, s=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = cbr(cin, cout, 3, stride)
            self.b = cbr(cout, cout, 3, 1, act=False)
            self.short = cbr(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            s = x if self.short is None else self.short(x)
            return F.relu(self.b(self.a(x)) + s)

    class ResNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = cbr(3, 16)
            self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
            self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
            self.layer3 = nn.Sequential(BasicBlock(32, 64, 2))
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(self.stem(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hid = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.expand = cbr(cin, hid, 1)
            self.dw = cbr(hid, hid, 3, stride, groups=hid)
            self.project = cbr(hid, cout, 1, act=False)

        def forward(self, x):
            y = self.project(self.dw(self.expand(x)))
            return x + y if self.use_res else y

    class MobileNetV2(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = cbr(3, 16, 3, 2)
            self.blocks = nn.Sequential(
                InvertedResidual(16, 16, 1, 4),
                InvertedResidual(16, 24, 2, 4),
                InvertedResidual(24, 24, 1, 4),
                InvertedResidual(24, 32, 2, 4),
            )
            self.head = cbr(32, 128, 1)
            self.classifier = nn.Linear(128, classes)

        def forward(self, x):
            x = self.head(self.blocks(self.stem(x)))
            return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.squeeze = cbr(cin, squeeze, 1)
            self.e1 = cbr(squeeze, expand, 1)
            self.e3 = cbr(squeeze, expand, 3)

        def forward(self, x):
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    class SqueezeNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = cbr(3, 32, 3, 2)
            self.fire1 = Fire(32, 8, 32)
            self.fire2 = Fire(64, 16, 48)
            self.fire3 = Fire(96, 16, 64)
            self.classifier = nn.Conv2d(128, classes, 1)

        def forward(self, x):
            x = self.fire1(self.stem(x))
            x = self.fire3(self.fire2(F.max_pool2d(x, 2)))
            return torch.flatten(F.adaptive_avg_pool2d(self.classifier(x), 1), 1)

    def shuffle(x, groups):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, channels, groups=2):
            super().__init__()
            mid = channels // 2
            self.groups = groups
            self.g1 = cbr(channels, mid, 1, groups=groups)
            self.dw = cbr(mid, mid, 3, groups=mid, act=False)
            self.g2 = cbr(mid, channels, 1, groups=groups, act=False)

        def forward(self, x):
            y = shuffle(self.g1(x), self.groups)
            return F.relu(x + self.g2(self.dw(y)))

    class ShuffleNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = cbr(3, 32, 3, 2)
            self.units = nn.Sequential(ShuffleUnit(32), ShuffleUnit(32))
            self.down = cbr(32, 64, 3, 2)
            self.units2 = nn.Sequential(ShuffleUnit(64), ShuffleUnit(64))
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = self.units2(self.down(self.units(self.stem(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class RNN(nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 32)
            self.lstm = nn.LSTM(32, 64, batch_first=True)
            self.gru = nn.GRU(64, 64, batch_first=True)
            self.head = nn.Linear(64, classes)

        def forward(self, ids):
            x, _ = self.lstm(self.emb(ids))
            x, _ = self.gru(x)
            return self.head(x[:, -1])

    class EncoderLayer(nn.Module):
        def __init__(self, d=64, heads=4, ff=256):
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.out = nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)

        def forward(self, x):
            n, t, d = x.shape
            h = self.norm1(x)

            def split(v):
                return v.view(n, t, self.heads, d // self.heads).transpose(1, 2)

            q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
            x = x + self.out((att @ v).transpose(1, 2).reshape(n, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    class Transformer(nn.Module):
        def __init__(self, classes=5, d=64):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, d)
            self.pos = nn.Parameter(torch.randn(1, SEQ_LEN, d) * 0.02)
            self.layers = nn.Sequential(EncoderLayer(d), EncoderLayer(d))
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, classes)

        def forward(self, ids):
            x = self.layers(self.emb(ids) + self.pos)
            return self.head(self.norm(x).mean(1))

    class Yolo(nn.Module):
        def __init__(self, classes=4, anchors=3):
            super().__init__()
            self.c3 = nn.Sequential(cbr(3, 16, 3, 2), cbr(16, 32, 3, 2))  # stride 4
            self.c4 = cbr(32, 64, 3, 2)  # stride 8
            self.lateral = cbr(64, 32, 1)
            self.fuse = cbr(64, 64, 3)
            self.classes = classes
            self.pred = nn.Conv2d(64, anchors * (5 + classes), 1)

        def forward(self, x):
            p3 = self.c3(x)
            p4 = self.lateral(self.c4(p3))
            up = F.interpolate(p4, scale_factor=2.0, mode="nearest")  # Resize
            y = self.pred(self.fuse(torch.cat([p3, up], 1)))  # Concat
            n, _, h, w = y.shape
            y = y.view(n, -1, 5 + self.classes, h * w)
            box, obj, cls = torch.split(y, [4, 1, self.classes], 2)  # Split
            return torch.cat([box.sigmoid() * 2.0, obj.sigmoid(), cls.softmax(2)], 2).flatten(1)

    return {
        "resnet": (ResNet, "image"),
        "mobilenetv2": (MobileNetV2, "image"),
        "squeezenet": (SqueezeNet, "image"),
        "shufflenet": (ShuffleNet, "image"),
        "rnn": (RNN, "tokens"),
        "transformer": (Transformer, "tokens"),
        "yolo": (Yolo, "image64"),
    }


DESCRIPTIONS = {
    "resnet": "ResNet-style residual CNN (BasicBlocks, projection shortcut), 3x32x32",
    "mobilenetv2": "MobileNetV2-style inverted residuals (depthwise 3x3), 3x32x32",
    "squeezenet": "SqueezeNet-style fire modules (squeeze / expand, Concat), 3x32x32",
    "shufflenet": "ShuffleNet-style grouped 1x1 convs + channel shuffle, 3x32x32",
    "rnn": f"Embedding -> LSTM -> GRU -> Linear over {SEQ_LEN} tokens",
    "transformer": f"2-layer pre-norm transformer encoder over {SEQ_LEN} tokens",
    "yolo": "YOLO-style detector: two scales, Resize + Concat neck, Split head, 3x64x64",
}


def _example(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return rng.integers(0, VOCAB, size=(n, SEQ_LEN)).astype(np.int64)
    size = 64 if kind == "image64" else 32
    return rng.standard_normal((n, 3, size, size)).astype(np.float32)


def build_model(name: str, seed: int = 0):
    """The torch module for `name` with seeded weights and calibrated BatchNorm, in eval mode."""
    import torch

    cls, kind = _modules()[name]
    torch.manual_seed(seed)
    model = cls()
    # One forward pass in train mode gives BatchNorm real running statistics (random init has
    # mean 0 / var 1, which would make folded convs meaningless).
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(_example(kind, 32, seed + 1)))
    return model.eval(), kind


def export_model(name: str, path: Path, seed: int = 0) -> Path:
    """Export zoo model `name` to ONNX opset 17 (input `input`, output `output`, dynamic batch)."""
    import warnings

    import torch

    model, kind = build_model(name, seed)
    x = torch.from_numpy(_example(kind, 2, seed + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (TracerWarning, deprecations)
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=True,
        )
    tmp.replace(path)
    return path


def build_zoo(names=NAMES, cache_dir: str | Path | None = None, seed: int = 0) -> dict[str, ZooModel]:
    """Export (once; cached by name, seed and zoo version) and return the zoo models."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, ZooModel] = {}
    kinds = None
    for name in names:
        if name not in NAMES:
            raise ValueError(f"unknown zoo model {name!r}; choose from {NAMES}")
        stem = f"{name}-s{seed}-v{ZOO_VERSION}"
        onnx_path, calib = root / f"{stem}.onnx", root / f"{stem}-calib.npz"
        stamp = root / f"{stem}.json"
        if not (onnx_path.is_file() and calib.is_file() and stamp.is_file()):
            kinds = kinds or {k: v[1] for k, v in _modules().items()}
            export_model(name, onnx_path, seed)
            np.savez(calib, input=_example(kinds[name], CALIB_SAMPLES, seed + 3))
            stamp.write_text(json.dumps({"name": name, "seed": seed, "version": ZOO_VERSION}))
        out[name] = ZooModel(name, onnx_path, calib, DESCRIPTIONS[name])
    return out


# ------------------------------------------------------------------------------ the recipe

BIG_LINEAR_PARAMS = 4096  # Gemm / MatMul weights at least this big get the low-rank step


def svd_ratio_for_half_params(k: int, n: int) -> float:
    """rank_ratio whose two factors hold half the parameters of a K x N weight."""
    return round(min(1.0, 0.5 * k * n / (k + n) / min(k, n)), 4)


def default_recipe(analysis, *, calib_samples: int = 32):
    """The zoo's mixed recipe: 25% of channels pruned where the pruner supports it, big
    Gemm/MatMul layers factored by SVD to half their parameters, int8 static everywhere it
    applies and fp16 for the float layers it refuses (embeddings)."""
    from studio.core.recipe import Recipe
    from studio.plugin_api.registry import default_registry

    reg = default_registry()
    int8, fp16 = reg.get("int8_static"), reg.get("fp16")
    layers: dict[str, dict] = {}
    for la in analysis.layers:
        if la.op_type in ("Gemm", "MatMul") and len(la.weight_shape) == 2 and la.params >= BIG_LINEAR_PARAMS:
            k, n = la.weight_shape
            layers[la.name] = {"decompose": {"svd": {"rank_ratio": svd_ratio_for_half_params(k, n)}}}
        elif not int8.applies_to(la) and fp16.applies_to(la):
            layers[la.name] = {"quantize": "fp16"}  # embeddings: int8_static has no Gather path
    return Recipe.from_dict(
        {
            "name": "zoo default mix",
            "calibration": {"n_samples": calib_samples},
            "defaults": {"prune": {"channels": {"ratio": 0.25}}, "quantize": "int8_static"},
            "layers": layers,
        },
        source="zoo default recipe",
    )


# ------------------------------------------------------------------------------ one run


def run_zoo_model(model: ZooModel, out_dir: str | Path, *, n_samples: int = 32) -> dict:
    """inspect -> default recipe -> compress -> export + verification, as one JSON-able row.

    Sizes are measured on disk; fidelity compares the exported variant with the original on
    `n_samples` synthetic inputs; refused layers carry the technique's reason."""
    import time

    from studio.core.evaluate import calibration_subset, load_npz
    from studio.core.export import export_variant
    from studio.core.graph import analyze
    from studio.core.jobs import drive
    from studio.core.model import load_model
    from studio.core.pipeline import compress, resolve_plan

    t0 = time.time()
    handle = load_model(model.onnx_path)
    analysis = analyze(handle.proto)
    recipe = default_recipe(analysis, calib_samples=n_samples)
    plan = resolve_plan(analysis, recipe)
    calib = calibration_subset(load_npz(model.calib_path), n_samples, seed=0)
    variant = drive(compress(handle, recipe, calibration=calib.inputs))
    result = export_variant(variant, handle, Path(out_dir), n_samples=n_samples)
    ver = result.verification
    fid = ver.get("fidelity", {})
    sizes = ver.get("sizes", {})
    unsupported = sorted(
        {op for r in ver.get("providers", {}).values() for op in r.get("unsupported_ops", [])}
    )
    return {
        "model": model.name,
        "description": model.description,
        "layers": len(analysis.layers),
        "op_types": sorted(analysis.op_counts),
        "recipe": recipe.to_dict(),
        "size_before_bytes": sizes.get("original_bytes"),
        "size_after_bytes": sizes.get("variant_bytes"),
        "size_kind": "measured (file on disk)",
        "fidelity": {k: fid.get(k) for k in ("cosine_mean", "cosine_min", "sqnr_db", "top1_agreement")},
        "fidelity_data": fid.get("data"),
        "fidelity_n_samples": fid.get("n_samples"),
        "verified": bool(ver.get("ok")),
        "unsupported_ops": unsupported,
        "refused": refused_layers(plan.skipped, variant.warnings),
        "steps": variant.provenance.get("steps", []),
        "warnings": variant.warnings,
        "seconds": round(time.time() - t0, 2),
    }


def refused_layers(skipped: dict[str, list[str]], warnings: list[str]) -> dict[str, list[str]]:
    """layer -> reasons a step did not apply: refused up front (applies_to) or while applying."""
    out: dict[str, list[str]] = {k: list(v) for k, v in skipped.items()}
    for w in warnings:
        layer, sep, reason = w.partition(": ")
        if not sep or "skipped" not in reason or reason.startswith("skipped "):
            continue  # "X: skipped ..." lines repeat the up-front refusals already listed
        out.setdefault(layer, []).append(reason)
    return out
