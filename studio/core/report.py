"""HTML + Markdown report: model summary, recipe, per-layer table, measured metrics (kind, data
source, n_samples), a trade-off plot (inline SVG drawn here, Pareto front marked), the structural
diff, verification results and the exact command that reproduces the variant.

The HTML is one self-contained file (inline CSS, inline SVG, no scripts, no network). The Markdown
reuses `studio.core.report_md` (the export's report) for the shared sections and adds the
trade-off plot (written beside it as `tradeoff.svg`) and the diff.
"""

from __future__ import annotations

import html
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from studio import __version__
from studio.core.diff import ModelDiff, diff_models
from studio.core.metrics import GLYPH, Metric
from studio.core.model import ModelHandle
from studio.core.recipe import Recipe

HTML_FILE = "report.html"
MD_FILE = "report.md"
SVG_FILE = "tradeoff.svg"
RECIPE_FILE = "recipe.yaml"
# Quality metrics the plot can use, best first: accuracy with labels, else agreement with the original.
Y_METRICS = ("top1", "top1_agreement", "cosine_mean")
KIND_COLOR = {"measured": "#1b7f3b", "fidelity": "#2358a6", "estimated": "#8a8a8a", "reference": "#b5651d"}


# ---------------------------------------------------------------------- plot data


@dataclass
class PlotPoint:
    """One point of the trade-off plot; `kind` says how its quality number was obtained."""

    label: str
    size_bytes: float
    size_kind: str
    quality: float
    quality_kind: str  # measured | fidelity | estimated | reference (the original vs itself)
    n_samples: int | None
    is_original: bool = False
    on_front: bool = False


def _best(metrics: Iterable[Metric], name: str) -> Metric | None:
    order = {"measured": 0, "fidelity": 1, "estimated": 2}
    found = sorted((m for m in metrics if m.name == name), key=lambda m: order.get(m.kind, 3))
    return found[0] if found else None


def pick_quality_metric(metric_sets: list[list[Metric]]) -> str | None:
    """The first of Y_METRICS that most points have."""
    best, best_n = None, 0
    for name in Y_METRICS:
        n = sum(1 for ms in metric_sets if _best(ms, name) is not None)
        if n > best_n:
            best, best_n = name, n
    return best


def plot_metrics(metric_sets: list[list[Metric]]) -> list[str]:
    """Quality metrics worth a plot: accuracy (top1) if measured, and fidelity (cosine_mean, else
    top1_agreement) if measured: two views, because accuracy often saturates on small eval sets."""
    have = {m.name for ms in metric_sets for m in ms}
    out = ["top1"] if "top1" in have else []
    fid = next((n for n in ("cosine_mean", "top1_agreement") if n in have), None)
    return out + ([fid] if fid else [])


def pareto_front(points: list[PlotPoint]) -> list[PlotPoint]:
    """Points no other point beats on both size (smaller) and quality (higher); flags on_front."""
    front = []
    for p in points:
        dominated = any(
            (q.size_bytes <= p.size_bytes and q.quality >= p.quality)
            and (q.size_bytes < p.size_bytes or q.quality > p.quality)
            for q in points
        )
        p.on_front = not dominated
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p.size_bytes)


