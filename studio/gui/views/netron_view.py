"""Netron tab: the model served by the bundled ``netron`` package on 127.0.0.1 and shown in a
QWebEngineView that may talk to nothing but loopback.

Netron serves every file beside the model, so the model (and its external data) is copied into
a fresh temporary folder first. Netron's telemetry and its consent probe (ipinfo.io) are blocked
by a request interceptor; the consent cookie is preset so no banner shows.

Import this module (or QtWebEngineWidgets) before the QApplication is created: QtWebEngine
needs ``Qt.AA_ShareOpenGLContexts`` set first.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import onnx
from PySide6.QtCore import QCoreApplication, Qt, QUrl, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from studio.core.errors import ModelLoadError

# QtWebEngine's Chromium sandbox refuses to start as root (containers, CI).
if hasattr(os, "geteuid") and os.geteuid() == 0:
    os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")

if QCoreApplication.instance() is None:
    QCoreApplication.setAttribute(Qt.AA_ShareOpenGLContexts)

try:
    from PySide6.QtNetwork import QNetworkCookie
    from PySide6.QtWebEngineCore import (
        QWebEnginePage,
        QWebEngineProfile,
        QWebEngineScript,
        QWebEngineUrlRequestInterceptor,
    )
    from PySide6.QtWebEngineWidgets import QWebEngineView

    HAVE_WEBENGINE = True
    _IMPORT_ERROR = ""
except ImportError as e:  # PySide6-Addons missing
    HAVE_WEBENGINE = False
    _IMPORT_ERROR = str(e)

log = logging.getLogger(__name__)
NO_WEBENGINE_TEXT = "Netron view needs QtWebEngine (PySide6-Addons)"
LOCAL_SCHEMES = {"data", "blob", "about", "qrc", "chrome", "devtools", "file"}
# Netron nags "Please update" forever once its build date is 180 days old; the copy we ship is
# what we support, so its date meta tag is set to today before Netron's code reads it.
_FRESH_DATE_JS = (
    "for (const m of document.querySelectorAll('meta[name=date]')) "
    "{ m.content = new Date().toISOString().slice(0, 19).replace('T', ' '); }"
)


def is_loopback_url(url: str) -> bool:
    """True for URLs that never leave the machine (loopback hosts, data:/blob: and friends)."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return parts.scheme != "file" or not parts.netloc
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def copy_model_for_serving(path: Path, dest_dir: Path) -> Path:
    """Copy ``path`` and the external-data files it references into ``dest_dir``."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    dest = dest_dir / path.name
    shutil.copy2(path, dest)
    if path.suffix.lower() != ".onnx":
        return dest
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 (Netron may still render what onnx cannot parse)
        return dest
    locations = set()
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "location":
                    locations.add(kv.value)
    base = path.parent.resolve()
    for loc in sorted(locations):
        src = (base / loc).resolve()
        if base not in src.parents or not src.is_file():
            continue  # a location escaping the model folder is not ours to serve
        target = dest_dir / src.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


if HAVE_WEBENGINE:

    class LoopbackOnlyInterceptor(QWebEngineUrlRequestInterceptor):
        """Blocks every request that would leave the machine; remembers what it saw."""

        def __init__(self, seen: list[str], blocked: list[str], parent=None):
            super().__init__(parent)
            # plain lists owned by the NetronView, so they outlive this Qt object
            self.seen_requests = seen
            self.blocked_requests = blocked

        def interceptRequest(self, info) -> None:  # noqa: N802 (Qt override; runs on Qt's IO thread)
            url = info.requestUrl().toString()
            self.seen_requests.append(url)
            if not is_loopback_url(url):
                info.block(True)
                self.blocked_requests.append(url)


class NetronView(QWidget):
    """Netron rendering of the current model file. ``load_finished(ok)`` follows the page."""

    load_finished = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.address: tuple[str, int] | None = None
        self.url: str | None = None
        self.temp_dir: Path | None = None
        self.served_file: Path | None = None
        self.loaded: bool | None = None  # None until the page finished loading
        self.seen_requests: list[str] = []  # every URL the page requested
        self.blocked_requests: list[str] = []  # the non-loopback ones, all blocked
        self._profile = self._page = self._view = self._interceptor = self._cookies = None
        self._has_web = HAVE_WEBENGINE
        if not HAVE_WEBENGINE:
            lab = QLabel(NO_WEBENGINE_TEXT)
            lab.setAlignment(Qt.AlignCenter)
            lab.setToolTip(_IMPORT_ERROR)
            lab.setWordWrap(True)
            self._layout.addWidget(lab)
            self.message_label = lab
            return
        self.message_label = None
        # A private, off-the-record profile: no cookies or cache shared with anything else.
        # Python must hold profile/page/cookie store/interceptor: Qt does not own them for us.
        # The view (and the page it parents) is created before the profile so that Qt, which
        # deletes children in creation order, destroys the page before its profile.
        self._view = QWebEngineView(self)
        self._profile = QWebEngineProfile(self)
        self._interceptor = LoopbackOnlyInterceptor(self.seen_requests, self.blocked_requests, self._profile)
        self._profile.setUrlRequestInterceptor(self._interceptor)
        self._cookies = self._profile.cookieStore()
        script = QWebEngineScript()
        script.setName("netron-fresh-date")
        script.setInjectionPoint(QWebEngineScript.DocumentReady)
        script.setWorldId(QWebEngineScript.ApplicationWorld)
        script.setSourceCode(_FRESH_DATE_JS)
        self._profile.scripts().insert(script)
        self._page = QWebEnginePage(self._profile, self._view)
        self._view.setPage(self._page)
        self._page.loadFinished.connect(self._on_load_finished)
        self._layout.addWidget(self._view)

    # ------------------------------------------------------------------ public API

    @property
    def available(self) -> bool:
        """False when QtWebEngine is missing (the widget shows a hint instead)."""
        return self._has_web

    @property
    def page(self):
        return self._page

    def show_model(self, path: Path) -> None:
        """Serve a copy of ``path`` on 127.0.0.1 and load it; replaces any model shown before."""
        if not self._has_web:
            return
        if self._page is None:
            raise RuntimeError("NetronView.show_model after shutdown()")
        import netron

        self._stop_server()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="studio-netron-"))
        try:
            self.served_file = copy_model_for_serving(Path(path), self.temp_dir)
            root = logging.getLogger()
            # netron.serve configures root logging when it has no handler; keep the app's setup
            guard = logging.NullHandler() if not root.hasHandlers() else None
            if guard is not None:
                root.addHandler(guard)
            try:
                address = netron.serve(str(self.served_file), None, address=("127.0.0.1", 0), browse=False)
            finally:
                if guard is not None:
                    root.removeHandler(guard)
        except Exception:
            self._remove_temp_dir()
            raise
        host, port = address
        if host != "127.0.0.1" or not isinstance(port, int) or port <= 0:
            netron.stop(address)
            self._remove_temp_dir()
            raise ModelLoadError(f"netron served on {host}:{port}, not on 127.0.0.1; refusing to show it")
        self.address = (host, port)
        self.url = f"http://127.0.0.1:{port}/"
        cookie = QNetworkCookie(b"consent", str(int(time.time() * 1000)).encode())
        cookie.setDomain("127.0.0.1")
        cookie.setPath("/")
        self._cookies.setCookie(cookie, QUrl(self.url))
        self.loaded = None
        self._page.load(QUrl(self.url))

    def shutdown(self) -> None:
        """Stop the Netron server, delete the temporary copy and release the web page and its
        profile (in that order, or QtWebEngine warns and may crash at exit). Final: call it
        when the window closes."""
        self._stop_server()
        if self._page is not None:
            import shiboken6

            self._page.loadFinished.disconnect(self._on_load_finished)
            shiboken6.delete(self._view)  # takes its page along
            shiboken6.delete(self._profile)  # and the interceptor, its child
            self._view = self._page = self._profile = self._cookies = self._interceptor = None

    def run_js(self, code: str, callback) -> None:
        """Evaluate ``code`` in the Netron page (for tests and screenshots)."""
        if self._page is not None:
            self._page.runJavaScript(code, 0, callback)

    # ------------------------------------------------------------------ internals

    def _on_load_finished(self, ok: bool) -> None:
        self.loaded = ok
        self.load_finished.emit(ok)

    def _stop_server(self) -> None:
        if self.address is not None:
            import netron

            netron.stop(self.address)
            self.address = None
        self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def closeEvent(self, event) -> None:  # noqa: N802
        self._stop_server()
        super().closeEvent(event)
