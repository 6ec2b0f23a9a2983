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


def reappear(records, accounts: set[str], seed: int, shift_s: float) -> list[dict]:
    """The same actors at a partner: new account and key ids, new hosts in the same /24s,
    the same agents, cards and requests, ``shift_s`` later (the partner's simulation)."""
    import random

    rng = random.Random(seed)
    new_id: dict[str, str] = {}
    host: dict[tuple[str, str], int] = {}
    out = []
    for r in records:
        if r.account_id not in accounts:
            continue
        acct = new_id.setdefault(r.account_id, f"acct-partner-{rng.getrandbits(48):012x}")
        prefix = r.ip.rsplit(".", 1)[0]
        d = r.to_dict()
        d.update(
            id=f"partner-{r.id}",
            account_id=acct,
            key_id=f"key-{acct[5:]}",
            ts=r.ts + shift_s,
            ip=f"{prefix}.{host.setdefault((acct, prefix), rng.randint(1, 254))}",
        )
        out.append(d)
    return out
