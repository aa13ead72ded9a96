"""Fixtures shared by several test files."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from realtime.bundle import BUNDLE_FILE, DEFAULT_MODELS_DIR, MODEL_FILES
from realtime.server import ServerConfig, ServerThread, engine_factory

#: the files of the shipped bundle (models/): what a copy of it must hold
BUNDLE_FILES = (*MODEL_FILES.values(), BUNDLE_FILE)


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the shipped bundle in a temporary folder, to edit."""
    dst = tmp_path / "models"
    dst.mkdir()
    for name in BUNDLE_FILES:
        shutil.copy2(DEFAULT_MODELS_DIR / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def factory():
    """One loaded bundle shared by the engines of the servers a test module starts."""
    return engine_factory()


@pytest.fixture
def make_server(factory):
    """``make_server(**ServerConfig fields)``: an in-process server on ephemeral ports (2 workers unless
    given), stopped after the test."""
    started = []

    def make(**kw):
        kw.setdefault("workers", 2)
        srv = ServerThread(factory, ServerConfig(port=0, **kw)).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
