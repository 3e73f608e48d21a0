# Both `make run` and `make test` create or reuse .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
EXTRAS ?= torch,gui,nlp,dev
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test lint reliability screenshots bench venv clean demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned in the same resolve as everything else, so the CPU build is the one taken.
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]" "torch==2.13.0"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: venv
	$(BIN)/python assets/build_digits.py --check

run: venv demo
	$(BIN)/studio gui assets/digits_cnn.onnx

lint: venv
	$(BIN)/ruff check studio plugins tests benchmarks assets
	$(BIN)/lint-imports

test: venv lint
	bash tools/ensure_sysdeps.sh $(BIN)/python
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -x --durations=15 tests

reliability: venv
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m reliability tests

screenshots: venv
	command -v xvfb-run >/dev/null || (apt-get update -q && apt-get install -y -q xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-cursor0 fonts-dejavu-core)
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python tools/screenshots.py docs/screenshots

bench: venv
	$(BIN)/python benchmarks/load_and_analyze.py
	$(BIN)/python benchmarks/techniques.py
	$(BIN)/python benchmarks/auto_vs_defaults.py
	$(BIN)/python benchmarks/distill.py
	QT_QPA_PLATFORM=offscreen $(BIN)/python benchmarks/ui_responsiveness.py

clean:
	rm -rf $(VENV) build *.egg-info
