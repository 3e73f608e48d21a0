"""Digits fixtures the plugin suites share (module scope: each test module gets fresh copies, so a
module that edits the handle cannot affect another)."""

from __future__ import annotations

import pytest

from studio.core.evaluate import load_npz
from studio.core.model import load_model


@pytest.fixture(scope="module")
def digits(digits_onnx):
    return load_model(digits_onnx)


@pytest.fixture(scope="module")
def eval_ds(digits_eval):
    return load_npz(digits_eval)


@pytest.fixture(scope="module")
def calib(digits_calib):
    return load_npz(digits_calib).inputs
