#!/usr/bin/env bash
# Render `studio report` for the digits demo and screenshot it with headless Chromium
# (docs/screenshots/report.png in the README). Installs Debian's chromium if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
.venv/bin/studio report assets/digits_cnn.onnx --recipe examples/digits_mixed.yaml \
  --data assets/digits_eval.npz -o "$out/report"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$out/profile" --window-size=1200,1600 \
  --screenshot=docs/screenshots/report.png "file://$out/report/report.html"
echo "docs/screenshots/report.png"
