"""Per-account signals and cross-account links."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

import distillguard.monitor as monitor_pkg
from distillguard.errors import ConfigError
from distillguard.monitor.links import LinkConfig, LinkKeys, UnionFind, find_clusters
from distillguard.monitor.signals import (
    COT_PATTERN,
    MinHasher,
    SignalConfig,
    ip_prefix,
    new_sketch,
    request_features,
)

CFG = SignalConfig()
WORDS = [
    "apple",
    "river",
    "quantum",
    "piano",
    "garden",
    "rocket",
    "silver",
    "window",
    "coffee",
    "mountain",
    "violet",
    "engine",
    "candle",
    "harbor",
    "pencil",
    "thunder",
    "marble",
    "lantern",
    "velvet",
    "comet",
]


def _sentence(r: random.Random, n: int = 12) -> str:
    return " ".join(r.choice(WORDS) for _ in range(n))


def _sketch(prompts, *, ts_step: float = 60.0, temperature=None, jitter: float = 0.0):
    r = random.Random(0)
    sk = new_sketch(CFG, MinHasher(CFG.minhash_k, CFG.seed), "a")
    t = 1_700_000_000.0
    for p in prompts:
        t += ts_step * (1 + jitter * (r.random() - 0.5))
        body = {"messages": [{"role": "user", "content": p}]}
        if temperature is not None:
            body["temperature"] = temperature
        sk.observe(
            ts=t, ip="10.1.2.3", user_agent="ua", payment=None, features=request_features(body, CFG)
        )
    return sk


def test_detector_never_imports_the_simulator() -> None:
    """The detector reads only the traffic format: no module of monitor/ imports sim/."""
    root = Path(monitor_pkg.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("distillguard.sim"), f"{path.name} imports {name}"
                assert "label" not in name.lower(), f"{path.name} imports {name}"


def test_cot_pattern_hits_reasoning_requests_only() -> None:
    for text in (
        "Solve this step by step.",
        "Let's think step-by-step",
        "show your work",
        "Walk me through solving this",
        "explain your reasoning in detail",
    ):
        assert COT_PATTERN.search(text.lower()), text
    for text in (
        "What is the capital of France?",
        "Write a poem about stepping stones",
        "Summarize this article",
    ):
        assert not COT_PATTERN.search(text.lower()), text


def test_templated_stream_is_mined_and_varied_stream_is_not() -> None:
    r = random.Random(1)
    frame = "Please answer the following question in full detail and with care: {} Thank you."
    templated = _sketch([frame.format(_sentence(r)) for _ in range(200)]).signals()
    varied = _sketch([_sentence(r) for _ in range(200)]).signals()
    assert templated.templated_share > 0.8
    assert varied.templated_share < 0.2


def test_paraphrased_frames_still_share_shingles_with_many_variants() -> None:
    """Near-duplicates (same frame, different words inside) are templated: not exact match."""
    r = random.Random(2)
    prompts = [
        f"Kindly translate the next sentence into French: {_sentence(r)} -- reply "
        f"with only the translation please"
        for _ in range(100)
    ]
    assert len(set(prompts)) == 100
    assert _sketch(prompts).signals().templated_share > 0.8


def test_one_request_account_is_shrunk_to_the_prior() -> None:
    sig = _sketch(["Solve step by step: 2+2"], temperature=0).signals()
    assert sig.requests == 1
    assert sig.cot_share < 0.2 and sig.greedy_share < 0.3
    assert sig.gap_cv == pytest.approx(2.0)


def test_regular_timing_has_low_gap_cv() -> None:
    r = random.Random(3)
    regular = _sketch([_sentence(r) for _ in range(300)], jitter=0.1).signals()
    assert regular.gap_cv < 0.3


def test_memory_stays_bounded_however_many_requests() -> None:
    r = random.Random(4)
    sk = _sketch([_sentence(r, 30) for _ in range(3000)], ts_step=1.0)
    assert len(sk.shingles) <= 2 * CFG.shingle_table
    assert len(sk.reservoir) == CFG.reservoir
    assert len(sk.prefixes) <= CFG.max_keys and len(sk.bottom_k()) == CFG.minhash_k


def test_out_of_order_arrivals_are_counted_not_fatal() -> None:
    sk = new_sketch(CFG, MinHasher(CFG.minhash_k, CFG.seed), "a")
    feats = request_features({"prompt": "hello"}, CFG)
    for t in (100.0, 200.0, 150.0, 300.0):
        sk.observe(ts=t, ip="::1", user_agent=None, payment=None, features=feats)
    assert sk.out_of_order == 1 and sk.gap_n == 2 and sk.n == 4


def test_ip_prefix_v4_v6_and_garbage() -> None:
    assert ip_prefix("10.1.2.3") == "10.1.2.0/24"
    assert ip_prefix("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert ip_prefix("not-an-ip") == "raw:not-an-ip"


def test_signal_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        SignalConfig(frequent_share=1.5)
    with pytest.raises(ConfigError):
        LinkConfig(link_threshold=0)


def test_one_kind_of_shared_key_does_not_link_two_kinds_do() -> None:
    keys = {
        "a": LinkKeys(payments=frozenset({"card1"})),
        "b": LinkKeys(payments=frozenset({"card1"})),  # colleagues sharing a card
        "c": LinkKeys(payments=frozenset({"card2"}), prefixes=frozenset({"p1"})),
        "d": LinkKeys(payments=frozenset({"card2"}), prefixes=frozenset({"p1"})),
        "e": LinkKeys(prefixes=frozenset({"p1"}), shingles=frozenset({1, 2, 3})),
        "f": LinkKeys(shingles=frozenset({1, 2, 3})),
    }
    clusters = find_clusters(keys)
    assert [c.members for c in clusters] == [("c", "d")]
    assert set(clusters[0].evidence) == {"payment", "ip_prefix"}


def test_keys_shared_by_too_many_accounts_are_ignored() -> None:
    ua = frozenset({"openai-python/1.0"})
    keys = {f"x{i}": LinkKeys(user_agents=ua, prefixes=frozenset({"p"})) for i in range(100)}
    assert find_clusters(keys, LinkConfig(max_key_accounts=50)) == []


def test_union_find_is_deterministic() -> None:
    uf = UnionFind()
    uf.union("b", "c")
    uf.union("c", "a")
    assert uf.find("b") == uf.find("c") == "a"


def test_language_reasoning_model_and_samples_are_extracted() -> None:
    from distillguard.monitor.language import LANGUAGES, prompt_language
    from distillguard.monitor.signals import SignalConfig, request_features

    assert LANGUAGES[prompt_language("what is the weather like and how are you")] == "en"
    assert LANGUAGES[prompt_language("bitte erkläre mir, wie die Sonne und der Mond sind")] == "de"
    assert LANGUAGES[prompt_language("Объясни, пожалуйста, как работает фотосинтез")] == "cyrillic"
    assert prompt_language("42 + 17") == -1
    cfg = SignalConfig()
    base = {"messages": [{"role": "user", "content": "what is a prime number"}]}
    assert not request_features(base, cfg).cot
    assert request_features({**base, "model": "atlas-1-think"}, cfg).cot
    assert request_features({**base, "reasoning_effort": "high"}, cfg).cot
    f = request_features({**base, "n": 4}, cfg)
    assert f.harvest and f.samples == 4


def test_model_drift_and_language_breadth_of_an_account() -> None:
    from distillguard.monitor.signals import MinHasher, SignalConfig, new_sketch, request_features

    cfg = SignalConfig()
    sk = new_sketch(cfg, MinHasher(cfg.minhash_k, cfg.seed), "a")
    texts = [
        "what is the weather like and how are you today",
        "bitte erkläre mir, wie die Sonne und der Mond sind",
        "explique-moi pour quelle raison les étoiles sont dans le ciel avec la lune",
    ]
    for i in range(200):
        body = {"model": "m-1" if i < 64 else "m-2", "messages": [{"role": "user", "content": ""}]}
        body["messages"][0]["content"] = texts[i % 3]
        sk.observe(
            ts=float(i),
            ip="1.2.3.4",
            user_agent=None,
            payment=None,
            features=request_features(body, cfg),
        )
    s = sk.signals()
    assert s.model_drift > 0.9 and s.language_breadth > 1.5


def _observe(sk, body: dict, ts: float, cfg: SignalConfig = CFG) -> None:
    sk.observe(
        ts=ts, ip="1.2.3.4", user_agent=None, payment=None, features=request_features(body, cfg)
    )


BROAD = [
    "write python code to sort a list",
    "what causes inflation in the economy",
    "explain the french revolution history",
    "what is the capital of peru geography",
    "recipe for baking bread with yeast",
    "how does the immune system fight a virus",
]


def test_end_users_are_sketched_apart_and_the_table_stays_bounded() -> None:
    cfg = SignalConfig(max_end_users=8, end_user_min=20, end_users_scored=3)
    sk = new_sketch(cfg, MinHasher(cfg.minhash_k, cfg.seed), "router")
    t = 1_700_000_000.0
    for i in range(400):  # 200 one-off end users and one heavy one
        user = "heavy" if i % 2 else f"u{i}"
        body = {"messages": [{"role": "user", "content": BROAD[i % 6]}], "user": user}
        _observe(sk, body, t + 60.0 * i, cfg)
    assert len(sk.end_users) <= 2 * cfg.max_end_users
    users = dict(sk.signals().end_users)
    assert list(users) == ["heavy"]  # the only one with enough requests to be judged
    assert users["heavy"].requests == 200 and users["heavy"].topic_breadth > 0.3
    plain = _sketch(["hello there"] * 30).signals()
    assert plain.end_users == ()


def test_recent_off_domain_rate_reads_a_sweep_that_started_late() -> None:
    sk = new_sketch(CFG, MinHasher(CFG.minhash_k, CFG.seed), "bot")
    t = 1_700_000_000.0
    for _ in range(300):  # a support bot on one domain for five days ...
        _observe(sk, {"messages": [{"role": "user", "content": "my invoice payment"}]}, t)
        t += 1440.0
    quiet = sk.signals().recent_off_rate
    for i in range(300):  # ... then a day sweeping every domain
        _observe(sk, {"messages": [{"role": "user", "content": BROAD[i % 6]}]}, t)
        t += 288.0
    swept = sk.signals()
    assert quiet < 1.0
    assert swept.recent_off_rate > 100.0  # about 250 off-domain prompts over the last day


def test_a_switch_to_a_new_model_at_a_much_higher_rate_is_a_model_jump() -> None:
    def account(after_step: float) -> float:
        sk = new_sketch(CFG, MinHasher(CFG.minhash_k, CFG.seed), "a")
        t = 1_700_000_000.0
        for _ in range(60):  # 30 a day on the old model for two days
            _observe(sk, {"model": "old", "prompt": "hello"}, t)
            t += 2880.0
        for _ in range(600):
            _observe(sk, {"model": "new", "prompt": "hello"}, t)
            t += after_step
        return sk.signals().model_jump

    assert account(2880.0) < 0.3  # moved to the new model at its usual pace
    assert account(144.0) > 2.0  # moved and sent 20x as much
