"""Fake quantization with a straight-through estimator (STE), for training in torch.

Two uses:

* **QAT for the deployable formats** (int8 per-channel symmetric weights + per-tensor u8
  activations, mirroring ONNX Runtime's QDQ ``int8_static``; int8 dynamic; int4 block-wise weights).
  The Distill technique trains the student with these in the forward pass so that ORT's own
  quantization, re-run on the exported float student, lands on nearly the same grid.
* **Low-bit simulation**: binary / ternary weights (XNOR-Net / TWN scaling) and DoReFa k-bit
  weights and activations. ONNX Runtime has no kernels for these, so they are *simulated*: the
  accuracy is measured **in torch** on the fake-quantized model (never with ORT), and the size is an
  *estimate* (bits x parameters + one float scale per output channel); nothing runnable is exported.

torch is imported at module level: this module is only imported when distillation runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from studio.core.metrics import Metric

# ---------------------------------------------------------------------- STE primitives


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def ste(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Value of ``forward``, gradient of ``backward``."""
    return backward + (forward - backward).detach()


def _per_out(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def _bcast(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (w.dim() - 1)))


def fake_quant_symmetric(w: torch.Tensor, bits: int, *, per_channel: bool = True) -> torch.Tensor:
    """Symmetric signed k-bit fake quant, one scale per output channel (dim 0) or per tensor.

    Scale ``absmax / (2^(k-1) - 1)`` like ORT's symmetric weight quantization (reduce_range: k=7).
    """
    qmax = 2 ** (bits - 1) - 1
    absmax = _per_out(w).abs().amax(1) if per_channel else w.abs().amax().reshape(1)
    scale = (absmax.detach() / qmax).clamp_min(1e-12)
    s = _bcast(scale, w) if per_channel else scale
    return torch.clamp(ste_round(w / s), -qmax, qmax) * s


def fake_quant_blocks(w: torch.Tensor, bits: int, block: int, *, symmetric: bool) -> torch.Tensor:
    """Block-wise k-bit weight fake quant along the input axis (int4 weight-only, MatMulNBits)."""
    out_ch = w.shape[0]
    flat = w.reshape(out_ch, -1)
    k = flat.shape[1]
    pad = (-k) % block
    x = torch.nn.functional.pad(flat, (0, pad)).reshape(out_ch, -1, block)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = (x.abs().amax(-1, keepdim=True).detach() / qmax).clamp_min(1e-12)
        q = torch.clamp(ste_round(x / s), -qmax - 1, qmax) * s
    else:
        lo = x.amin(-1, keepdim=True).detach().clamp_max(0)
        hi = x.amax(-1, keepdim=True).detach().clamp_min(0)
        s = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
        zp = torch.round(-lo / s)
        q = (torch.clamp(ste_round(x / s) + zp, 0, 2**bits - 1) - zp) * s
    return q.reshape(out_ch, -1)[:, :k].reshape(w.shape)


def fake_quant_affine(x: torch.Tensor, lo: float, hi: float, bits: int = 8) -> torch.Tensor:
    """Asymmetric per-tensor fake quant of activations to [lo, hi] (u8 in ORT QDQ)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2**bits - 1
    scale = max((hi - lo) / levels, 1e-12)
    zp = round(-lo / scale)
    q = torch.clamp(ste_round(x / scale) + zp, 0, levels)
    return (q - zp) * scale


def binarize(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net: alpha * sign(w), alpha = mean |w| per output channel; clipped STE (|w| <= 1)."""
    alpha = _bcast(_per_out(w).abs().mean(1), w).detach()
    fwd = alpha * torch.where(w >= 0, 1.0, -1.0)
    return ste(fwd, torch.clamp(w, -1.0, 1.0))


