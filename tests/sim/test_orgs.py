"""The organisations world (``distillguard sim orgs``): format, determinism, personas, splits,
the traces it leaves, bounded memory, bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.errors import InputError
from distillguard.sim.orgs import (
    CAMPAIGN_PERSONAS,
    PERSONAS,
    OrgsConfig,
    build_world,
    generate_orgs,
    load_sources,
    source_texts,
)
from distillguard.sim.orgs.generate import EPOCH
from distillguard.sim.orgs.sources import normalise
from distillguard.traffic import read_labels, read_traffic

SMALL = {"accounts": 110, "days": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def world(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("orgs") / "a"
    res = generate_orgs(OrgsConfig(**SMALL, split="a"), data_dir=shared_data, out=out)
    return res


def _records(path: Path) -> list:
    reader = read_traffic(path)
    recs = list(reader)
    assert reader.skipped == 0, reader.summary().describe()
    return recs


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_follow_the_traffic_format(world) -> None:
    recs = _records(world.traffic_path)
    assert len(recs) == world.exchanges > 1000
    assert [r.ts for r in recs] == sorted(r.ts for r in recs)  # time order
    assert len({r.id for r in recs}) == len(recs)
    statuses = Counter(r.status for r in recs)
    assert statuses[200] > 0.9 * len(recs)
    assert statuses[429] > 0 and statuses[400] > 0  # limits and client errors happen
    for r in recs:
        if r.status == 200:
            assert r.prompt_tokens and r.prompt_tokens > 0
            assert r.completion_tokens is not None and r.latency_ms > 0
            if r.endpoint != "/v1/embeddings":
                assert r.response_text is not None
        else:
            assert r.response_text is None and r.completion_tokens is None
        assert r.request.get("model")
    endpoints = Counter(r.endpoint for r in recs)
    assert set(endpoints) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}

    # requests carry the parameters real clients send, each by some persona
    features = Counter()
    for r in recs:
        for name in (
            "stream",
            "tools",
            "response_format",
            "logprobs",
            "seed",
            "user",
            "reasoning_effort",
            "temperature",
            "max_tokens",
        ):
            features[name] += name in r.request
        features["n>1"] += (r.request.get("n") or 1) > 1
    assert all(features[f] > 0 for f in (*features, "n>1")), features

    labels = list(read_labels(world.labels_path))
    accounts = _rows(world.accounts_path)
    created = {a["account_id"]: a["created_ts"] for a in accounts}
    assert all(r.ts >= created[r.account_id] for r in recs)  # nothing before sign-up
    ids = [lab.account_id for lab in labels]
    assert len(ids) == len(set(ids)) == world.accounts == SMALL["accounts"]
    assert {a["account_id"] for a in accounts} == set(ids)
    assert {r.account_id for r in recs} <= set(ids)
    for a in accounts:
        assert set(a) == {"account_id", "created_ts", "org_id", "verification", "declared_use"}
        assert a["verification"] in ("none", "email", "org", "enterprise")
        assert isinstance(a["created_ts"], float)
    for lab in labels:
        assert (lab.label == "campaign") == (lab.campaign_id is not None)
        assert (lab.label == "campaign") == (lab.persona in CAMPAIGN_PERSONAS)


def test_every_persona_is_present_and_sends_traffic(world) -> None:
    labels = list(read_labels(world.labels_path))
    assert {lab.persona for lab in labels} == set(PERSONAS)
    assert set(world.by_persona) == set(PERSONAS)
    assert all(n > 0 for n in world.by_persona.values())
    campaigns = {lab.campaign_id for lab in labels if lab.campaign_id}
    assert len(campaigns) >= len(CAMPAIGN_PERSONAS)  # one or more actors of each type
    per_campaign = Counter(lab.persona for lab in labels if lab.campaign_id)
    assert all(per_campaign[p] >= 1 for p in CAMPAIGN_PERSONAS)


def test_large_campaign_types_have_two_independent_actors(shared_data: Path) -> None:
    _, actors = build_world(OrgsConfig(accounts=2000, days=7), load_sources(shared_data, "b"))
    by_type: dict[str, set] = defaultdict(set)
    cards: dict[str, set] = defaultdict(set)
    for a in actors:
        if a.campaign_id:
            by_type[a.persona].add(a.campaign_id)
            cards[a.campaign_id].add(a.payment)
    assert len(by_type["harvest-swarm"]) == len(by_type["harvest-hydra-cot"]) == 2
    assert len(by_type["harvest-bulk"]) == 1
    one, two = sorted(by_type["harvest-swarm"])
    assert not (cards[one] & cards[two]) - {None}  # two actors, no card in common


def test_same_seed_same_bytes_other_seed_other_world(world, shared_data: Path, tmp_path) -> None:
    out = tmp_path / "again"
    argv = [
        "sim",
        "orgs",
        "--out",
        str(out),
        "--accounts",
        str(SMALL["accounts"]),
        "--days",
        str(SMALL["days"]),
        "--seed",
        str(SMALL["seed"]),
        "--split",
        "a",
        "--gzip",
        "--data-dir",
        str(shared_data),
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "exchanges" in result.output
    assert (
        gzip.decompress((out / "traffic.jsonl.gz").read_bytes()) == world.traffic_path.read_bytes()
    )
    assert (out / "labels.jsonl").read_bytes() == world.labels_path.read_bytes()
    assert (out / "accounts.jsonl").read_bytes() == world.accounts_path.read_bytes()

    sources = load_sources(shared_data, "a")
    _, other = build_world(OrgsConfig(**{**SMALL, "seed": 8}), sources)
    labels = {lab.account_id for lab in read_labels(world.labels_path)}
    assert not labels & {a.account_id for a in other}


def test_splits_are_disjoint_and_traffic_stays_in_its_split(world, shared_data: Path) -> None:
    a, b = (
        source_texts(load_sources(shared_data, "a")),
        source_texts(load_sources(shared_data, "b")),
    )
    assert len(a) > 3000 and len(b) > 3000
    assert not a & b
    sent = Counter()
    for r in _records(world.traffic_path):
        for m in r.request.get("messages") or ():
            if m["role"] == "user":
                key = normalise(m["content"])
                sent["a"] += key in a
                sent["b"] += key in b
    assert sent["a"] > 100  # the real prompts of split a are used verbatim...
    assert sent["b"] == 0  # ...and none of split b


def test_traces_are_shared_but_not_proof(world) -> None:
    """Campaigns share some cards and address blocks, never all; an honest course shares
    one card and a NAT too; the newest model appears only after its release."""
    labels = {lab.account_id: lab for lab in read_labels(world.labels_path)}
    cards: dict[str, set] = defaultdict(set)
    blocks: dict[str, set] = defaultdict(set)
    release = None
    first_new_model: dict[str, float] = {}
    for r in _records(world.traffic_path):
        cards[r.account_id].add(r.payment_fingerprint)
        blocks[r.account_id].add(r.ip.rsplit(".", 1)[0])
        if r.request["model"] == "atlas-2":
            first_new_model.setdefault(labels[r.account_id].persona, r.ts)
            release = r.ts if release is None else min(release, r.ts)

    def shared(persona: str, of: dict[str, set]) -> tuple[int, int]:
        accts = [a for a, lab in labels.items() if lab.persona == persona and a in of]
        seen = Counter(x for a in accts for x in of[a] if x)
        sharing = sum(any(seen[x] > 1 for x in of[a] if x) for a in accts)
        return sharing, len(accts)

    n_share, n = shared("harvest-swarm", cards)
    assert n_share >= 2  # prepaid cards reused across workers...
    assert None in set().union(
        *(cards[a] for a, lab in labels.items() if lab.persona == "harvest-swarm")
    )  # ...some have none
    n_share, n = shared("course-cohort", cards)
    assert n_share == n >= 3  # one institutional card for a whole honest course
    n_share, n = shared("course-cohort", blocks)
    assert n_share >= 0.75 * n  # and one university NAT (students also work from home)
    assert release is not None
    assert release >= EPOCH + 0.55 * SMALL["days"] * 86400 - 1
    assert "harvest-model-hopper" in first_new_model and "app-router" in first_new_model


def test_bad_input_is_a_clear_error(tmp_path: Path, shared_data: Path) -> None:
    runner = CliRunner()
    cases = [
        (["--accounts", "50"], "at least 100"),
        (["--accounts", "1000000"], "at most"),
        (["--days", "0"], "--days"),
        (["--split", "c"], "--split"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["sim", "orgs", "--out", str(tmp_path / "x"), *extra])
        assert result.exit_code != 0
        assert message in str(result.exception) or message in result.output
    missing = tmp_path / "no-data"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillguard",
            "sim",
            "orgs",
            "--out",
            str(tmp_path / "y"),
            "--accounts",
            "100",
            "--data-dir",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "y" / "traffic.jsonl").exists()


_RSS = """
import resource, sys
from pathlib import Path
from distillguard.sim.orgs import OrgsConfig, generate_orgs
res = generate_orgs(OrgsConfig(accounts=100, days=float(sys.argv[1]), seed=1),
                    data_dir=Path(sys.argv[2]), out=Path(sys.argv[3]))
print(res.exchanges, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_period(tmp_path: Path, shared_data: Path) -> None:
    """Four times the days, four times the exchanges, the same peak memory (streamed)."""
    peaks = {}
    for days in ("1", "4"):
        proc = subprocess.run(
            [sys.executable, "-c", _RSS, days, str(shared_data), str(tmp_path / days)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        n, rss_kb = map(int, proc.stdout.split())
        peaks[days] = (n, rss_kb)
    (n1, rss1), (n4, rss4) = peaks["1"], peaks["4"]
    assert n4 > 3 * n1
    assert rss4 < rss1 * 1.15 + 20_000, peaks  # KB: at most a few MB of drift


def test_a_malformed_data_file_is_an_error_naming_the_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "honest.jsonl").write_text('{"prompt": "hi", "source": "x"}\nnot json\n{"x": 1}\n')
    with pytest.raises(InputError) as err:
        load_sources(tmp_path, "a")
    assert "honest.jsonl" in err.value.message
    assert "2 malformed lines" in err.value.message and "line 2" in err.value.message
