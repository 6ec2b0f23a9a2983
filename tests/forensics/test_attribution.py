"""Attribution: a planted teacher is found, an independent suspect gets "none", bad inputs fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distillguard.errors import InputError
from distillguard.forensics.attribution import (
    AnswerSet,
    AttributionConfig,
    attribute,
    double_center,
    read_answers,
    read_candidates,
)

NUM_PROMPTS = 80
CONFIG = AttributionConfig(permutations=199, min_matched_prompts=40)


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
    assert result.verdict == "cand2"
    assert result.matched_prompts == NUM_PROMPTS
    top = result.candidates[0]
    assert top.name == "cand2" and top.p_model_holm < 0.05 and top.p_prompt < 0.05
    assert all(not c.attributed for c in result.candidates[1:])


def test_independent_suspect_gets_none() -> None:
    false_verdicts = 0
    for seed in range(5):
        cands, rng = _world(100 + seed)
        topics = [[f"t{i}w{j}" for j in range(15)] for i in range(NUM_PROMPTS)]
        style = [f"indep{j}" for j in range(25)] + ["the", "and", "is"]
        suspect = AnswerSet("indep", _style_model(rng, topics, style))
        result = attribute(suspect, cands, CONFIG)
        false_verdicts += result.verdict is not None
        # model-level p-values of an unrelated suspect are not piled up near 0
        assert np.median([c.p_model for c in result.candidates]) > 0.05
    assert false_verdicts == 0


def test_double_center_removes_topic_and_hubness() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((5, 5, 3))
    sim = (base + base.transpose(1, 0, 2)) / 2
    hub = sim + 0.7  # a constant topic shift on every pair
    hub[2, :, :] += 0.3  # model 2 is close to everyone
    hub[:, 2, :] += 0.3
    np.testing.assert_allclose(double_center(hub), double_center(sim), atol=1e-12)


def test_mismatched_prompts_are_refused(tmp_path: Path) -> None:
    cands, _ = _world(3)
    suspect = AnswerSet("s", {f"other prompt {i}": "x y z" for i in range(NUM_PROMPTS)})
    with pytest.raises(InputError, match="prompts must match"):
        attribute(suspect, cands, CONFIG)


def test_too_few_candidates_and_bad_config() -> None:
    cands, _ = _world(4)
    with pytest.raises(InputError, match="candidates"):
        attribute(AnswerSet("s", cands[0].answers), cands[:3], CONFIG)
    with pytest.raises(InputError):
        AttributionConfig(alpha=1.5)
    with pytest.raises(InputError):
        AttributionConfig(char_ngrams=(4, 2))


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
    """alpaca-7b was fine-tuned on text-davinci-003 outputs: found on 200 real prompts."""
    outputs = shared_data / "outputs"
    sets = read_candidates(outputs)
    suspect = next(s for s in sets if s.name == "alpaca-7b")
    prompts = sorted(suspect.answers)[:200]
    config = AttributionConfig(permutations=199)
    result = attribute(suspect, [s for s in sets if s.name != "alpaca-7b"], config, prompts=prompts)
    assert result.verdict == "text_davinci_003"
    assert result.matched_prompts == 200
