"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _in_an_empty_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty folder of its own: what a run writes where it was started
    (Lightning's ``default_root_dir``, the Callback's files, Hydra's ``outputs/``) stays out of
    the checkout, and no test reads another's files."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
