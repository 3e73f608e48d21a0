"""Shared formatting for CLI output: human sizes and counts, shapes, Metric rendering with its
kind, JSON that survives inf/NaN, and a rich console on stdout."""

from __future__ import annotations

import json
import math
from typing import Any

from studio.core.metrics import GLYPH, Metric


def human_bytes(n: float | None) -> str:
    """1234567 -> '1.18 MiB' (binary units; bytes below 1 KiB exact)."""
    if n is None:
        return "-"
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"
    return f"{n:.0f} TiB"  # pragma: no cover


def human_count(n: float | None) -> str:
    """1234567 -> '1.23M' (decimal, for params and MACs)."""
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{int(n)}"


def exact_bytes(n: int | float) -> str:
    return f"{int(n):,} B"


def shape_text(shape: list | None) -> str:
    if shape is None:
        return "?"
    return "[" + ",".join(str(d) for d in shape) + "]"


def json_safe(obj: Any) -> Any:
    """inf / NaN -> the strings "inf" / "-inf" / "nan" so the output is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_safe(obj.item())
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)


def metric_value(m: Metric) -> str:
    """The number with its unit, in the most readable form for its name."""
    v = m.value
    if m.unit == "B":
        return f"{human_bytes(v)} ({int(v):,} B)"
    if isinstance(v, float) and math.isinf(v):
        return f"{'∞' if v > 0 else '-∞'}{(' ' + m.unit) if m.unit else ''}"
    if m.unit == "ms":
        return f"{v:.3f} ms"
    if m.name.startswith("top") or m.name.startswith("cosine") or m.name.endswith("agreement"):
        return f"{v:.4f}"
    return f"{v:.4g}{(' ' + m.unit) if m.unit else ''}"


def metric_what(m: Metric) -> str:
    """What the number is: 'measured on 360 samples of data.npz', 'label-free fidelity vs
    ref.onnx on 360 samples of data.npz', 'measured, file on disk', 'estimated (formula)'."""
    if m.kind == "fidelity":
        ref = m.extra.get("reference")
        vs = f" vs {ref}" if ref else ""
        return f"label-free fidelity{vs} on {m.n_samples} samples of {m.source}"
    if m.kind == "measured" and m.n_samples is not None:
        if m.name.startswith("latency"):
            return f"measured over {m.n_samples} runs, {m.source}"
        return f"measured on {m.n_samples} samples of {m.source}"
    return f"{m.kind}, {m.source}"


def metric_line(m: Metric) -> str:
    return f"{GLYPH.get(m.kind, '?')} {m.name} = {metric_value(m)}  ({metric_what(m)})"


def metric_json(m: Metric) -> dict:
    d = m.to_dict()
    d["what"] = metric_what(m)
    return d


def console(stderr: bool = False):
    """A rich console (wide enough for tables when output is piped)."""
    from rich.console import Console

    c = Console(stderr=stderr)
    if not c.is_terminal:  # piped / captured: do not squeeze tables into 80 columns
        c = Console(stderr=stderr, width=200, soft_wrap=False)
    return c
