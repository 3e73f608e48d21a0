"""Render the studio window on the demo model into PNGs (README / docs screenshots).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/screenshots.py docs/screenshots

Opens assets/digits_cnn.onnx, plans a few layers, measures three variants (real ORT runs, one
branched from another), runs a small sensitivity sweep, then grabs the main window, the
inspector, the trade-off plot, the jobs / history / sensitivity docks, the graph tab, the graph
coloured by a diff (with the Diff dock) and the Netron tab. Wide shots are scaled to 1400 px.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_WIDTH = 1400
sys.path.insert(0, str(ROOT))


def _wait(app, cond, timeout_s: float = 60.0) -> bool:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            return False
        app.processEvents()
        time.sleep(0.02)
    return True


def _settle(app, seconds: float = 0.5) -> None:
    _wait(app, lambda: False, seconds)


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QSettings

    # Screenshots must not depend on (or change) the user's saved layout.
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp())
    from PySide6.QtCore import Qt

    from studio.gui.app import create_app

    app = create_app(["screenshots"])
    from studio.gui.main_window import MainWindow
    from studio.gui.models.layer_table import PRECISION_COL, PRUNE, RANK, SHARING

    win = MainWindow(work_dir=Path(tempfile.mkdtemp(prefix="studio-shots-")))
    win.session.settings.bench_runs = 50
    win.session.settings.sensitivity_settings = "channels:0.25,0.5,0.75 svd:0.5,0.25 int8 kmeans:4"
    win.session.settings.calib_samples = 64
    win.resize(1560, 940)
    win.show()
    if not win.open_path(ROOT / "assets" / "digits_cnn.onnx", wait=True):
        return 1
    _wait(app, lambda: not win.jobs.running())
    m = win.layer_model
    m.setData(m.index_of("/fc1/Gemm", PRUNE), 0.5)
    m.setData(m.index_of("/conv3/conv3.0/Conv", PRECISION_COL), "int8 static")
    j1 = win.apply_and_measure()
    _wait(app, lambda: j1.done.is_set())
    _settle(app, 0.3)
    v1 = win.session.variants[-1].id
    win.branch_from(v1)  # v2 is a child of v1 in the history
    m.setData(m.index_of("/fc1/Gemm", RANK), 0.25)
    m.setData(m.index_of("/conv2/conv2.0/Conv", SHARING), 4)
    j2 = win.apply_and_measure()
    _wait(app, lambda: j2.done.is_set())
    _settle(app, 0.3)
    win.annotate_variant(win.session.variants[-1].id, "fc1 rank 1/4 + 4-bit conv2")
    win.branch_from("original")
    m.setData(m.index_of("/conv1/conv1.0/Conv", PRUNE), 0.25)
    j3 = win.apply_and_measure()
    _wait(app, lambda: j3.done.is_set())
    ja = win.analyze_sensitivity()
    _wait(app, lambda: ja.done.is_set(), 180)
    _settle(app, 0.3)
    win.branch_from(v1)
    m.setData(m.index_of("/fc2/Gemm", PRECISION_COL), "int8 dynamic")
    win.table.select_layer("/fc1/Gemm")
    _settle(app, 1.0)
    shots = {}
    win.jobs_dock.raise_()
    _settle(app, 0.3)
    shots["main_window.png"] = win.grab()
    shots["inspector.png"] = win.inspector_dock.grab()
    shots["tradeoff_plot.png"] = win.plot_dock.grab()
    shots["jobs.png"] = win.jobs_dock.grab()
    win.history_dock.raise_()
    win.history.select(win.session.variants[-1].id)
    _settle(app, 0.3)
    shots["history.png"] = win.history_dock.grab()
    win.heatmap_dock.raise_()
    win.resizeDocks([win.heatmap_dock], [250], Qt.Orientation.Vertical)  # every digits layer visible
    _settle(app, 0.3)
    shots["sensitivity.png"] = win.heatmap_dock.grab()
    win.tabs.setCurrentIndex(1)
    _settle(app, 2.0)
    shots["graph.png"] = win.grab()
    dj = win.compare_variants("original", v1)
    _wait(app, lambda: dj.done.is_set())
    _settle(app, 0.3)
    win.color_graph_by_diff()
    win.diff_dock.raise_()
    win.resizeDocks([win.diff_dock], [250], Qt.Orientation.Vertical)
    _settle(app, 1.0)
    shots["diff.png"] = win.grab()
    win.tabs.setCurrentIndex(win.netron_tab)
    _settle(app, 8.0)  # Netron loads in a web view
    shots["netron.png"] = win.grab()
    for name, pix in shots.items():
        if pix.width() > MAX_WIDTH:  # keeps each PNG small enough to commit
            pix = pix.scaledToWidth(MAX_WIDTH, Qt.TransformationMode.SmoothTransformation)
        pix.save(str(out / name), "PNG", 9)
        print(out / name, pix.width(), "x", pix.height(), f"{(out / name).stat().st_size / 1024:.0f} kB")
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
