"""Help ▸ About: version, the techniques that loaded (and the plugins that did not, with why),
and where the studio keeps its settings, caches and scratch files."""

from __future__ import annotations

import html
import platform
from pathlib import Path

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from studio import __version__
from studio.core.metrics import GLYPH
from studio.plugin_api.registry import Registry


def cache_dir() -> Path:
    """The studio's cache folder (PyTorch exports, demo models); see torch_loader / demos."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("pareto-studio"))


def about_html(registry: Registry, settings_file: str, work_dir: Path | None) -> str:
    """The About text. Loading every technique here is what makes a broken plugin show up."""
    loaded = registry.available()
    esc = html.escape
    rows = "".join(
        f"<tr><td><code>{esc(n)}</code></td><td>{esc(str(getattr(t, 'label', '') or ''))}</td>"
        f"<td>{esc(getattr(t.stage, 'name', str(t.stage)).lower())}</td></tr>"
        for n, t in sorted(loaded.items())
    )
    errors = "".join(
        f"<li><code>{esc(n)}</code>: {esc(msg)}</li>" for n, msg in sorted(registry.errors.items())
    )
    import onnx
    import onnxruntime
    from PySide6 import __version__ as pyside_version

    parts = [
        f"<h3>Pareto Studio {esc(__version__)}</h3>",
        "<p>Compress ONNX models layer by layer, measure the trade-offs, export verified models.</p>",
        f"<p>{GLYPH['measured']} measured · {GLYPH['estimated']} estimated by formula · "
        f"{GLYPH['fidelity']} fidelity vs the original</p>",
        f"<p><b>Techniques</b> ({len(loaded)} loaded of {len(registry.names())}):</p>",
        f"<table cellspacing=2 cellpadding=2>{rows}</table>" if rows else "<p>none</p>",
    ]
    if errors:
        parts.append(f"<p><b>Plugins that failed to load</b> ({len(registry.errors)}):</p><ul>{errors}</ul>")
    parts.append(
        "<p><b>Files</b><br>"
        f"settings: <code>{esc(settings_file)}</code><br>"
        f"cache (PyTorch exports, demo models): <code>{esc(str(cache_dir()))}</code><br>"
        + (f"this session's scratch variants: <code>{esc(str(work_dir))}</code>" if work_dir else "")
        + "</p>"
    )
    parts.append(
        f"<p><small>Python {esc(platform.python_version())} · onnx {esc(onnx.__version__)} · "
        f"onnxruntime {esc(onnxruntime.__version__)} · PySide6 {esc(pyside_version)}</small></p>"
    )
    return "".join(parts)


class AboutDialog(QDialog):
    """Selectable rich text (paths can be copied) and a Close button."""

    def __init__(self, parent: QWidget | None, text: str):
        super().__init__(parent)
        self.setWindowTitle("About Pareto Studio")
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setHtml(text)
        self.browser.setMinimumSize(560, 420)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.browser)
        lay.addWidget(buttons)
