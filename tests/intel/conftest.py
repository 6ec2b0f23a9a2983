"""A small simulated population scored by the real detector, once per session, and a key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from distillguard.config import get_settings

KEY = "community-key-for-tests-0123456789"


@dataclass(frozen=True)
class Scored:
    traffic: Path
    labels: Path
    verdicts: Path


@pytest.fixture(scope="session")
def scored(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Scored:
    """40 honest accounts and 5 campaigns (one per kind), test split, scored by monitor."""
    from distillguard.monitor.offline import score_traffic
    from distillguard.sim.simulate import SimConfig, simulate

    d = tmp_path_factory.mktemp("intel_traffic")
    cfg = SimConfig(accounts=40, campaigns=5, seed=11, split="test", days=3)
    simulate(cfg, data_dir=shared_data, out=d / "traffic.jsonl", labels=d / "labels.jsonl")
    score_traffic(d / "traffic.jsonl", d / "verdicts.jsonl", workers=1)
    return Scored(d / "traffic.jsonl", d / "labels.jsonl", d / "verdicts.jsonl")


@pytest.fixture
def intel_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The community key in the environment, as an operator sets it."""
    monkeypatch.setenv("DISTILLGUARD_INTEL_KEY", KEY)
    get_settings.cache_clear()
    return KEY
