"""Reports: self-contained HTML + Markdown with an SVG trade-off plot, from real variants."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from studio.cli.main import main
from studio.core.evaluate import evaluate, load_npz
from studio.core.jobs import drive
from studio.core.metrics import Metric
from studio.core.model import load_model
from studio.core.pipeline import compress
from studio.core.recipe import Recipe
from studio.core.report import PlotPoint, pareto_front, plot_points, tradeoff_svg, write_report
from studio.core.workspace import ORIGINAL, Workspace

SVG_NS = "{http://www.w3.org/2000/svg}"
PRUNE_SVD = """
name: prune+svd
layers:
  /conv2/conv2.0/Conv: {prune: {channels: {ratio: 0.5}}}
  /fc1/Gemm: {decompose: {svd: {rank_ratio: 0.25}}}
"""
DYN8 = "name: dyn8\ndefaults:\n  quantize: int8_dynamic\n"


@pytest.fixture(scope="module")
def measured(digits_onnx, digits_eval):
    """Two real variants measured on 96 real samples (accuracy + fidelity + size)."""
    h = load_model(digits_onnx)
    ds = load_npz(digits_eval).subset(range(96))
    out = []
    for text in (PRUNE_SVD, DYN8):
        v = drive(compress(h, Recipe.loads(text)))
        ms = evaluate(v.proto, ds, reference=h.proto)
        ms.append(Metric("size_bytes", float(v.size_bytes()), "measured", "serialized model", unit="B"))
        out.append((v, ms))
    orig = evaluate(h.proto, ds) + [
        Metric("size_bytes", float(h.proto.ByteSize()), "measured", "serialized model", unit="B")
    ]
    return h, out, orig


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_write_report_html_and_markdown(measured, tmp_path):
    h, variants, orig = measured
    reproduce = "studio compress digits_cnn.onnx --recipe recipe.yaml -o out.onnx"
    html_path, md_path = write_report(
        tmp_path / "rep",
        original=h,
        variants=variants,
        verification={"onnx.checker": True, "note": "checked by the test"},
        reproduce_cmd=reproduce,
        original_metrics=orig,
    )
    html = html_path.read_text()
    md = md_path.read_text()
    # Self-contained: no scripts, no external resources (only the SVG namespace URI).
    p = _Collect()
    p.feed(html)
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert not [v for k, v in p.attrs if k in ("src", "href")]
    assert re.findall(r"https?://[^\s\"'<]*", html) == ["http://www.w3.org/2000/svg"] * html.count("<svg")
    assert html.count("<svg") == 2  # accuracy plot + fidelity plot
    # Content: recipe, per-layer rows, metrics with kind + source + samples, diff, reproduce.
    assert "channels" in html and "rank_ratio: 0.25" in html
    for layer in ("/conv1/conv1.0/Conv", "/conv2/conv2.0/Conv", "/fc1/Gemm"):
        assert layer in html and layer in md
    assert "pruned 16 of 32 output channels" in html and "svd split" in html
    top1 = next(m for m in variants[0][1] if m.name == "top1")
    assert top1.n_samples == 96 and top1.source in html and "● measured" in html and "◐ fidelity" in html
    assert reproduce in html and reproduce in md
    assert "checked by the test" in html and "checked by the test" in md
    for section in ("## Recipe", "## Metrics", "## Trade-off", "## Structural diff", "## Reproduce"):
        assert section in md
    assert "(tradeoff.svg)" in md and "| 96 |" in md
    # The plot files are valid SVG with one marker per model (2 variants + the original star).
    svg = ET.parse(tmp_path / "rep" / "tradeoff.svg").getroot()
    assert svg.tag == f"{SVG_NS}svg"
    assert len(svg.findall(f"{SVG_NS}circle")) == 2 and len(svg.findall(f"{SVG_NS}polygon")) == 1
    labels = " ".join(t.text or "" for t in svg.iter(f"{SVG_NS}text"))
    assert "prune+svd ●" in labels and "dyn8 ●" in labels and "original ★" in labels
    assert (tmp_path / "rep" / "tradeoff_cosine_mean.svg").exists()
    assert Recipe.load(tmp_path / "rep" / "recipe.yaml") == variants[0][0].recipe


def test_pareto_front_and_svg_geometry():
    pts = [
        PlotPoint("orig", 1000, "measured", 0.99, "measured", 50, is_original=True),
        PlotPoint("a", 400, "measured", 0.98, "measured", 50),
        PlotPoint("b", 500, "measured", 0.97, "measured", 50),  # bigger and worse than a
        PlotPoint("c", 200, "measured", 0.90, "measured", 50),
    ]
    front = pareto_front(pts)
    assert [p.label for p in front] == ["c", "a", "orig"]
    assert [p.on_front for p in pts] == [True, True, False, True]
    svg = ET.fromstring(tradeoff_svg(pts, "top1"))
    circles = {(round(float(c.get("cx"))), round(float(c.get("cy")))) for c in svg.findall(f"{SVG_NS}circle")}
    xs = sorted(x for x, _ in circles)
    assert len(circles) == 3 and xs[0] < xs[1] < xs[2]  # c (smallest) left of a left of b
    ys = {x: y for x, y in circles}
    assert ys[xs[0]] > ys[xs[1]]  # c (0.90) is drawn lower than a (0.98)
    path = svg.find(f"{SVG_NS}path")
    assert path is not None and path.get("d").count("H") == 2  # step line through 3 front points


def test_plot_points_prefers_accuracy_and_uses_reference_for_fidelity():
    orig = [Metric("size_bytes", 100.0, "measured", "disk", unit="B")]
    v = [("v", [Metric("cosine_mean", 0.9, "fidelity", "d.npz", n_samples=5)], 50.0)]
    pts, ym = plot_points(orig, v)
    assert ym == "cosine_mean"
    o = next(p for p in pts if p.is_original)
    assert o.quality == 1.0 and o.quality_kind == "reference"
    vp = next(p for p in pts if not p.is_original)
    assert vp.size_kind == "estimated" and vp.size_bytes == 50.0  # no size metric: labelled estimated


def test_cli_report_model_and_workspace(digits_onnx, digits_eval, digits_calib, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: mixed\ncalibration: {{data: {digits_calib}, n_samples: 32}}\ndefaults:\n  quantize: int8_static\n"
        "layers:\n  /fc1/Gemm: {decompose: {svd: {rank_ratio: 0.25}}}\n"
    )
    out = tmp_path / "rep"
    code = main(
        ["report", str(digits_onnx), "--recipe", str(recipe), "--data", str(digits_eval), "--n-samples", "64",
         "-o", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    html = (out / "report.html").read_text()
    assert "passed" in html and "onnx.checker" in html
    assert f"studio compress {digits_onnx} --recipe {recipe}" in html
    assert (out / "model.onnx").exists() and (out / "verification.json").exists()
    assert "| 64 |" in (out / "report.md").read_text()

    h = load_model(digits_onnx)
    ws_path = tmp_path / "w.studio"
    with Workspace.create(ws_path, h) as ws:
        v = drive(compress(h, Recipe.loads(DYN8)))
        ws.add_metrics(ORIGINAL, [Metric("top1", 0.99, "measured", "e.npz", n_samples=10)])
        vid = ws.add_variant(v, metrics=[Metric("top1", 0.98, "measured", "e.npz", n_samples=10)])
        ws.add_metrics(
            vid, [Metric("size_bytes", float(ws.variant(vid).size_on_disk()), "measured", "file on disk")]
        )
    assert main(["report", "--workspace", str(ws_path), "-o", str(tmp_path / "wrep")]) == 0
    whtml = (tmp_path / "wrep" / "report.html").read_text()
    assert "dyn8" in whtml and "int8" in whtml and "e.npz" in whtml
    assert main(["report", "-o", str(tmp_path / "x")]) == 2  # neither model nor workspace
