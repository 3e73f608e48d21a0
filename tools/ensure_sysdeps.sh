#!/usr/bin/env bash
# Make sure the system libraries Qt (offscreen) and QtWebEngine need are present. On a machine
# where the probe already works this does nothing; otherwise it installs them with apt-get
# (root only). Used by `make test` so a fresh machine needs no manual step.
set -u
PY=${1:-.venv/bin/python}
probe() {
  QT_QPA_PLATFORM=offscreen QTWEBENGINE_DISABLE_SANDBOX=1 timeout 60 "$PY" - <<'PYEOF' >/dev/null 2>&1
from PySide6.QtWidgets import QApplication
from PySide6.QtWebEngineWidgets import QWebEngineView  # noqa: F401
app = QApplication([])
PYEOF
}
if probe; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "warning: Qt cannot start here and I cannot install system libraries (need root + apt-get)" >&2
  exit 0
fi
echo "installing system libraries for Qt / QtWebEngine ..."
apt-get update -qq >/dev/null 2>&1
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  libgl1 libegl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libfreetype6 libdbus-1-3 \
  libnss3 libnspr4 libasound2 libxcomposite1 libxdamage1 libxrandr2 libxtst6 libxshmfence1 \
  libgbm1 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
  libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libglib2.0-0 fonts-dejavu-core >/dev/null 2>&1 \
  || echo "warning: apt-get could not install every Qt library" >&2
probe || echo "warning: Qt still cannot start; GUI tests will fail" >&2
