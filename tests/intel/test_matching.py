"""intel match: a campaign that reappears at a partner with new accounts is matched there;
the partner's honest users are not."""

from __future__ import annotations

import json
import time

import pytest

from distillguard.errors import ConfigError
from distillguard.intel.fingerprints import KINDS, CommunityKey
from distillguard.intel.indicators import extract_intel
from distillguard.intel.matching import (
    AccountMatch,
    Match,
    MatchConfig,
    SharedIndicator,
    match_traffic,
    raise_scores,
    summarize,
)
from distillguard.intel.stix import build_bundle
from distillguard.traffic import Verdict, read_labels, read_traffic, read_verdicts, write_jsonl

from .conftest import KEY, reappear
from .test_export import run_cli


@pytest.fixture(scope="module")
def partner(scored, shared_data, tmp_path_factory):
    """(bundle path, partner traffic, reappeared account ids by persona, partner honest ids)."""
    from distillguard.sim.simulate import SimConfig, simulate

    key = CommunityKey(KEY.encode())
    d = tmp_path_factory.mktemp("partner")
    intel = extract_intel(
        list(read_verdicts(scored.verdicts)),
        read_traffic(scored.traffic),
        key,
        producer="Provider A",
        created=time.time(),
    ).intel
    (d / "bundle.json").write_text(build_bundle(intel).serialize())
    simulate(
        SimConfig(accounts=30, campaigns=0, seed=12, split="test", days=3),
        data_dir=shared_data,
        out=d / "honest.jsonl",
        labels=d / "honest-labels.jsonl",
    )
    labels = {lab.account_id: lab for lab in read_labels(scored.labels)}
    campaign = {a for a, lab in labels.items() if lab.label == "campaign"}
    moved = reappear(read_traffic(scored.traffic), campaign, seed=5, shift_s=10 * 86400)
    honest = [r.to_dict() for r in read_traffic(d / "honest.jsonl")]
    write_jsonl(d / "traffic.jsonl", honest + moved)
    persona: dict[str, str] = {}
    old = {}
    for m in moved:
        old.setdefault(m["account_id"], m["id"].removeprefix("partner-"))
    by_old_id = {r.id: r.account_id for r in read_traffic(scored.traffic)}
    for new, rid in old.items():
        persona[new] = labels[by_old_id[rid]].persona
    return intel, d / "bundle.json", d / "traffic.jsonl", persona, {r["account_id"] for r in honest}


def test_a_reappearing_hydra_is_matched_and_honest_users_are_not(partner) -> None:
    intel, _, traffic, persona, honest = partner
    shared = [SharedIndicator("Provider A", i, "c") for i in intel.indicators]
    res = match_traffic(read_traffic(traffic), shared, CommunityKey(KEY.encode()))
    by_account = {a.account_id: a for a in res.accounts}
    hydra = [a for a, p in persona.items() if p == "campaign_hydra"]
    assert hydra
    strong = [a for a in hydra if a in by_account and by_account[a].strong]
    assert len(strong) >= 0.8 * len(hydra)
    assert any("template" in by_account[a].kinds for a in strong)
    assert not [a for a in honest if a in by_account and by_account[a].strong]
    for m in res.matches:
        assert m.kind in KINDS and 0.0 < m.confidence <= 1.0 and m.requests > 0
    assert all(0.0 < a.signal <= 1.0 for a in res.accounts)


def test_summary_needs_independent_kinds(partner) -> None:
    intel, _, traffic, _, _ = partner
    shared = [SharedIndicator("Provider A", i, "c") for i in intel.indicators]
    res = match_traffic(
        read_traffic(traffic), shared, CommunityKey(KEY.encode()), MatchConfig(min_kinds=5)
    )
    strict = summarize(res.matches, min_kinds=5)
    assert sum(a.strong for a in strict) <= sum(a.strong for a in res.accounts)
    assert all(len(a.kinds) >= 5 for a in strict if a.strong)


def test_match_cli_writes_the_documented_jsonl(partner, intel_key, dg_home, tmp_path) -> None:
    _, bundle, traffic, persona, _ = partner
    assert run_cli("intel", "import", str(bundle), home=dg_home, key=intel_key).returncode == 0
    out = tmp_path / "matches.jsonl"
    partner_verdicts = tmp_path / "partner-verdicts.jsonl"
    write_jsonl(partner_verdicts, [Verdict(a, 0.1, False) for a in sorted(persona)])
    res = run_cli(
        "intel",
        "match",
        "--traffic",
        str(traffic),
        "--out",
        str(out),
        "--verdicts",
        str(partner_verdicts),
        "--verdicts-out",
        str(tmp_path / "v2.jsonl"),
        home=dg_home,
        key=intel_key,
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines
    for line in lines:
        assert {"account_id", "source", "indicator_id", "kind", "confidence"} <= set(line)
        assert line["source"] == "Provider A" and line["indicator_id"].startswith("indicator--")
    assert {line["account_id"] for line in lines} & set(persona)
    raised = list(read_verdicts(tmp_path / "v2.jsonl"))
    assert len(raised) == len(persona)
    up = [v for v in raised if v.score > 0.1]
    assert up and all("shared by Provider A" in v.reasons[-1] for v in up)
    assert not any(v.flagged for v in raised)  # a partner's indicator alone flags nothing


def test_raised_scores_flag_only_strong_matches_over_the_bar() -> None:
    weak = AccountMatch("a", "P", "campaign--1", ("ip_prefix",), 0.9, strong=False)
    strong = AccountMatch("b", "P", "campaign--1", ("ip_prefix", "template"), 0.9, strong=True)
    vs = [Verdict("a", 0.5, False), Verdict("b", 0.5, False), Verdict("c", 0.5, False)]
    out = {v.account_id: v for v in raise_scores(vs, [weak, strong], weight=0.5, threshold=0.7)}
    assert out["a"].score == pytest.approx(1 - 0.5 * (1 - 0.45)) and not out["a"].flagged
    assert out["b"].flagged and "ip_prefix, template" in out["b"].reasons[-1]
    assert out["c"] == vs[2]
    with pytest.raises(ConfigError):
        raise_scores(vs, [strong], weight=1.0)


def test_a_strong_match_needs_the_same_infrastructure() -> None:
    def match(kind: str) -> Match:
        return Match("a", "P", f"indicator--{kind}", kind, 0.8, "campaign--1", "c", 10)

    workload_only = summarize([match("template"), match("request_params")])
    assert not workload_only[0].strong  # same kind of workload, not the same actor
    assert summarize([match("template"), match("ip_prefix")])[0].strong
    assert summarize([match("template"), match("request_params")], require_infrastructure=False)[
        0
    ].strong
