"""Live mode: the simulator drives a real gateway through the openai SDK."""

from __future__ import annotations

from pathlib import Path

from distillguard.monitor.offline import score_records
from distillguard.monitor.score import ScoreModel
from distillguard.sim.live import LiveConfig, fit_prompt, run_live
from distillguard.sim.simulate import SimConfig
from distillguard.traffic import read_labels, read_traffic


def test_live_run_provisions_accounts_and_is_logged_by_the_gateway(
    gateway_server, tmp_path: Path, shared_data: Path
) -> None:
    gw = gateway_server(default_rpm=100_000, trusted_proxies="127.0.0.1/32")
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


def test_long_prompts_are_cut_in_the_middle_to_fit_a_small_context() -> None:
    head, tail = "Summarize this article:\n", "\nAnswer in three bullet points."
    long = head + "word " * 2000 + tail
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long}],
        "temperature": 0,
    }
    cut = fit_prompt(body, 400)
    user = cut["messages"][1]["content"]
    assert len(user) <= 400 and user.startswith(head) and user.endswith(tail)
    assert cut["messages"][0] == body["messages"][0] and cut["temperature"] == 0
    assert fit_prompt({"prompt": long}, 400)["prompt"].endswith(tail)
    assert fit_prompt(body, None) is body


POLICY_FLAG_CLUSTERS = """
min_requests: 4
rules:
  - action: flag
    when: {cluster_size_at_least: 2}
default: allow
"""


def test_live_accounts_keep_their_addresses_so_a_hydra_is_linked_and_flagged(
    gateway_server, tmp_path: Path, shared_data: Path
) -> None:
    """Regression: every simulated account used to reach the gateway from 127.0.0.1. In the
    demo's 64-account population that one address became too common to count, so the hydra
    lost its shared-proxy links, formed no cluster and GET /admin/flags stayed empty. Each
    account now keeps its own addresses, and a cluster action is listed with its evidence."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_FLAG_CLUSTERS)
    gw = gateway_server(
        default_rpm=100_000,
        online_monitor="true",
        policy_file=policy,
        trusted_proxies="127.0.0.1/32",
    )
    cfg = SimConfig(accounts=6, campaigns=2, seed=3, days=1)  # a single campaign and a hydra
    live = LiveConfig(
        base_url=gw.base_url,
        admin_token=gw.admin_token,
        max_requests=240,
        concurrency=4,
        max_tokens=8,
    )
    run_live(cfg, live, data_dir=shared_data, out=tmp_path / "t.jsonl", labels=tmp_path / "l.jsonl")
    labels = {lab.account_id: lab for lab in read_labels(tmp_path / "l.jsonl")}
    sent: dict[str, set[str]] = {}
    for r in read_traffic(tmp_path / "t.jsonl"):
        sent.setdefault(r.account_id, set()).add(r.ip)
    logged: dict[str, set[str]] = {}
    for e in gw.exchanges():
        if e.get("account_id"):
            logged.setdefault(e["account_id"], set()).add(e["ip"])
    assert logged == sent  # the gateway saw each account's own addresses (X-Forwarded-For)
    assert all("127.0.0.1" not in ips for ips in logged.values())

    flags = gw.admin_get("/flags")["data"]
    flagged = {f["account_id"]: f for f in flags}
    assert flagged, "the hydra's linked accounts must be listed under /admin/flags"
    assert {labels[a].persona for a in flagged} == {"campaign_hydra"}
    clusters = {f["cluster_id"] for f in flags}
    assert None not in clusters
    for f in flags:
        assert f["cluster_size"] >= 2 and f["reasons"]
        assert {"payment", "ip_prefix"} & set(f["evidence"])
    actions = gw.admin_get("/actions")["data"]
    assert {a["account_id"] for a in actions} <= set(flagged)
