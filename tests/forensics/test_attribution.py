"""Attribution: a planted teacher is found, an independent suspect gets "none", bad inputs fail."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from distillguard.errors import InputError
from distillguard.forensics.attribution import (
    AnswerSet,
    AttributionConfig,
    attribute,
    read_answers,
    read_candidates,
    read_families,
)
from distillguard.forensics.attribution_features import (
    answer_features,
    fit_pairwise,
    fit_representation,
    stylometric_features,
)

NUM_PROMPTS = 80
CONFIG = AttributionConfig(min_prompts=30, min_train_prompts=30, hash_bits=16)


def _style_model(rng: np.random.Generator, topics: list[list[str]], style: list[str]) -> dict:
    """Answers mixing the prompt's topic words (shared by all models) with a model's habits."""
    answers = {}
    for i, topic in enumerate(topics):
        words = list(rng.choice(topic, size=12)) + list(rng.choice(style, size=8))
        rng.shuffle(words)
        answers[f"prompt {i}"] = " ".join(words)
    return answers


def _world(seed: int, num_candidates: int = 6) -> tuple[list[AnswerSet], np.random.Generator]:
    rng = np.random.default_rng(seed)
    topics = [[f"t{i}w{j}" for j in range(15)] for i in range(NUM_PROMPTS)]
    cands = []
    for c in range(num_candidates):
        style = [f"s{c}x{j}" for j in range(25)] + ["the", "and", "is"]
        cands.append(AnswerSet(f"cand{c}", _style_model(rng, topics, style)))
    return cands, rng


def _noisy_copy(answers: dict, rng: np.random.Generator, noise: float) -> dict:
    out = {}
    for prompt, text in answers.items():
        words = text.split()
        keep = rng.random(len(words)) > noise
        out[prompt] = " ".join(
            w if k else f"n{rng.integers(1000)}" for w, k in zip(words, keep, strict=True)
        )
    return out


def test_planted_teacher_is_found() -> None:
    cands, rng = _world(1)
    suspect = AnswerSet("student", _noisy_copy(cands[2].answers, rng, noise=0.5))
    result = attribute(suspect, cands, CONFIG)
    assert result.verdict == "cand2" and result.verdict_level == "model"
    assert result.same_prompts  # the candidates only answered the suspect's prompts
    top = result.candidates[0]
    assert top.name == "cand2" and top.p_holm <= CONFIG.alpha and top.share > top.null_mean
    assert all(not c.attributed for c in result.candidates[1:])
    # the verdict claims resemblance, not direction, and says so
    data = result.to_dict()
    assert data["relation"] == "resembles" and "cand2" in data["meaning"]
    assert "does not say who learned from whom" in result.meaning


def test_independent_suspect_gets_none() -> None:
    false_verdicts = 0
    for seed in range(4):
        cands, rng = _world(100 + seed)
        topics = [[f"t{i}w{j}" for j in range(15)] for i in range(NUM_PROMPTS)]
        style = [f"indep{j}" for j in range(25)] + ["the", "and", "is"]
        suspect = AnswerSet("indep", _style_model(rng, topics, style))
        result = attribute(suspect, cands, CONFIG)
        false_verdicts += result.verdict is not None
        assert result.verdict_level == "none"
    assert false_verdicts == 0


def test_siblings_are_tested_as_a_family_and_never_named_alone() -> None:
    """Two candidates with one style (siblings) and a suspect of that style that learned from
    neither in particular: the family is tested as a unit, and no single sibling is named."""
    cands, rng = _world(7, num_candidates=9)
    topics = [[f"t{i}w{j}" for j in range(15)] for i in range(NUM_PROMPTS)]
    style = [f"s2x{j}" for j in range(25)] + ["the", "and", "is"]  # cand2's habits
    cands = [*cands, AnswerSet("cand9", _style_model(rng, topics, style))]
    suspect = AnswerSet("student", _style_model(rng, topics, style))
    config = replace(CONFIG, families={"cand2": "vendor", "cand9": "vendor"})
    result = attribute(suspect, cands, config)
    assert result.verdict not in ("cand2", "cand9")
    family = next(c for c in result.candidates if c.name == "family:vendor")
    # nearly all of the probability goes to one of the siblings, far above the null
    assert family.share >= 0.8 and family.share > family.null_mean + 3 * family.null_sd
    assert result.verdict in (None, "family:vendor")
    # a planted student of cand2 (its own answers, noised) is told apart from the sibling
    student = AnswerSet("student", _noisy_copy(cands[2].answers, rng, noise=0.3))
    assert attribute(student, cands, config).verdict in ("cand2", "family:vendor")


def test_candidates_on_other_prompts() -> None:
    """Candidates trained on other prompts than the suspect's (no shared prompt at all)."""
    cands, rng = _world(11)
    student = _noisy_copy(cands[4].answers, rng, noise=0.5)
    half = NUM_PROMPTS // 2
    suspect = AnswerSet("student", {p: a for i, (p, a) in enumerate(student.items()) if i < half})
    trained = [
        AnswerSet(c.name, {p: a for i, (p, a) in enumerate(c.answers.items()) if i >= half})
        for c in cands
    ]
    result = attribute(suspect, trained, CONFIG)
    assert not result.same_prompts
    assert result.verdict == "cand4"
    # the vote-share statistic ranks the teacher first too (in this synthetic world the
    # held-out models' unseen habit words leave their votes to near-ties, so the vote null
    # is too coarse for a verdict; the mean probability is the default for that reason)
    by_vote = attribute(suspect, trained, replace(CONFIG, statistic="vote"))
    assert by_vote.candidates[0].name == "cand4"
    # the raw scale of the shares finds it as well
    assert attribute(suspect, trained, replace(CONFIG, scale="raw")).verdict == "cand4"


