"""A Markdown report of one variant: model summary, recipe, per-layer before/after, metrics with
their kind and source, verification results and the command that reproduces it.

`report_data` gathers everything as plain dicts (the HTML report reuses it); `render_markdown`
formats it.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path

from studio import __version__
from studio.core.graph import ModelAnalysis, analyze
from studio.core.metrics import GLYPH, Metric
from studio.core.pipeline import layers_for


def layer_rows(
    before: ModelAnalysis, after: ModelAnalysis, plans: dict[str, str] | None = None
) -> list[dict]:
    """One row per original layer: params / weight bytes / MACs before and after (all estimated
    from the graphs, summed over the `name/...` nodes a technique derived from the layer)."""
    plans = plans or {}
    after_by = after.by_name()
    rows = []
    for la in before.layers:
        derived = layers_for(la.name, after)
        now = [after_by[n] for n in derived]
        rows.append(
            {
                "layer": la.name,
                "op_type": la.op_type,
                "plan": plans.get(la.name, "—"),
                "params_before": la.params,
                "params_after": sum(x.params for x in now),
                "bytes_before": la.weight_bytes,
                "bytes_after": sum(x.weight_bytes for x in now),
                "macs_before": la.macs,
                "macs_after": sum(x.macs for x in now),
                "dtype_after": ",".join(sorted({x.dtype for x in now})) or "removed",
                "nodes_after": derived,
            }
        )
    return rows


def default_reproduce(original, recipe_path: str = "recipe.yaml", out: str | None = None) -> str:
    """`studio compress SOURCE --recipe RECIPE -o OUT` for the report."""
    src = str(original.source_path) if original.source_path else "MODEL.onnx"
    out = out or f"{Path(src).stem}_compressed.onnx"
    parts = ["studio", "compress", src, "--recipe", recipe_path, "-o", out]
    ts = original.torch_source or {}
    if ts.get("factory"):
        parts += ["--factory", ts["factory"]]
    return shlex.join(parts)


def report_data(
    variant, original, *, metrics: Iterable[Metric] = (), verification: dict | None = None, reproduce=None
) -> dict:
    """Everything a report shows, as plain data (shared by the Markdown and HTML reports)."""
    before = analyze(original.proto, with_stats=False)
    after = analyze(variant.proto, with_stats=False)
    names = [la.name for la in before.layers]
    try:
        plans = {k: v.summary() for k, v in variant.recipe.resolve(names, strict=False).items()}
    except Exception:  # noqa: BLE001 - a report never fails on a recipe it cannot resolve
        plans = {}
    return {
        "title": f"{original.name} — compressed",
        "studio_version": __version__,
        "source": str(original.source_path) if original.source_path else None,
        "source_sha256": original.sha256,
        "variant_id": (variant.provenance or {}).get("id", ""),
        "model": {
            "inputs": before.inputs,
            "outputs": before.outputs,
            "opsets": before.opsets,
            "layers": len(before.layers),
            "params_before": before.total_params,
            "params_after": after.total_params,
            "weight_bytes_before": before.total_weight_bytes,
            "weight_bytes_after": after.total_weight_bytes,
            "macs_before": before.total_macs,
            "macs_after": after.total_macs,
            "ops_after": after.op_counts,
        },
        "recipe_yaml": variant.recipe.dump("yaml"),
        "recipe_summary": variant.recipe.summary(),
        "rows": layer_rows(before, after, plans),
        "metrics": [m.to_dict() for m in metrics],
        "verification": verification,
        "warnings": list(getattr(variant, "warnings", []) or []),
        "provenance": variant.provenance,
        "reproduce": reproduce or default_reproduce(original),
    }


def _n(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, int) and abs(x) >= 10000:
        return f"{x:,}"
    return str(x)


def _bytes(n) -> str:
    if n is None:
        return "—"
    for unit, f in (("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n} B"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def metric_line(m: dict) -> str:
    """`| name | value unit | kind (glyph) | n | source |`"""
    n = m.get("n_samples")
    unit = m.get("unit") or ""
    value = _bytes(int(m["value"])) if unit == "B" else f"{_n(m['value'])}{(' ' + unit) if unit else ''}"
    return (
        f"| {m['name']} | {value} | "
        f"{GLYPH.get(m['kind'], '')} {m['kind']} | {n if n is not None else '—'} | {m['source']} |"
    )


def render_markdown(
    variant,
    original,
    *,
    metrics: Iterable[Metric] = (),
    verification: dict | None = None,
    reproduce: str | None = None,
    data: dict | None = None,
) -> str:
    """The report as Markdown. Pass `data` (from `report_data`) to skip re-analysing the models."""
    d = data or report_data(
        variant, original, metrics=metrics, verification=verification, reproduce=reproduce
    )
    m = d["model"]
    out: list[str] = [f"# {d['title']}", ""]
    out += [
        f"Pareto Studio {d['studio_version']} · variant `{d['variant_id']}` · source `{d['source']}` "
        f"(sha256 `{(d['source_sha256'] or '')[:16]}…`)",
        "",
        "## Model",
        "",
        "| | before | after | ratio |",
        "|---|---|---|---|",
        f"| parameters (estimated, graph) | {_n(m['params_before'])} | {_n(m['params_after'])} | "
        f"{_ratio(m['params_before'], m['params_after'])} |",
        f"| weight bytes (estimated, graph) | {_bytes(m['weight_bytes_before'])} | "
        f"{_bytes(m['weight_bytes_after'])} | {_ratio(m['weight_bytes_before'], m['weight_bytes_after'])} |",
        f"| MACs / sample (estimated, formula) | {_n(m['macs_before'])} | {_n(m['macs_after'])} | "
        f"{_ratio(m['macs_before'], m['macs_after'])} |",
        "",
        "Inputs: " + ", ".join(f"`{n}` {s} {t}" for n, s, t in m["inputs"]),
        "",
        "Outputs: " + ", ".join(f"`{n}` {s} {t}" for n, s, t in m["outputs"]),
        "",
        "## Recipe",
        "",
        "```yaml",
        d["recipe_yaml"].rstrip(),
        "```",
        "",
        "## Layers (before → after, estimated from the graphs)",
        "",
        "| layer | op | plan | params | weight bytes | MACs | dtype after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        out.append(
            f"| `{r['layer']}` | {r['op_type']} | {r['plan']} | {_n(r['params_before'])} → "
            f"{_n(r['params_after'])} | {_bytes(r['bytes_before'])} → {_bytes(r['bytes_after'])} | "
            f"{_n(r['macs_before'])} → {_n(r['macs_after'])} | {r['dtype_after']} |"
        )
    out += ["", "## Metrics", ""]
    if d["metrics"]:
        out += ["| metric | value | kind | samples | source |", "|---|---|---|---|---|"]
        out += [metric_line(x) for x in d["metrics"]]
        out += ["", "● measured · ○ estimated · ◐ fidelity (agreement with the original model's outputs)"]
    else:
        out.append("No measurements were taken.")
    v = d["verification"]
    if v:
        out += ["", "## Verification", ""]
        out.append(f"Overall: **{'passed' if v.get('ok') else 'FAILED'}**")
        out.append("")
        chk = v.get("checker", {})
        out.append(f"- onnx.checker (full_check): {'ok' if chk.get('ok') else chk.get('error')}")
        for prov, r in (v.get("providers") or {}).items():
            state = "loads" if r.get("ok") else f"error: {r.get('error')}"
            flag = f"; no kernel for {', '.join(r['unsupported_ops'])}" if r.get("unsupported_ops") else ""
            out.append(f"- ONNX Runtime {prov}: {state}{flag} ({', '.join(r.get('method', []))})")
        fid = v.get("fidelity") or {}
        if fid:
            what = "synthetic random inputs" if fid.get("synthetic") else fid.get("data")
            out.append(f"- fidelity vs original on {fid.get('n_samples')} samples of {what}")
        s = v.get("sizes") or {}
        if s:
            out.append(
                f"- size on disk (measured): {_bytes(s.get('original_bytes'))} → "
                f"{_bytes(s.get('variant_bytes'))} ({_ratio(s.get('original_bytes'), s.get('variant_bytes'))} smaller)"
            )
        ops = v.get("ops") or {}
        if ops:
            out.append("- ops: " + ", ".join(f"{k}×{o['count']}" for k, o in sorted(ops.items())))
        out.append(f"- recipe sha256 `{v.get('recipe_sha256', '')[:16]}…`")
    if d["warnings"]:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in d["warnings"]]
    out += ["", "## Reproduce", "", "```sh", d["reproduce"], "```", ""]
    return "\n".join(out)
