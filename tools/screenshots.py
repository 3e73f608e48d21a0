"""Render the studio window on the demo model into PNGs (README / docs screenshots).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/screenshots.py docs/screenshots

Opens assets/digits_cnn.onnx, plans a few layers, measures two variants (real ORT runs), then
grabs the main window, the inspector, the trade-off plot, the graph tab and the Netron tab.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    from studio.gui.app import create_app

    app = create_app(["screenshots"])
    from studio.gui.main_window import MainWindow
    from studio.gui.models.layer_table import PRECISION_COL, PRUNE, RANK, SHARING

    win = MainWindow(work_dir=Path(tempfile.mkdtemp(prefix="studio-shots-")))
    win.session.settings.bench_runs = 50
    win.resize(1560, 940)
    win.show()
    if not win.open_path(ROOT / "assets" / "digits_cnn.onnx"):
        return 1
    _wait(app, lambda: not win.jobs.running())
    m = win.layer_model
    m.setData(m.index_of("/fc1/Gemm", PRUNE), 0.5)
    m.setData(m.index_of("/conv3/conv3.0/Conv", PRECISION_COL), "int8 static")
    j1 = win.apply_and_measure()
    _wait(app, lambda: j1.done.is_set())
    m.setData(m.index_of("/fc1/Gemm", RANK), 0.25)
    m.setData(m.index_of("/conv2/conv2.0/Conv", SHARING), 4)
    j2 = win.apply_and_measure()
    _wait(app, lambda: j2.done.is_set())
    m.setData(m.index_of("/fc2/Gemm", PRECISION_COL), "int8 dynamic")
    win.table.select_layer("/fc1/Gemm")
    _settle(app, 1.0)
    shots = {}
    shots["main_window.png"] = win.grab()
    shots["inspector.png"] = win.inspector_dock.grab()
    shots["tradeoff_plot.png"] = win.plot_dock.grab()
    shots["jobs.png"] = win.jobs_dock.grab()
    win.tabs.setCurrentIndex(1)
    _settle(app, 2.0)
    shots["graph.png"] = win.grab()
    win.tabs.setCurrentIndex(win.netron_tab)
    _settle(app, 8.0)  # Netron loads in a web view
    shots["netron.png"] = win.grab()
    for name, pix in shots.items():
        pix.save(str(out / name))
        print(out / name, pix.width(), "x", pix.height())
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
