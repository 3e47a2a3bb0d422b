"""Fixtures for the benchmark tools' own tests: the tiny checkpoint and app of tests/conftest.py
(the server's test suite), rebuilt here because pytest shares fixtures only down a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_app, write_models_list, write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def app(tiny_ckpt: Path):
    models_list = write_models_list(
        tiny_ckpt.parent / "models_list.yaml", {"models": {"tiny": {"path": "tiny"}}}
    )
    return make_app(models_list, request_log=False)
