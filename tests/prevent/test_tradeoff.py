"""The trade-off's arithmetic and its adaptive attackers (pure parts)."""

from __future__ import annotations

import pytest

from distillguard.errors import ConfigError, InputError
from distillguard.prevent.perturb import PerturbConfig, perturb_steps
from distillguard.prevent.task import generate, parse_final, solution, steps_check
from distillguard.prevent.tradeoff import Defence, gain_lost, repair_steps, vote


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
