"""The simulator: valid, deterministic, split, and personas that behave as described."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from distillguard.errors import InputError
from distillguard.sim.prompts import load_prompt_sets, split_of
from distillguard.sim.simulate import SimConfig, simulate
from distillguard.traffic import prompt_text, read_labels, read_traffic


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    d = tmp_path_factory.mktemp("sim")
    cfg = SimConfig(accounts=40, campaigns=5, seed=5, split="train", days=3)
    res = simulate(cfg, data_dir=shared_data, out=d / "t.jsonl", labels=d / "l.jsonl")
    reader = read_traffic(d / "t.jsonl")
    recs = list(reader)
    return {
        "dir": d,
        "res": res,
        "recs": recs,
        "reader": reader,
        "labels": {lab.account_id: lab for lab in read_labels(d / "l.jsonl")},
    }


def test_every_line_is_valid_and_time_ordered(run: dict) -> None:
    assert run["reader"].skipped == 0
    assert len(run["recs"]) == run["res"].exchanges > 1000
    ts = [r.ts for r in run["recs"]]
    assert ts == sorted(ts)
    assert len({r.id for r in run["recs"]}) == len(run["recs"])


def test_labels_cover_exactly_the_accounts_and_every_persona(run: dict) -> None:
    labels = run["labels"]
    assert {r.account_id for r in run["recs"]} <= set(labels)
    personas = Counter(lab.persona for lab in labels.values())
    for p in (
        "casual",
        "power_user",
        "app_support_bot",
        "app_summarizer",
        "campaign_single",
        "campaign_hydra",
        "campaign_low_slow",
        "campaign_cover",
        "campaign_paraphrase",
    ):
        assert personas[p] >= 1, p
    for lab in labels.values():
        assert (lab.campaign_id is not None) == (lab.label == "campaign")
    assert personas["campaign_hydra"] >= 15


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path, shared_data: Path) -> None:
    cfg = SimConfig(accounts=10, campaigns=2, seed=9, days=1)
    for name in ("a", "b"):
        simulate(
            cfg, data_dir=shared_data, out=tmp_path / f"{name}.jsonl", labels=tmp_path / f"{name}.l"
        )
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    other = SimConfig(accounts=10, campaigns=2, seed=10, days=1)
    simulate(other, data_dir=shared_data, out=tmp_path / "c.jsonl", labels=tmp_path / "c.l")
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()


def test_train_and_test_splits_share_no_prompt(shared_data: Path) -> None:
    train, test = load_prompt_sets(shared_data, "train"), load_prompt_sets(shared_data, "test")
    assert not set(train.honest) & set(test.honest)
    assert not set(train.gsm8k) & set(test.gsm8k)
    assert not set(train.t0) & set(test.t0)
    assert all(split_of(p) == "train" for p in train.honest[:50])
    assert 0.55 < len(train.honest) / (len(train.honest) + len(test.honest)) < 0.85


def test_hydra_accounts_share_infrastructure_and_fire_together(run: dict) -> None:
    labels = run["labels"]
    hydra = {a for a, lab in labels.items() if lab.persona == "campaign_hydra"}
    pays = Counter(r.payment_fingerprint for r in run["recs"] if r.account_id in hydra)
    assert len([p for p in pays if p]) <= 4  # a few cards for many accounts
    prefixes = {r.ip.rsplit(".", 1)[0] for r in run["recs"] if r.account_id in hydra}
    assert len(prefixes) <= 3
    seconds = Counter(int(r.ts) // 10 for r in run["recs"] if r.account_id in hydra)
    accounts_per_window: dict[int, set] = defaultdict(set)
    for r in run["recs"]:
        if r.account_id in hydra:
            accounts_per_window[int(r.ts) // 10].add(r.account_id)
    # waves: many accounts inside the same 10-second window
    assert max(len(s) for s in accounts_per_window.values()) >= 4
    assert seconds


def test_people_sleep_and_scripts_do_not(run: dict) -> None:
    labels = run["labels"]
    hours: dict[str, Counter] = defaultdict(Counter)
    for r in run["recs"]:
        hours[labels[r.account_id].persona][int(r.ts // 3600) % 24] += 1

    def quiet(c: Counter) -> float:
        h = [c[i] for i in range(24)]
        return min(sum((h + h)[i : i + 6]) for i in range(24)) / max(1, sum(h))

    assert quiet(hours["campaign_single"]) > 0.15
    assert quiet(hours["app_support_bot"]) < 0.08


def test_campaign_prompts_ask_for_reasoning_and_apps_use_one_frame(run: dict) -> None:
    labels = run["labels"]
    single = [
        prompt_text(r.request)
        for r in run["recs"]
        if labels[r.account_id].persona == "campaign_paraphrase"
    ]
    assert len(set(single)) > 0.9 * len(single)  # paraphrased: nearly all distinct
    bot = [
        r.request["messages"][0]["content"]
        for r in run["recs"]
        if labels[r.account_id].persona == "app_support_bot"
    ]
    assert len(set(bot)) <= 2  # one system prompt per app


def test_bad_config_is_refused(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        SimConfig(accounts=0, campaigns=0)
    with pytest.raises(InputError):
        SimConfig(split="dev")
    with pytest.raises(InputError):
        SimConfig(days=0)


def test_mimic_stress_campaigns_are_added_without_changing_the_rest(
    tmp_path: Path, shared_data: Path
) -> None:
    base = SimConfig(accounts=10, campaigns=2, seed=9, days=1)
    stress = SimConfig(accounts=10, campaigns=2, seed=9, days=1, mimic_campaigns=2)
    simulate(base, data_dir=shared_data, out=tmp_path / "a.jsonl", labels=tmp_path / "a.l")
    simulate(stress, data_dir=shared_data, out=tmp_path / "b.jsonl", labels=tmp_path / "b.l")
    a = {x.account_id: x for x in read_labels(tmp_path / "a.l")}
    b = {x.account_id: x for x in read_labels(tmp_path / "b.l")}
    assert set(a) < set(b)
    extra = [b[k] for k in set(b) - set(a)]
    assert len(extra) == 2 and all(x.persona == "campaign_mimic" for x in extra)
    assert all(x.label == "campaign" and x.campaign_id for x in extra)
