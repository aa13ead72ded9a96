"""Fixtures shared by several test files."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from realtime.bundle import DEFAULT_MODELS_DIR

#: the files of the shipped bundle (models/): what a copy of it must hold
BUNDLE_FILES = ("xgb.onnx", "cnn1d.onnx", "cnn2d.onnx", "speech.onnx", "bundle.json")


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the shipped bundle in a temporary folder, to edit."""
    dst = tmp_path / "models"
    dst.mkdir()
    for name in BUNDLE_FILES:
        shutil.copy2(DEFAULT_MODELS_DIR / name, dst / name)
    return dst
