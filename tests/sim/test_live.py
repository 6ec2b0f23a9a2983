"""Live mode: the simulator drives a real gateway through the openai SDK."""

from __future__ import annotations

from pathlib import Path

from distillguard.monitor.offline import score_records
from distillguard.monitor.score import ScoreModel
from distillguard.sim.live import LiveConfig, run_live
from distillguard.sim.simulate import SimConfig
from distillguard.traffic import read_labels, read_traffic


def test_live_run_provisions_accounts_and_is_logged_by_the_gateway(
    gateway_server, tmp_path: Path, shared_data: Path
) -> None:
    gw = gateway_server(default_rpm=100_000)
    base_url, admin_token = gw
    cfg = SimConfig(accounts=6, campaigns=1, seed=3, days=1)
    live = LiveConfig(
        base_url=base_url, admin_token=admin_token, max_requests=80, concurrency=4, max_tokens=8
    )
    res = run_live(
        cfg, live, data_dir=shared_data, out=tmp_path / "t.jsonl", labels=tmp_path / "l.jsonl"
    )
    assert res.sent == 80 and res.ok + res.refused == 80 and res.failed == 0
    labels = {lab.account_id: lab for lab in read_labels(tmp_path / "l.jsonl")}
    sent = list(read_traffic(tmp_path / "t.jsonl"))
    assert len(sent) == 80 and {r.account_id for r in sent} <= set(labels)
    logged = gw.exchanges()
    assert {e["account_id"] for e in logged if e.get("account_id")} >= {r.account_id for r in sent}
    # the gateway's own log scores with the same detector
    rep = score_records(sent, model=ScoreModel.load())
    assert len(rep.verdicts) == len({r.account_id for r in sent})
