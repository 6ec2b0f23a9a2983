"""The arithmetic task: every generated answer checks, the parser round-trips, splits are
disjoint by construction, and bad settings are refused."""

from __future__ import annotations

import pytest

from distillguard.errors import ConfigError, InputError
from distillguard.prevent.task import (
    STEP_RE,
    STYLES,
    TaskConfig,
    generate,
    is_correct,
    majority_final,
    parse_final,
    prompt_for,
    solution,
    split_answer,
    split_of,
    steps_check,
    strip_reasoning,
)


@pytest.fixture(scope="module")
def train():
    return generate(3000, split="train", seed=1)


@pytest.fixture(scope="module")
def held():
    return generate(800, split="held_out", seed=1)


def test_every_generated_solution_checks_in_every_style(train):
    cfg = TaskConfig()
    for problem in train[:500]:
        for style in STYLES:
            text = solution(problem, style)
            assert is_correct(problem, text)
            assert steps_check(text)
        steps = problem.steps
        assert steps[0].left == problem.start and len(steps) in cfg.n_ops
        assert all(0 <= s.result <= cfg.max_value for s in steps)
        assert all(STEP_RE.fullmatch(s.line) for s in steps)
        assert str(problem.start) in problem.text


def test_splits_are_disjoint_by_structure_and_each_split_is_its_own(train, held):
    assert not {p.key for p in train} & {p.key for p in held}
    assert all(split_of(p) == "train" for p in train)
    assert all(split_of(p) == "held_out" for p in held)
    assert len({p.key for p in train}) == len(train)  # distinct within a split too


def test_generation_is_seeded():
    a = generate(50, split="train", seed=7)
    assert a == generate(50, split="train", seed=7)
    assert a != generate(50, split="train", seed=8)


def test_parser_round_trips_and_rejects_garbage(train):
    for problem in train[:200]:
        text = solution(problem, "summary")
        parts = split_answer(text)
        assert parts.final == f"#### {problem.answer}"
        assert parts.summary is not None and parts.summary.startswith("Summary:")
        assert parts.reasoning.split("\n") == [s.line for s in problem.steps]
        assert parse_final(text) == problem.answer
    assert parse_final("12+3=15\n15*2=30") is None  # no final line
    assert parse_final("#### twelve") is None
    assert parse_final("") is None
    assert parse_final("#### 3\n#### 7") == 7  # the last final line counts
    assert not steps_check("2+2=5\n#### 5")


def test_strip_reasoning_keeps_the_final_answer_and_nothing_of_the_steps(train):
    for problem in train[:100]:
        full = solution(problem, "summary")
        dropped = strip_reasoning(full)
        summarised = strip_reasoning(full, keep_summary=True)
        assert dropped == f"#### {problem.answer}"
        assert summarised.split("\n")[0].startswith("Summary:")
        assert is_correct(problem, dropped) and is_correct(problem, summarised)
        for step in problem.steps[:-1]:
            assert step.line not in summarised
    assert strip_reasoning("no final here") == ""


def test_prompts_carry_the_style_instruction(train):
    problem = train[0]
    assert prompt_for(problem) == problem.text
    assert prompt_for(problem, "answer_only") != prompt_for(problem, "summary")
    with pytest.raises(InputError):
        prompt_for(problem, "poem")  # type: ignore[arg-type]


def test_majority_vote_picks_the_most_frequent_final():
    assert majority_final(["#### 3", "#### 4", "x\n#### 4", "garbage"]) == 4
    assert majority_final(["garbage"]) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_ops": ()},
        {"n_ops": (0,)},
        {"multipliers": (1,)},
        {"held_out_buckets": 1},
        {"max_start": 50, "max_value": 20},
    ],
)
def test_bad_task_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        TaskConfig(**kwargs)


def test_bad_generate_arguments_are_refused():
    with pytest.raises(InputError):
        generate(3, split="test")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        generate(-1, split="train")
    tiny = TaskConfig(n_ops=(1,), max_start=2, max_operand=1, multipliers=(2,), max_value=4)
    with pytest.raises(InputError):
        generate(100, split="train", config=tiny)  # far fewer structures than asked
