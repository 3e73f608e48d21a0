"""The engine must run without Qt: importing and using the core never pulls in PySide6."""

import subprocess
import sys

CODE = """
import sys
import studio.core.model, studio.core.graph, studio.core.pipeline, studio.core.evaluate, studio.core.recipe
import studio.cli.main
from studio.core.model import load_model
from studio.core.graph import analyze
h = load_model('assets/digits_cnn.onnx')
analyze(h.proto)
studio.cli.main.build_parser()
bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'superqt', 'studio') and (m.startswith(('PySide6', 'pyqtgraph', 'superqt')) or m.startswith('studio.gui'))]
print(bad)
assert not bad, bad
assert 'torch' not in sys.modules, 'torch imported by the core'
"""


def test_core_and_cli_do_not_import_qt_or_torch():
    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