def test_too_few_candidates_answers_and_bad_config(tmp_path: Path) -> None:
    cands, _ = _world(4)
    with pytest.raises(InputError, match="candidates"):
        attribute(AnswerSet("s", cands[0].answers), cands[:3], CONFIG)
    short = AnswerSet("s", dict(list(cands[0].answers.items())[:10]))
    with pytest.raises(InputError, match="suspect has 10 answers"):
        attribute(short, cands[1:], CONFIG)
    with pytest.raises(InputError, match="too many candidates share its family"):
        attribute(
            AnswerSet("s", cands[0].answers),
            cands[1:],
            replace(CONFIG, families={c.name: "one" for c in cands[1:4]}),
        )
    with pytest.raises(InputError):
        AttributionConfig(alpha=1.5)
    with pytest.raises(InputError):
        AttributionConfig(char_ngrams=(4, 2))
    with pytest.raises(InputError, match="scale"):
        AttributionConfig(scale="log")
    with pytest.raises(InputError, match="statistic"):
        AttributionConfig(statistic="median")
    with pytest.raises(InputError, match="min_df"):
        AttributionConfig(min_df=0)
    with pytest.raises(InputError, match="regularization"):
        AttributionConfig(regularization=0.0)
    (tmp_path / "fam.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_families(tmp_path / "fam.json")


def test_stylometry_sees_formatting_habits() -> None:
    """Markdown structure, openers and AI disclaimers are features the n-grams see poorly."""
    markdown = "Certainly! Here is a plan:\n\n## Steps\n\n1. **Plan** it\n2. Do it\n- note"
    plain = "As an AI language model, I cannot do that. I hope this helps"
    feats = stylometric_features([markdown, plain, markdown])  # (3, S)
    assert feats.shape[0] == 3 and np.isfinite(feats).all()
    assert np.array_equal(feats[0], feats[2])  # deterministic, nothing fitted
    differs = np.flatnonzero(feats[0] != feats[1])
    assert differs.size >= 10  # headers, numbered items, bold, blank lines, openers, closers
    assert stylometric_features([]).shape == (0, feats.shape[1])


def test_reading_files_counts_bad_lines(tmp_path: Path) -> None:
    cdir = tmp_path / "cands"
    cdir.mkdir()
    (cdir / "a.jsonl").write_text(
        json.dumps({"instruction": "q1", "output": "a1"})
        + "\n{broken\n"
        + json.dumps({"instruction": "q2"})
        + "\n"
    )
    (cdir / "b.jsonl").write_text(json.dumps({"instruction": "q1", "output": "b1"}) + "\n")
    sets = read_candidates(cdir)
    assert [s.name for s in sets] == ["a", "b"]
    assert sets[0].skipped_lines == 2 and sets[0].answers == {"q1": "a1"}
    (tmp_path / "empty.jsonl").write_text("nope\n")
    with pytest.raises(InputError, match="no line"):
        read_answers(tmp_path / "empty.jsonl")
    with pytest.raises(InputError, match="not found"):
        read_answers(tmp_path / "missing.jsonl")


def test_real_documented_pair(shared_data: Path) -> None:
    """claude2-alpaca-13b was fine-tuned on claude-2 outputs: claude-2 comes first from 120
    real answers, the candidates trained on 200 other prompts."""
    # 8 of the 12 other models keep the pairwise fits few (28, not 66): the test stays fast
    keep = (
        "claude2-alpaca-13b",
        "claude-2",
        "text_davinci_003",
        "gpt4",
        "llama-2-7b-chat-hf",
        "Mistral-7B-Instruct-v0.2",
        "gemma-7b-it",
        "Qwen1.5-7B-Chat",
        "Meta-Llama-3-8B-Instruct",
    )
    sets = [s for s in read_candidates(shared_data / "outputs") if s.name in keep]
    assert len(sets) == len(keep)
    prompts = sorted(sets[0].answers)
    test, train = set(prompts[:120]), set(prompts[200:400])
    suspect = next(s for s in sets if s.name == "claude2-alpaca-13b")
    suspect = AnswerSet(suspect.name, {p: a for p, a in suspect.answers.items() if p in test})
    cands = [
        AnswerSet(s.name, {p: a for p, a in s.answers.items() if p in train or p in test})
        for s in sets
        if s.name != "claude2-alpaca-13b"
    ]
    result = attribute(suspect, cands, AttributionConfig(hash_bits=16))
    assert not result.same_prompts
    top = result.candidates[0]
    # 7 unrelated models in its null (a t on 6 d.o.f.) bound the power: p < 0.05 uncorrected
    assert top.name == "claude-2" and top.share > 5 * top.null_mean and top.p < 0.05
    # at 120 answers the Holm-corrected test may stay silent, but it names no other model
    assert result.verdict in ("claude-2", None)


def test_subset_classifier_never_reads_a_left_out_model() -> None:
    """The null's premise: classifying among a subset of the candidates reads only pairwise
    fits inside the subset, so a left-out model's own answers cannot leak into its share."""
    cands, rng = _world(21)
    train = {c.name: answer_features(list(c.answers.values()), CONFIG) for c in cands}
    changed = dict(train)
    changed["cand5"] = answer_features(
        list(_noisy_copy(cands[0].answers, rng, 0.2).values()), CONFIG
    )
    rep = fit_representation(list(train.values()), CONFIG)
    probe = train["cand5"]
    subset = ["cand0", "cand1", "cand2", "cand3", "cand4"]
    first = fit_pairwise(train, CONFIG, rep).decisions(probe)
    second = fit_pairwise(changed, CONFIG, rep).decisions(probe)
    assert first.shares(subset, "mean_probability") == second.shares(subset, "mean_probability")
    # ... while the shares among all six do depend on cand5's training answers
    every = [*subset, "cand5"]
    assert first.shares(every, "mean_probability") != second.shares(every, "mean_probability")
    probs = first.probabilities(every)  # (N, 6)
    assert probs.shape == (probe.num_answers, 6) and np.allclose(probs.sum(axis=1), 1.0)