def plot_points(
    original_metrics: list[Metric],
    variants: list[tuple[str, list[Metric], float | None]],
    ymetric: str | None = None,
) -> tuple[list[PlotPoint], str | None]:
    """Plot points of (label, metrics, fallback size) + the original; returns (points, y metric).
    Without `ymetric`, the first of Y_METRICS that most points have is used."""
    ymetric = ymetric or pick_quality_metric([original_metrics] + [ms for _, ms, _ in variants])
    pts: list[PlotPoint] = []
    if ymetric is None:
        return pts, None
    rows = [("original", original_metrics, None, True)] + [(lb, ms, fb, False) for lb, ms, fb in variants]
    for label, ms, fallback, is_orig in rows:
        size = _best(ms, "size_bytes")
        q = _best(ms, ymetric)
        if q is None and is_orig and ymetric != "top1":
            # Fidelity of the original against itself is 1 by definition: the reference point.
            q = Metric(ymetric, 1.0, "fidelity", "reference", n_samples=0)
            qkind = "reference"
        else:
            qkind = q.kind if q is not None else ""
        if q is None:
            continue
        if size is not None:
            sval, skind = size.value, size.kind
        elif fallback is not None:
            sval, skind = float(fallback), "estimated"
        else:
            continue
        pts.append(PlotPoint(label, float(sval), skind, float(q.value), qkind, q.n_samples, is_orig))
    pareto_front(pts)
    return pts, ymetric


# ---------------------------------------------------------------------- SVG


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{int(n)} B"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = max(hi - lo, 1e-12)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _place_label(x, y, w, taken, bounds, h: float = 14):
    """A free box for a label near (x, y): beside the point first, then further up/down."""
    x0, y0, x1, y1 = bounds

    def free(b):
        inside = b[0] >= x0 + 1 and b[2] <= x1 - 1 and b[1] >= y0 + 1 and b[3] <= y1 - 1
        return inside and all(b[2] < t[0] or b[0] > t[2] or b[3] < t[1] or b[1] > t[3] for t in taken)

    tries = []
    for k in range(0, 10):
        for dy in (-h - 1 - h * k, 1 + h * k) if k else (-h / 2, -h - 2, 2):
            tries.append(((x + 8, y + dy, x + 8 + w, y + dy + h), "start"))
            tries.append(((x - 8 - w, y + dy, x - 8, y + dy + h), "end"))
    for box, anchor in tries:
        if free(box):
            return box, anchor
    return tries[0]