def ternarize(w: torch.Tensor) -> torch.Tensor:
    """Ternary weight networks: threshold 0.7 * mean |w|, scale = mean |w| above it, per channel."""
    a = _per_out(w).abs()
    delta = 0.7 * a.mean(1, keepdim=True)
    mask = (a > delta).float()
    alpha = (a * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    fwd = _bcast(alpha, w).detach() * torch.sign(w) * mask.reshape(w.shape)
    return ste(fwd, w)


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa k-bit weights: 2 * quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1, scaled back to
    the layer's range (a per-tensor float scale) so a pretrained model keeps its output range."""
    t = torch.tanh(w)
    m = t.abs().max().clamp_min(1e-12)
    levels = 2**bits - 1
    q = 2 * (ste_round((t / (2 * m) + 0.5) * levels) / levels) - 1
    return q * w.abs().max().detach()


def dorefa_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa k-bit activations: quantize_k(clip(x, 0, 1))."""
    levels = 2**bits - 1
    return ste_round(torch.clamp(x, 0.0, 1.0) * levels) / levels


# ---------------------------------------------------------------------- modules on a layer


class WeightQuant(nn.Module):
    """A parametrization: the layer's weight as seen in forward is quantized (STE backward)."""

    def __init__(self, kind: str, bits: int = 8, block: int = 32, symmetric: bool = True):
        super().__init__()
        self.kind, self.bits, self.block, self.symmetric = kind, bits, block, symmetric

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "symmetric":
            return fake_quant_symmetric(w, self.bits)
        if self.kind == "blocks":
            return fake_quant_blocks(w, self.bits, self.block, symmetric=self.symmetric)
        if self.kind == "binary":
            return binarize(w)
        if self.kind == "ternary":
            return ternarize(w)
        if self.kind == "dorefa":
            return dorefa_weight(w, self.bits)
        raise ValueError(self.kind)


class ActQuant:
    """Forward pre-hook quantizing a layer's input.

    ``static``: u8 per-tensor with an EMA of the observed min/max (the range ORT's minmax
    calibration would find); ``dynamic``: range of each batch (ORT DynamicQuantizeLinear);
    ``dorefa``: DoReFa k-bit on [0, 1].
    """

    def __init__(self, kind: Literal["static", "dynamic", "dorefa"], bits: int = 8, momentum: float = 0.9):
        self.kind, self.bits, self.momentum = kind, bits, momentum
        self.lo: float | None = None
        self.hi: float | None = None

    def __call__(self, module, args):
        x = args[0]
        if self.kind == "dorefa":
            return (dorefa_activation(x, self.bits), *args[1:])
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.kind == "static":
            if self.lo is None or not module.training:
                self.lo = lo if self.lo is None else self.lo
                self.hi = hi if self.hi is None else self.hi
            else:
                m = self.momentum
                self.lo = m * self.lo + (1 - m) * lo
                self.hi = m * self.hi + (1 - m) * hi
            lo, hi = self.lo, self.hi
        return (fake_quant_affine(x, lo, hi, self.bits), *args[1:])


@dataclass
class Attached:
    """Handles to undo what :func:`attach` did."""

    module: nn.Module
    hook: object | None = None


def attach(module: nn.Module, weight: WeightQuant | None, act: ActQuant | None) -> Attached:
    """Put weight / input fake quantization on one Conv / Linear layer."""
    if weight is not None:
        parametrize.register_parametrization(module, "weight", weight)
    hook = module.register_forward_pre_hook(act) if act is not None else None
    return Attached(module, hook)


def detach_all(items: list[Attached], *, bake: bool) -> None:
    """Remove fake quant; ``bake`` keeps the weights on the quantization grid."""
    for a in items:
        if a.hook is not None:
            a.hook.remove()
        if parametrize.is_parametrized(a.module, "weight"):
            parametrize.remove_parametrizations(a.module, "weight", leave_parametrized=bake)


# ---------------------------------------------------------------------- low-bit simulation


@dataclass(frozen=True)
class LowBitSpec:
    """How one layer is simulated: ``binary`` (1 bit), ``ternary`` (2 bits stored, log2(3) of
    information) or ``dorefa`` with ``bits`` weights; ``act_bits`` adds DoReFa activations."""

    kind: Literal["binary", "ternary", "dorefa"]
    bits: int = 2
    act_bits: int | None = None

    @property
    def weight_bits(self) -> int:
        return {"binary": 1, "ternary": 2}.get(self.kind, self.bits)


@dataclass
class LowBitResult:
    """A simulated low-bit model: torch accuracy (measured) and deployable size (estimated)."""

    model: nn.Module
    metrics: list[Metric]
    per_layer: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    attached: list[Attached] = field(default_factory=list)  # lets a caller remove the fake quant


def estimate_lowbit_bytes(model: nn.Module, specs: dict[str, LowBitSpec]) -> tuple[int, dict[str, dict]]:
    """Estimated deployable bytes: k bits per quantized weight + a float32 scale per output
    channel; every other parameter / buffer stays float32."""
    total_bits = 0
    per_layer: dict[str, dict] = {}
    quantized = set()
    for path, spec in specs.items():
        mod = model.get_submodule(path)
        w = mod.weight
        n = w.numel()
        bits = n * spec.weight_bits + w.shape[0] * 32
        per_layer[path] = {"params": n, "weight_bits": spec.weight_bits, "bytes": math.ceil(bits / 8)}
        total_bits += bits
        quantized.add(f"{path}.weight")
        quantized.add(f"{path}.parametrizations.weight.original")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name not in quantized:
            total_bits += t.numel() * 32
    return math.ceil(total_bits / 8), per_layer


def lowbit_attach(model: nn.Module, specs: dict[str, LowBitSpec]) -> list[Attached]:
    out = []
    for path, spec in specs.items():
        mod = model.get_submodule(path)
        if not isinstance(mod, nn.Conv2d | nn.Linear | nn.Conv1d):
            raise ValueError(
                f"{path}: low-bit simulation handles Conv / Linear layers, not {type(mod).__name__}"
            )
        wq = WeightQuant(spec.kind, spec.bits)
        act = ActQuant("dorefa", spec.act_bits) if spec.act_bits else None
        out.append(attach(mod, wq, act))
    return out


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of a torch model (fake-quantized or not) on numpy inputs."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(np.asarray(x[i : i + batch], dtype=np.float32)))
            hits += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return hits / max(len(x), 1)


def simulate_lowbit(
    teacher: nn.Module,
    specs: dict[str, LowBitSpec],
    train_inputs: np.ndarray,
    eval_inputs: np.ndarray,
    eval_labels: np.ndarray,
    cfg=None,
    *,
    report=None,
) -> LowBitResult:
    """Train a low-bit copy of ``teacher`` by distillation and measure it **in torch**.

    ``specs`` keys are module paths (``conv2.0``) or ONNX node names (``/conv2/conv2.0/Conv``).
    BatchNorm is folded into its conv first (binarising the deployed weight). The metrics say what
    they are: ``accuracy`` is measured with torch on the fake-quantized model (kind "measured",
    source names the simulation: no ONNX Runtime kernel runs these formats), ``size_bytes`` is an
    estimate (kind "estimated").
    """
    import copy

    from studio_distill.kd import KDConfig, train_kd
    from studio_distill.torch_map import fold_batchnorms, module_path_for

    cfg = cfg or KDConfig()
    student = copy.deepcopy(teacher).eval()
    fold_batchnorms(student)
    modules = dict(student.named_modules())
    resolved: dict[str, LowBitSpec] = {}
    for key, spec in specs.items():
        path = key if key in modules else module_path_for(key, modules)
        if path is None:
            raise ValueError(f"{key}: no such module in the torch model")
        resolved[path] = spec
    fp32_bytes, _ = estimate_lowbit_bytes(student, {})
    est_bytes, per_layer = estimate_lowbit_bytes(student, resolved)
    attached = lowbit_attach(student, resolved)
    acc0 = torch_accuracy(student, eval_inputs, eval_labels)
    res = train_kd(student, teacher, [np.asarray(train_inputs, dtype=np.float32)], cfg, report=report)
    acc1 = torch_accuracy(student, eval_inputs, eval_labels)
    src = "torch simulation (fake-quantized weights; no ONNX Runtime kernel for these bit widths)"
    n = len(eval_labels)
    metrics = [
        Metric("accuracy", acc1, "measured", src, n_samples=n),
        Metric("accuracy_before_training", acc0, "measured", src, n_samples=n),
        Metric(
            "accuracy_teacher",
            torch_accuracy(teacher, eval_inputs, eval_labels),
            "measured",
            "torch",
            n_samples=n,
        ),
        Metric(
            "size_bytes",
            float(est_bytes),
            "estimated",
            "bits x parameters + float32 scale per channel",
            unit="B",
        ),
        Metric("size_bytes_fp32", float(fp32_bytes), "estimated", "32 bits x parameters", unit="B"),
    ]
    return LowBitResult(student, metrics, per_layer, res.history, attached)
