"""Shared fixtures: an isolated DISTILLGUARD_HOME per test, the real data sets, a tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distillguard.config import get_settings

# Two cores on this machine: one torch thread per test process avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def dg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty state directory and fresh settings."""
    home = tmp_path / "dg_home"
    home.mkdir()
    monkeypatch.setenv("DISTILLGUARD_HOME", str(home))
    monkeypatch.setenv("DISTILLGUARD_DATA_DIR", str(SHARED_DATA))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the checkout; tests that need them skip when absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