def tradeoff_svg(points: list[PlotPoint], ymetric: str, *, width: int = 540, height: int = 380) -> str:
    """Scatter of quality vs size with the Pareto front; every point labelled with its kind."""
    e = html.escape
    ml, mr, mt, mb = 62, 14, 30, 46
    pw, ph = width - ml - mr, height - mt - mb
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="11" '
        f'role="img" aria-label="trade-off: {e(ymetric)} vs size">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    if not points:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no measured points</text></svg>'
        )
        return "\n".join(out)
    sizes = [p.size_bytes for p in points]
    log_x = max(sizes) / max(min(sizes), 1) > 8
    if log_x:
        lo, hi = math.log10(min(sizes)) - 0.08, math.log10(max(sizes)) + 0.08

        def fx(v):
            return ml + (math.log10(max(v, 1)) - lo) / (hi - lo) * pw

        xt = []
        for k in range(int(math.floor(lo)), int(math.ceil(hi)) + 1):
            xt += [m * 10**k for m in (1, 2, 5) if lo <= math.log10(m * 10**k) <= hi]
    else:
        pad = (max(sizes) - min(sizes)) * 0.08 or max(sizes) * 0.1
        lo, hi = max(min(sizes) - pad, 0), max(sizes) + pad

        def fx(v):
            return ml + (v - lo) / (hi - lo) * pw

        xt = _nice_ticks(lo, hi)
    qs = [p.quality for p in points]
    qpad = (max(qs) - min(qs)) * 0.12 or 0.01
    ylo, yhi = min(qs) - qpad, max(qs) + qpad
    if ymetric in ("top1", "top1_agreement", "cosine_mean"):
        yhi = min(yhi, 1.0 + qpad * 0.3)

    def fy(v):
        return mt + (1 - (v - ylo) / (yhi - ylo)) * ph

    # grid + axes
    bounded = ymetric in ("top1", "top5", "top1_agreement", "cosine_mean", "cosine_min")
    for t in [t for t in _nice_ticks(ylo, yhi) if not bounded or t <= 1.0 + 1e-9]:
        y = fy(t)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#ececec"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{t:.4g}</text>')
    for t in xt:
        x = fx(t)
        out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#ececec"/>')
        out.append(
            f'<text x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle" fill="#555">{_fmt_bytes(t)}</text>'
        )
    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    size_kinds = sorted({p.size_kind for p in points})
    out.append(
        f'<text x="{ml + pw / 2}" y="{height - 12}" text-anchor="middle" fill="#222" font-size="12">'
        f"model size ({'log scale, ' if log_x else ''}{'/'.join(size_kinds)}) — smaller is better →</text>"
    )
    out.append(
        f'<text transform="translate(16 {mt + ph / 2}) rotate(-90)" text-anchor="middle" fill="#222" '
        f'font-size="12">{e(ymetric)} — higher is better</text>'
    )
    # Pareto front as a step line (best quality reachable at each size).
    front = sorted([p for p in points if p.on_front], key=lambda p: p.size_bytes)
    if len(front) > 1:
        d = f"M{fx(front[0].size_bytes):.1f},{fy(front[0].quality):.1f}"
        for b in front[1:]:
            d += f" H{fx(b.size_bytes):.1f} V{fy(b.quality):.1f}"
        out.append(f'<path d="{d}" fill="none" stroke="#d9822b" stroke-width="1.5" stroke-dasharray="5 3"/>')
    # points first (they are obstacles for labels), then labels
    order = sorted(points, key=lambda p: (p.size_bytes, -p.quality))
    xy = [(fx(p.size_bytes), fy(p.quality)) for p in order]
    for p, (x, y) in zip(order, xy):
        color = KIND_COLOR.get(p.quality_kind, "#444")
        if p.is_original:
            r = 7
            star = " ".join(
                f"{x + r * math.cos(math.pi / 2 + k * math.pi / 5) * (1 if k % 2 == 0 else 0.45):.1f},"
                f"{y - r * math.sin(math.pi / 2 + k * math.pi / 5) * (1 if k % 2 == 0 else 0.45):.1f}"
                for k in range(10)
            )
            out.append(f'<polygon points="{star}" fill="#b5651d" stroke="#222" stroke-width="0.8"/>')
        elif p.quality_kind == "estimated":
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#fff" stroke="{color}" stroke-width="2"/>'
            )
        else:
            ring = ' stroke="#d9822b" stroke-width="2"' if p.on_front else ' stroke="#fff" stroke-width="1"'
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}"{ring}/>')
    taken = [(x - 6, y - 6, x + 6, y + 6) for x, y in xy]
    for p, (x, y) in zip(order, xy):
        glyph = "★" if p.is_original else GLYPH.get(p.quality_kind, "")
        text = f"{p.label} {glyph}"
        box, anchor = _place_label(x, y, 6.3 * len(text) + 4, taken, (ml, mt, ml + pw, mt + ph))
        taken.append(box)
        tx = box[0] + 2 if anchor == "start" else box[2] - 2
        ty = box[3] - 3
        if abs((box[1] + box[3]) / 2 - y) > 16:  # far from its point: draw a leader line
            ly = box[3] if box[3] < y else box[1]
            out.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{min(max(x, box[0]), box[2]):.1f}" y2="{ly:.1f}" '
                'stroke="#bbb" stroke-width="0.8"/>'
            )
        color = KIND_COLOR.get(p.quality_kind, "#444")
        out.append(f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="{color}">{e(text)}</text>')
    # legend: one row in the top margin, never over the data
    lx, ly = ml, 16
    for text, color in (
        ("● measured", "#1b7f3b"),
        ("◐ fidelity", "#2358a6"),
        ("○ estimated", "#8a8a8a"),
        ("★ original", "#b5651d"),
    ):
        out.append(f'<text x="{lx}" y="{ly}" fill="{color}">{text}</text>')
        lx += 6.4 * len(text) + 14
    out.append(
        f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 22}" y2="{ly - 4}" stroke="#d9822b" stroke-width="1.5" '
        f'stroke-dasharray="5 3"/><text x="{lx + 27}" y="{ly}" fill="#555">Pareto front</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------- inputs


def _as_variant(v):
    """A pipeline Variant from a Variant or a workspace VariantRecord (loads its file)."""
    if hasattr(v, "proto"):
        return v
    from studio.core.model import load_onnx_file
    from studio.core.pipeline import Variant

    prov = dict(getattr(v, "provenance", {}) or {})
    prov.setdefault("id", v.id)
    return Variant(load_onnx_file(v.path), v.recipe, prov, parent=v.parent_id, warnings=list(v.warnings))


def _label(v, i: int) -> str:
    name = getattr(v, "name", None)
    if isinstance(name, str) and name:
        return name
    rec = getattr(v, "recipe", None)
    if rec is not None and rec.name:
        return rec.name
    vid = (getattr(v, "provenance", None) or {}).get("id")
    return f"variant {vid}" if vid else f"variant {i + 1}"


def _fallback_size(v) -> float | None:
    if hasattr(v, "size_on_disk"):
        return v.size_on_disk()
    if hasattr(v, "proto"):
        from studio.core.onnx_utils import model_nbytes

        return float(model_nbytes(v.proto))
    return None


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------- write


def write_report(
    out_dir: str | os.PathLike,
    *,
    original: ModelHandle,
    variants: list[tuple[object, list[Metric]]],
    diff: ModelDiff | None = None,
    verification: dict | None = None,
    recipe: Recipe | None = None,
    reproduce_cmd: str | None = None,
    original_metrics: Iterable[Metric] = (),
    primary: int = 0,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write `report.html` (self-contained) and `report.md` (+ `tradeoff.svg`, `recipe.yaml`).

    `variants`: (Variant or workspace VariantRecord, its metrics) pairs; `variants[primary]` is the
    one the recipe, per-layer table, diff and verification describe. `verification` is the dict
    `studio.core.export` writes (any other dict is shown as key/value pairs).
    """
    if not variants:
        from studio.core.errors import StudioError

        raise StudioError("a report needs at least one variant")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    original_metrics = list(original_metrics)
    main_v = _as_variant(variants[primary][0])
    main_metrics = list(variants[primary][1])
    recipe = recipe or main_v.recipe
    if diff is None:
        diff = diff_models(original.proto, main_v.proto)
    if reproduce_cmd is None:
        from studio.core.report_md import default_reproduce

        reproduce_cmd = default_reproduce(original, RECIPE_FILE)
    labelled = [(_label(v, i), list(ms), _fallback_size(v)) for i, (v, ms) in enumerate(variants)]
    plots = []  # (y metric, points, svg, file name): accuracy first, then fidelity
    for ym in plot_metrics([original_metrics] + [ms for _, ms, _ in labelled]):
        pts, _ = plot_points(original_metrics, labelled, ym)
        if pts:
            fname = SVG_FILE if not plots else f"tradeoff_{ym}.svg"
            plots.append((ym, pts, tradeoff_svg(pts, ym), fname))
    _write(out_dir / RECIPE_FILE, recipe.dump("yaml"))
    for _, _, svg, fname in plots:
        _write(out_dir / fname, svg)

    from studio.core.report_md import render_markdown, report_data

    export_style = isinstance(verification, dict) and "checker" in verification
    data = report_data(
        main_v,
        original,
        metrics=main_metrics,
        verification=verification if export_style else None,
        reproduce=reproduce_cmd,
    )
    data["title"] = title or data["title"]
    data["recipe_yaml"] = recipe.dump("yaml")
    md = render_markdown(main_v, original, data=data)
    extra = _md_extra(plots, labelled, diff, verification if not export_style else None)
    marker = "\n## Reproduce"
    md = md.replace(marker, "\n" + extra + marker, 1) if marker in md else md + "\n" + extra
    md_path = _write(out_dir / MD_FILE, md)
    page = _html(
        data,
        plots,
        labelled,
        diff,
        verification,
        export_style,
        labelled[primary][0],
        original_metrics,
    )
    html_path = _write(out_dir / HTML_FILE, page)
    return html_path, md_path


def _diff_rows(diff: ModelDiff) -> list[dict]:
    from studio.core.diff import _fmt

    rows = []
    for d in diff.layers:
        ops = d.op_a or "—"
        if d.ops_b and d.ops_b != [d.op_a]:
            ops += " → " + "+".join(d.ops_b)
        rows.append(
            {
                "layer": d.name,
                "op": ops,
                "params": f"{_fmt(d.params_a)} → {_fmt(d.params_b)}",
                "macs": f"{_fmt(d.macs_a)} → {_fmt(d.macs_b)}",
                "bytes": f"{_fmt_bytes(d.bytes_a)} → {_fmt_bytes(d.bytes_b)}",
                "precision": d.precision_a
                if d.precision_a == d.precision_b
                else f"{d.precision_a} → {d.precision_b}",
                "changes": d.changes(precision=False) or ([d.status] if d.status != "changed" else []),
                "status": d.status,
            }
        )
    return rows


def _md_extra(plots, labelled, diff, generic_verification) -> str:
    from studio.core.report_md import metric_line

    out = ["## Trade-off", ""]
    if plots:
        out += [f"![{ym} vs size]({fname})" for ym, _, _, fname in plots] + [""]
        head = (
            "| point | size |" + "".join(f" {ym} | kind | samples |" for ym, *_ in plots) + " Pareto front |"
        )
        out += [head, "|---|---|" + "---|---|---|" * len(plots) + "---|"]
        by_plot = [{p.label: p for p in pts} for _, pts, _, _ in plots]
        for p in sorted(plots[0][1], key=lambda p: p.size_bytes):
            row = f"| {'★ ' if p.is_original else ''}{p.label} | {_fmt_bytes(p.size_bytes)} ({p.size_kind}) |"
            for pp in by_plot:
                q = pp.get(p.label)
                row += (
                    f" {q.quality:.4g} | {GLYPH.get(q.quality_kind, '★')} {q.quality_kind} | {q.n_samples or '—'} |"
                    if q
                    else " — | | |"
                )
            out.append(row + f" {'yes' if p.on_front else ''} |")
        out += ["", "Pareto front: no other point is both smaller and better (first plot's metric)."]
    else:
        out.append("No accuracy or fidelity was measured, so there is nothing to plot.")
    if len(labelled) > 1:
        out += ["", "### All variants", ""]
        for label, ms, _ in labelled:
            out += [
                f"**{label}**",
                "",
                "| metric | value | kind | samples | source |",
                "|---|---|---|---|---|",
            ]
            out += [metric_line(m.to_dict()) for m in ms] or ["| — | | | | |"]
            out.append("")
    out += ["", "## Structural diff (estimated from the graphs)", ""]
    out += [
        "| layer | op | params | MACs | weight bytes | precision | changes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in _diff_rows(diff):
        out.append(
            f"| `{r['layer']}` | {r['op']} | {r['params']} | {r['macs']} | {r['bytes']} | {r['precision']} | "
            f"{'; '.join(r['changes'])} |"
        )
    out.append("")
    out += [f"- {line}" for line in diff.summary_lines()[:4]]
    if diff.added_nodes:
        out.append("- added nodes: " + ", ".join(f"{op}×{n}" for op, n in diff.op_counts("added").items()))
    if diff.removed_nodes:
        out.append(
            "- removed nodes: " + ", ".join(f"{op}×{n}" for op, n in diff.op_counts("removed").items())
        )
    if generic_verification:
        out += ["", "## Verification", ""]
        out += [f"- {k}: {_plain(v)}" for k, v in generic_verification.items()]
    out.append("")
    return "\n".join(out)


def _plain(v) -> str:
    if isinstance(v, Metric):
        return v.label()
    if isinstance(v, bool):
        return "ok" if v else "FAILED"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:30px 0 10px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.sub{color:#5b6472;font-size:12.5px}.sub code{font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:18px 0 4px}
.card{flex:1 1 180px;border:1px solid #e3e6ea;border-radius:8px;padding:10px 14px;background:#fbfcfd}
.card .v{font-size:20px;font-weight:600}.card .k{color:#5b6472;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:6px 0}
th,td{border-bottom:1px solid #eceef1;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7;font-weight:600}tr:nth-child(even) td{background:#fcfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td code,li code{font-size:12px;background:#f3f5f7;padding:1px 4px;border-radius:3px}
pre{background:#f3f5f7;border:1px solid #e3e6ea;border-radius:6px;padding:10px 12px;font-size:12.5px;overflow:auto}
.k-measured{color:#1b7f3b}.k-fidelity{color:#2358a6}.k-estimated{color:#8a8a8a}.k-reference{color:#b5651d}
.ok{color:#1b7f3b;font-weight:600}.bad{color:#b3261e;font-weight:600}
.unchanged td{color:#8a8f98}.chg{margin:0;padding-left:16px}
figure{margin:8px 0}.plots{display:flex;flex-wrap:wrap;gap:8px}.plots svg{border:1px solid #e3e6ea;border-radius:6px}figcaption{color:#5b6472;font-size:12px}
"""


def _kind(kind: str, n: int | None = None) -> str:
    g = "★" if kind == "reference" else GLYPH.get(kind, "")
    extra = f" · {n} samples" if n else ""
    return f'<span class="k-{html.escape(kind)}">{g} {html.escape(kind)}{extra}</span>'


def _metric_value(m: Metric) -> str:
    if m.unit == "B" or m.name == "size_bytes":
        return _fmt_bytes(m.value)
    v = f"{m.value:.4g}" if isinstance(m.value, float) else str(m.value)
    return v + (f" {html.escape(m.unit)}" if m.unit and m.unit != "B" else "")


METRIC_ORDER = ("size_bytes", "top1", "top5", "top1_agreement", "cosine_mean", "cosine_min", "sqnr_db")


def _metrics_matrix(rows: list[tuple[str, list[Metric]]], highlight: str = "") -> str:
    """One row per model, one column per metric; each cell shows its kind glyph; samples and data
    source close the row (listed in full when a row mixes several)."""
    e = html.escape
    names = [n for n in METRIC_ORDER if any(m.name == n for _, ms in rows for m in ms)]
    names += sorted({m.name for _, ms in rows for m in ms} - set(names))
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    out = [f"<table><tr><th>model</th>{head}<th>samples</th><th>data source</th></tr>"]
    for label, ms in rows:
        cells = []
        for n in names:
            m = _best(ms, n)
            cells.append(
                f"<td class=num>{_metric_value(m)} <span class=k-{m.kind} title='{m.kind}'>{GLYPH[m.kind]}</span></td>"
                if m
                else "<td class=num>—</td>"
            )
        ns = sorted({m.n_samples for m in ms if m.n_samples})
        srcs = sorted({m.source for m in ms if m.n_samples})
        style = " style='font-weight:600'" if label == highlight else ""
        out.append(
            f"<tr><td{style}>{e(label)}</td>{''.join(cells)}<td class=num>{', '.join(map(str, ns)) or '—'}</td>"
            f"<td><code>{e(', '.join(srcs)) or 'file on disk'}</code></td></tr>"
        )
    out.append(
        "</table><p class=sub>● measured · ◐ fidelity (agreement with the original's outputs) · "
        "○ estimated; size_bytes is measured on disk.</p>"
    )
    return "".join(out)


def _html(data, plots, labelled, diff, verification, export_style, main_label, original_metrics) -> str:
    e = html.escape
    m = data["model"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{e(data['title'])}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{e(data['title'])}</h1>",
        f"<div class=sub>Pareto Studio {e(__version__)} · {when} · source <code>{e(str(data['source']))}</code> "
        f"(sha256 <code>{e((data['source_sha256'] or '')[:16])}…</code>) · variant <code>{e(data['variant_id'])}</code></div>",
    ]
    # headline cards: measured size + quality when we have them, structural ratios otherwise
    cards = []
    pts, ymetric = (plots[0][1], plots[0][0]) if plots else ([], "")
    orig_pt = next((p for p in pts if p.is_original), None)
    main_pt = next((p for p in pts if not p.is_original and p.label == main_label), None)
    if orig_pt and main_pt:
        ratio = orig_pt.size_bytes / main_pt.size_bytes if main_pt.size_bytes else 0
        cards.append((f"{_fmt_bytes(orig_pt.size_bytes)} → {_fmt_bytes(main_pt.size_bytes)}",
                      f"size ({main_pt.size_kind}), {ratio:.1f}× smaller"))  # fmt: skip
        cards.append((f"{orig_pt.quality:.4g} → {main_pt.quality:.4g}",
                      f"{ymetric} ({main_pt.quality_kind}, {main_pt.n_samples or '—'} samples)"))  # fmt: skip
    cards.append((f"{m['params_before']:,} → {m['params_after']:,}", "parameters (estimated, graph)"))
    cards.append((f"{m['macs_before']:,} → {m['macs_after']:,}", "MACs / sample (estimated, formula)"))
    parts.append(
        "<div class=cards>"
        + "".join(
            f"<div class=card><div class=v>{e(v)}</div><div class=k>{e(k)}</div></div>" for v, k in cards
        )
        + "</div>"
    )
    # trade-off
    parts.append("<h2>Trade-off</h2>")
    if plots:
        parts.append("<div class=plots>")
        for ym, _, svg, _ in plots:
            what = "accuracy on labelled data" if ym == "top1" else "agreement with the original's outputs"
            parts.append(
                f"<figure>{svg}<figcaption><b>{e(ym)}</b> ({what}) against model size.</figcaption></figure>"
            )
        parts.append(
            "</div><p class=sub>★ is the original; the dashed line is the Pareto front (nothing else is "
            "both smaller and better); the glyph after each name says how its number was obtained "
            "(● measured, ◐ fidelity, ○ estimated).</p>"
        )
    else:
        parts.append("<p>No accuracy or fidelity was measured, so there is nothing to plot.</p>")
    # variants + metrics
    parts.append("<h2>Metrics</h2>")
    rows = ([("★ original", original_metrics)] if original_metrics else []) + [
        (lb, ms) for lb, ms, _ in labelled
    ]
    parts.append(_metrics_matrix(rows, main_label))
    # per-layer table (structural diff)
    parts.append(
        "<h2>Layers: before → after</h2><p class=sub>Read from the two graphs (estimated, not measured).</p>"
    )
    parts.append(
        "<table><tr><th>layer</th><th>op</th><th>params</th><th>MACs / sample</th><th>weight bytes</th>"
        "<th>precision</th><th>changes</th></tr>"
    )
    for r in _diff_rows(diff):
        chg = "".join(f"<li>{e(c)}</li>" for c in r["changes"])
        parts.append(
            f"<tr class={'unchanged' if r['status'] == 'unchanged' else 'changed'}><td><code>{e(r['layer'])}</code></td>"
            f"<td>{e(r['op'])}</td><td class=num>{e(r['params'])}</td><td class=num>{e(r['macs'])}</td>"
            f"<td class=num>{e(r['bytes'])}</td><td>{e(r['precision'])}</td><td><ul class=chg>{chg}</ul></td></tr>"
        )
    parts.append("</table>")
    # recipe
    parts.append(f"<h2>Recipe</h2><pre>{e(data['recipe_yaml'])}</pre>")
    # diff summary
    parts.append("<h2>Structural diff</h2><ul>")
    parts += [f"<li>{e(line)}</li>" for line in diff.summary_lines()[:4]]
    if diff.added_nodes:
        parts.append(
            "<li>added nodes: "
            + e(", ".join(f"{op}×{n}" for op, n in diff.op_counts("added").items()))
            + "</li>"
        )
    if diff.removed_nodes:
        parts.append(
            "<li>removed nodes: "
            + e(", ".join(f"{op}×{n}" for op, n in diff.op_counts("removed").items()))
            + "</li>"
        )
    parts.append("</ul>")
    # model summary
    parts.append("<h2>Model</h2><table><tr><th></th><th>before</th><th>after</th></tr>")
    parts.append(
        f"<tr><td>weight bytes (estimated, graph)</td><td class=num>{_fmt_bytes(m['weight_bytes_before'])}</td>"
        f"<td class=num>{_fmt_bytes(m['weight_bytes_after'])}</td></tr>"
        f"<tr><td>layers with weights</td><td class=num>{m['layers']}</td><td class=num>{len(diff.layers)}</td></tr>"
        "</table>"
    )
    io = "; ".join(f"<code>{e(n)}</code> {e(str(s))} {e(t)}" for n, s, t in m["inputs"])
    oo = "; ".join(f"<code>{e(n)}</code> {e(str(s))} {e(t)}" for n, s, t in m["outputs"])
    parts.append(f"<p class=sub>Inputs: {io}<br>Outputs: {oo}<br>Opsets: {e(str(m['opsets']))}</p>")
    # verification
    if verification:
        parts.append("<h2>Verification</h2>")
        parts.append(
            _verification_html(verification) if export_style else _generic_verification(verification)
        )
    warnings = data.get("warnings") or []
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul>")
    parts.append(f"<h2>Reproduce</h2><pre>{e(data['reproduce'])}</pre>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _verification_html(v: dict) -> str:
    e = html.escape
    ok = v.get("ok")
    out = [f"<p>Overall: <span class={'ok' if ok else 'bad'}>{'passed' if ok else 'FAILED'}</span></p><ul>"]
    chk = v.get("checker") or {}
    out.append(f"<li>onnx.checker (full_check): {'ok' if chk.get('ok') else e(str(chk.get('error')))}</li>")
    for prov, r in (v.get("providers") or {}).items():
        state = "loads" if r.get("ok") else f"error: {r.get('error')}"
        flag = f"; no kernel for {', '.join(r['unsupported_ops'])}" if r.get("unsupported_ops") else ""
        out.append(
            f"<li>ONNX Runtime {e(prov)}: {e(state + flag)} ({e(', '.join(r.get('method', [])))})</li>"
        )
    fid = v.get("fidelity") or {}
    if fid:
        what = "synthetic random inputs" if fid.get("synthetic") else fid.get("data")
        vals = ", ".join(
            f"{k} {fid[k]:.4g}"
            for k in ("cosine_mean", "cosine_min", "sqnr_db", "top1_agreement")
            if fid.get(k) is not None
        )
        out.append(
            f"<li>fidelity vs original on {fid.get('n_samples')} samples of <code>{e(str(what))}</code>: {e(vals)}</li>"
        )
    s = v.get("sizes") or {}
    if s:
        out.append(
            f"<li>size on disk (measured): {_fmt_bytes(s.get('original_bytes'))} → {_fmt_bytes(s.get('variant_bytes'))}</li>"
        )
    out.append("</ul>")
    return "".join(out)


def _generic_verification(v: dict) -> str:
    e = html.escape
    return "<ul>" + "".join(f"<li>{e(str(k))}: {e(_plain(x))}</li>" for k, x in v.items()) + "</ul>"
