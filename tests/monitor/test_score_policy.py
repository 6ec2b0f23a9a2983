"""Score model, reasons, operating point; policy files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from distillguard.errors import ConfigError, NotFound
from distillguard.monitor.policy import ACTIONS, load_policy, parse_policy
from distillguard.monitor.score import SCORE_FEATURES, ScoreModel, fit_model, merge_signals
from distillguard.monitor.signals import AccountSignals


def _sig(**kw) -> AccountSignals:
    base = dict(
        requests=100,
        rate_per_hour=5.0,
        active_hours=12,
        templated_share=0.05,
        cot_share=0.03,
        greedy_share=0.1,
        harvest_share=0.0,
        stream_share=0.5,
        burst_share=0.1,
        gap_cv=2.0,
        quiet_share=0.03,
        out_in_ratio=5.0,
        content_similarity=0.03,
        out_of_order=0,
    )
    base.update(kw)
    return AccountSignals(**base)


def test_shipped_model_loads_and_separates_a_script_from_a_person() -> None:
    from distillguard.monitor.score import feature_vector

    m = ScoreModel.load()
    person = m.score(feature_vector(_sig()))
    script = m.score(
        feature_vector(
            _sig(
                requests=3000,
                rate_per_hour=40,
                templated_share=0.95,
                cot_share=0.9,
                greedy_share=0.95,
                stream_share=0.0,
                gap_cv=0.2,
                quiet_share=0.2,
                out_in_ratio=1.0,
            )
        )
    )
    assert person < m.threshold <= script


def test_fit_model_threshold_flags_no_fitting_honest_account() -> None:
    rng = np.random.default_rng(0)
    f = len(SCORE_FEATURES)
    honest = rng.normal(0, 1, (300, f))
    campaign = rng.normal(2.5, 1, (40, f))
    xs = np.vstack([honest, campaign])
    ys = np.array([0] * 300 + [1] * 40)
    m = fit_model(xs, ys, target_fpr=1e-3)
    s = m.score_many(xs)
    assert (s[:300] >= m.threshold).sum() == 0
    assert (s[300:] >= m.threshold).mean() > 0.8


def test_model_file_errors_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError):
        ScoreModel.load(bad)
    with pytest.raises(ConfigError):
        ScoreModel.load(tmp_path / "missing.json")


def test_merge_adds_volume_and_pools_shares() -> None:
    merged = merge_signals(
        [_sig(requests=100, cot_share=1.0), _sig(requests=300, cot_share=0.0)], prior_weight=0
    )
    assert merged.requests == 400
    assert merged.cot_share == pytest.approx(0.25)
    # 40 accounts of 5 requests, all chain-of-thought: each alone is shrunk to the prior
    # (k = 8), the cluster pools 200 requests and is shrunk only a little.
    k, prior = 8.0, 0.03
    shrunk = (5 + prior * k) / (5 + k)
    pooled = merge_signals([_sig(requests=5, cot_share=shrunk)] * 40, prior_weight=k)
    assert shrunk < 0.45 and pooled.cot_share > 0.95


def test_default_policy_bars_follow_the_model_and_first_match_wins() -> None:
    p = load_policy()
    assert [r.action for r in p.rules][-1] == "flag"
    assert all(r.use_threshold for r in p.rules if r.score_at_least is None and r.signals == ())
    for bar in (0.999, 0.9999):  # the model's operating point, whatever a refit makes it
        kw = dict(threshold=bar, cluster_size=1, signals=_sig(harvest_share=0.9))
        q = 1.0 - bar  # p-value at the bar
        assert p.decide(score=1 - q * 1e-5, requests=1000, **kw).action == "block"
        assert p.decide(score=1 - q * 1e-3, requests=150, **kw).action == "throttle"
        assert p.decide(score=1 - q * 1e-3, requests=50, **kw).action == "degrade"
        assert p.decide(score=1 - q * 0.5, requests=150, **kw).action == "degrade"
        assert (
            p.decide(
                score=1 - q * 0.5, requests=150, threshold=bar, cluster_size=1, signals=_sig()
            ).action
            == "flag"
        )
        assert p.decide(score=1 - q * 2, requests=1000, **kw) is None  # under the bar
        assert p.decide(score=1.0, requests=5, **kw) is None  # thin evidence: no action


def test_threshold_margin_is_parsed_and_refused_when_malformed() -> None:
    p = parse_policy("rules: [{action: throttle, when: {score_at_least: 'threshold+4.6'}}]")
    assert p.rules[0].use_threshold and p.rules[0].threshold_margin == pytest.approx(4.6)
    with pytest.raises(ConfigError, match="threshold"):
        parse_policy("rules: [{action: flag, when: {score_at_least: 'threshold-2'}}]")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("rules: [{action: nuke}]", "unknown policy action"),
        ("rules: [{action: flag, when: {signals: {nonsense: 1}}}]", "unknown signal"),
        ("rules: [{action: flag, when: {score_at_least: 7}}]", "score_at_least"),
        ("rules: [{action: flag, when: {colour: red}}]", "unknown conditions"),
        ("rules: {a: 1}", "'rules' list"),
        ("rules: [: bad", "not valid YAML"),
    ],
)
def test_bad_policies_are_refused_with_a_reason(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_policy(text)


def test_policy_file_missing_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_policy(tmp_path / "nope.yaml")
    f = tmp_path / "p.yaml"
    f.write_text(
        "rules:\n  - action: throttle\n    when: {score_at_least: 0.5}\n    "
        "retry_after: 5\nmin_requests: 3\n"
    )
    p = load_policy(f)
    assert p.rules[0].retry_after == 5.0 and p.min_requests == 3 and "allow" in ACTIONS


def test_trust_tiers_grant_access_and_declared_uses_explain_for_accountable_orgs() -> None:
    from distillguard.monitor.score import without
    from distillguard.monitor.trust import AccountInfo, TrustPolicy, parse_trust

    t = TrustPolicy()
    anon = AccountInfo("a", verification="email", declared_use="translation service")
    org = AccountInfo("b", org_id="o", verification="org", declared_use="Translation service")
    assert t.granted("a", anon) == ()  # a self-declared use explains nothing on its own
    assert set(t.granted("b", org)) == {"cot_share", "harvest_share", "language_breadth"}
    x = np.array([0.9, 0.8, 3.0, 0.1, 2.0])
    y = without(x, t.granted("b", org))
    assert y[0] < 0.1 and y[1] < 0.1 and y[4] == 0.0 and y[2] == 3.0
    with pytest.raises(ConfigError, match="unknown features"):
        parse_trust({"use_grants": {"chat": ["timing"]}})


def _honest_model():
    rng = np.random.default_rng(3)
    n = 400
    honest = np.column_stack(
        [
            np.full(n, 0.03),  # cot_share
            np.full(n, 0.01),  # harvest_share
            rng.uniform(0, 3, n),  # broad_rate
            rng.uniform(0, 0.05, n),  # topic_drift
            rng.uniform(0, 0.2, n),  # language_breadth
            np.zeros(n),  # model_jump
        ]
    )
    campaign = honest[:20] + 5.0
    return fit_model(np.vstack([honest, campaign]), np.array([0] * n + [1] * 20))


def _user(requests: int, topics: int, days: float = 1.0) -> AccountSignals:
    counts = [0.0] * 20
    for i in range(requests):
        counts[i % topics] += 1
    return _sig(
        requests=requests,
        topic_counts=tuple(counts),
        topic_breadth=min(1.0, topics / 20),
        first_ts=0.0,
        last_ts=days * 86_400.0,
    )


def test_an_end_user_sweeping_broad_content_is_judged_on_its_own() -> None:
    from distillguard.monitor.offline import AccountView, verdict_of

    model = _honest_model()
    people = tuple((f"u{i}", _user(25, 3)) for i in range(6))
    router = _sig(requests=5000, topic_counts=(5000.0,) + (0.0,) * 19, end_users=people)
    quiet = verdict_of(AccountView("r", router, None, None), model)
    assert not quiet.flagged
    harvester = replace(router, end_users=(*people, ("u_h", _user(3000, 20))))
    caught = verdict_of(AccountView("r", harvester, None, None), model)
    assert caught.flagged and any("u_h" in r for r in caught.reasons)


def test_a_trust_tier_raises_the_bar_except_for_a_departure_from_its_own_history() -> None:
    from distillguard.monitor.score import SCORE_FEATURES, tiered_score

    model = _honest_model()
    level = np.array([0.03, 0.01, 3.0, 0.0, 0.0, 0.0])  # (F,)
    level[SCORE_FEATURES.index("broad_rate")] = 4.5  # a little beyond every honest account
    p_plain = 1 - model.score(level)
    assert 1 - tiered_score(model, level, 2.0) == pytest.approx(min(1, p_plain * np.exp(2.0)))
    change = np.array([0.03, 0.01, 1.0, 0.0, 0.0, 4.0])  # switched at e^4 (55x) its pace
    assert tiered_score(model, change, 2.0) == pytest.approx(model.score(change))
    assert tiered_score(model, change, 2.0) >= model.threshold


def test_links_and_pooled_content_each_short_of_the_bar_act_together() -> None:
    from distillguard.monitor.coordination import ClusterTest
    from distillguard.monitor.links import Cluster
    from distillguard.monitor.offline import AccountView, Context, verdict_of
    from distillguard.monitor.score import joint_p

    assert joint_p(1.0, 0.3) > 0.3  # no evidence from the links only weakens the content
    assert joint_p(2e-3, 2e-3) < 1e-4 < 1e-3 < joint_p(2e-3, 0.5)
    model = _honest_model()
    cl = Cluster("c1", ("a", "b", "c"), ("payment", "ip_prefix"))
    own = _user(30, 20, days=3.0)

    def verdict(p_links: float, pooled_requests: int):
        pooled = _user(pooled_requests, 20, days=3.0)
        ctx = Context({"c1": ClusterTest("c1", 3, 2, p_links, p_links <= 1e-3)})
        return verdict_of(AccountView("a", own, cl, pooled), model, ctx)

    ordinary = 30  # about 9 off-domain prompts a day: an ordinary account's content
    unusual = 80  # about 25 a day: in the honest accounts' top 1 %, short of the bar
    assert not verdict(2e-3, ordinary).flagged  # links alone just short of alpha
    p_content = 1 - verdict(1.0, unusual).score  # unlinked: the pooled content alone
    assert 1e-3 < p_content < 0.05
    together = verdict(2e-3, unusual)
    assert together.flagged and "together p" in together.reasons[0]
    assert verdict(1.0, 5_000).flagged  # content far beyond every honest account


def test_two_verified_orgs_together_explain_their_shared_links() -> None:
    from distillguard.monitor.trust import AccountInfo, TrustPolicy

    t = TrustPolicy()
    accts = {f"a{i}": AccountInfo(f"a{i}", None, "uni-1", "org") for i in range(4)}
    accts |= {f"b{i}": AccountInfo(f"b{i}", None, "uni-2", "org") for i in range(4)}
    accts |= {f"x{i}": AccountInfo(f"x{i}", None, None, "none") for i in range(3)}
    assert t.explaining_org([*accts], accts) == "uni-1+"  # 8 of 11 in verified orgs
    assert t.explaining_org(["a0", "a1", "a2", "x0"], accts) == "uni-1"
    assert t.explaining_org(["a0", "x0", "x1", "x2"], accts) is None
    unverified = {k: AccountInfo(k, None, "uni-1", "email") for k in ("a0", "a1", "a2")}
    assert t.explaining_org(["a0", "a1", "a2"], unverified) is None
