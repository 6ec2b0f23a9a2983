"""The trade-off's arithmetic and its adaptive attackers (pure parts)."""

from __future__ import annotations

import pytest

from distillguard.errors import ConfigError, InputError
from distillguard.prevent.perturb import PerturbConfig, perturb_steps
from distillguard.prevent.task import TaskConfig, generate, parse_final, solution, steps_check
from distillguard.prevent.tradeoff import (
    Defence,
    StudentSpec,
    base_accuracy,
    distill_and_grade,
    fact_documents,
    gain_lost,
    pretrain_student,
    repair_steps,
    vote,
)


def test_gain_lost_is_the_share_of_the_gain_removed():
    assert gain_lost(0.2, 0.6, 0.2) == pytest.approx(1.0)  # back to the baseline
    assert gain_lost(0.6, 0.6, 0.2) == pytest.approx(0.0)  # nothing removed
    assert gain_lost(0.44, 0.6, 0.2) == pytest.approx(0.4)
    assert gain_lost(0.1, 0.6, 0.2) == pytest.approx(1.25)  # worse than no teacher
    assert gain_lost(0.7, 0.6, 0.2) == pytest.approx(-0.25)  # the defence helped the student


def test_gain_lost_is_undefined_without_a_gain():
    with pytest.raises(InputError):
        gain_lost(0.1, 0.2, 0.2)


def test_repair_undoes_the_result_mode_but_not_the_carry_mode():
    result_mode = PerturbConfig(mode="result")
    for problem in generate(200, split="train", seed=3):
        text = solution(problem)
        assert repair_steps(perturb_steps(text, b"key", result_mode).text) == text
        assert repair_steps(text) == text  # a clean answer stays as it is
        carried = perturb_steps(text, b"key").text  # the default: carry mode
        assert carried != text and parse_final(carried) == problem.answer
        assert steps_check(carried)  # every line true: a calculator finds nothing to fix
        assert repair_steps(carried) == carried  # the chain is consistent: nothing to rebuild
    assert any(
        not steps_check(perturb_steps(solution(p), b"key", result_mode).text)
        for p in generate(20, split="train", seed=3)
    )


def test_vote_keeps_a_majority_answer():
    assert vote(["1+1=3\n#### 3", "1+1=2\n#### 2", "2\n#### 2"]) == "1+1=2\n#### 2"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "nope"},
        {"name": "cap_logprobs", "top_logprobs": 21},
        {"name": "antidistill", "lam": -0.1},
        {"name": "none", "adaptive": "guess"},
    ],
)
def test_bad_defence_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        Defence(**kwargs)


def test_fact_documents_are_true_equations_over_the_task_range():
    docs = fact_documents(30, 5, seed=2)
    assert docs == fact_documents(30, 5, seed=2) and docs != fact_documents(30, 5, seed=3)
    for doc in docs:
        lines = doc.split("\n")
        assert len(lines) == 5 and steps_check(doc)  # every line true arithmetic
        assert all(int(line.split("=")[1]) >= 0 for line in lines)


@pytest.mark.parametrize(
    "kwargs", [{"hidden": 30, "heads": 4}, {"steps": 0}, {"pretrain_facts": 0}, {"lr": 0.0}]
)
def test_bad_student_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        StudentSpec(**kwargs)


def test_a_base_student_is_pretrained_distilled_and_graded(tmp_path):
    """The whole student path at a toy budget: pre-training saves a model directory that
    sft and topk-kd distil (a copy; the base stays as it was) and that grading reads."""
    import torch

    from distillguard.models.llama import load_model
    from distillguard.models.tokenizer import MIN_VOCAB, train_tokenizer
    from distillguard.prevent.task import prompt_for

    torch.set_num_threads(1)
    tok = train_tokenizer(["0123456789+-*=#\n"], vocab_size=MIN_VOCAB)
    spec = StudentSpec(hidden=16, layers=1, heads=2, ffn=32, pretrain_steps=2, steps=2)
    base = pretrain_student(tok, spec, tmp_path / "base", vocab_size=MIN_VOCAB, task=TaskConfig())
    before = {k: v.clone() for k, v in load_model(base)[0].state_dict().items()}
    problems = generate(6, split="train", seed=0)
    rows = [
        {
            "id": str(i),
            "prompt": prompt_for(p),
            "answer": solution(p),
            "logprobs": [
                {"token": ch, "logprob": 0.0, "top_logprobs": [{"token": ch, "logprob": 0.0}]}
                for ch in solution(p)
            ],
        }
        for i, p in enumerate(problems)
    ]
    held = generate(3, split="held_out", seed=0)
    for mode in ("sft", "topk-kd"):
        assert 0.0 <= distill_and_grade(rows, mode, base, held, spec) <= 1.0
    after = load_model(base)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert 0.0 <= base_accuracy(base, held) <= 1.0
    with pytest.raises(InputError):
        distill_and_grade(rows, "logit-kd", base, held, spec)
