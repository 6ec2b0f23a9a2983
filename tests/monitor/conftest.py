"""A small simulated population, written once per test session (about a second)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.sim.simulate import SimConfig, simulate


@pytest.fixture(scope="session")
def small_traffic(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """(traffic, labels) of 40 honest accounts and 5 campaigns (one of each kind), test split."""
    d = tmp_path_factory.mktemp("small_traffic")
    cfg = SimConfig(accounts=40, campaigns=5, seed=11, split="test", days=3)
    simulate(cfg, data_dir=shared_data, out=d / "traffic.jsonl", labels=d / "labels.jsonl")
    return d / "traffic.jsonl", d / "labels.jsonl"
