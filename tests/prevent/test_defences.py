"""The pure defences: reasoning split and withheld, keyed step perturbation, log-probability
controls, antidistillation's logits, and the action parameters that configure them."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.actions import validate_params
from distillguard.errors import ConfigError, InputError
from distillguard.prevent.antidistill import AntidistillConfig, antidistill_logits
from distillguard.prevent.defences import (
    LogprobControls,
    control_chat_logprobs,
    control_legacy_logprobs,
    refusal,
    split_reasoning,
    with_summary_instruction,
    withhold,
)
from distillguard.prevent.perturb import STEP_RE, PerturbConfig, account_key, perturb_steps

# --- answers of the arithmetic task's shape, generated and solved here ----------------------

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@st.composite
def solutions(draw) -> tuple[str, int]:
    """(answer text, final value): step lines "<a><op><b>=<c>" then "#### <c>"."""
    value = draw(st.integers(0, 50))
    lines = []
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(sorted(_OPS)))
        b = draw(st.integers(0, 12))
        new = _OPS[op](value, b)
        lines.append(f"{value}{op}{b}={new}")
        value = new
    return "\n".join([*lines, f"#### {value}"]), value


def _final(text: str) -> int:
    return int(re.findall(r"####\s*(-?\d+)", text)[-1])


def _consistent_steps(text: str) -> int:
    return sum(_OPS[op](int(a), int(b)) == int(c) for a, op, b, c in STEP_RE.findall(text))


# --- reasoning split and withheld -----------------------------------------------------------


def test_split_understands_gsm8k_summary_and_think_tags() -> None:
    gsm = split_reasoning("12+3=15\n15*2=30\n#### 30")
    assert (gsm.reasoning, gsm.summary, gsm.final) == ("12+3=15\n15*2=30", None, "#### 30")
    summarized = split_reasoning("12+3=15\nSummary: add, multiply.\n#### 30")
    assert summarized.reasoning == "12+3=15"
    assert (summarized.summary, summarized.final) == ("Summary: add, multiply.", "#### 30")
    think = split_reasoning("<think>carry the one</think>The answer is 7.")
    assert (think.reasoning, think.final) == ("carry the one", "The answer is 7.")
    unclosed = split_reasoning("<think>still thinking")
    assert (unclosed.reasoning, unclosed.final) == ("still thinking", None)
    plain = split_reasoning("Paris is the capital of France.")
    assert (plain.reasoning, plain.final) == ("", "Paris is the capital of France.")


def test_withhold_drop_and_summary() -> None:
    text = "12+3=15\n15*2=30\nSummary: add, then double.\n#### 30"
    assert withhold(text, "drop") == "#### 30"
    assert withhold(text, "summary") == "Summary: add, then double.\n#### 30"
    # No summary written: summary mode falls back to the final answer alone.
    assert withhold("1+1=2\n#### 2", "summary") == "#### 2"
    assert withhold("1+1=2\n#### 2", "summary", summary="Summary: add.") == "Summary: add.\n#### 2"
    assert withhold("<think>hmm</think>42", "drop") == "42"
    assert withhold("no reasoning here", "drop") == "no reasoning here"
    with pytest.raises(ConfigError):
        withhold(text, "shred")  # type: ignore[arg-type]


@given(solutions())
@settings(max_examples=200, deadline=None)
def test_withheld_answers_keep_the_final_answer_and_no_step(case: tuple[str, int]) -> None:
    text, value = case
    served = withhold(text, "drop")
    assert _final(served) == value
    assert STEP_RE.search(served) is None


def test_summary_instruction_goes_on_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Ann has 3 pens."},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "How many?"}]},
    ]
    out = with_summary_instruction(messages, "Give a short summary instead of your steps.")
    assert out[1] == messages[1]  # earlier turns untouched, input not mutated
    assert out[3]["content"] == "How many?\n\nGive a short summary instead of your steps."
    assert messages[3]["content"] == [{"type": "text", "text": "How many?"}]


# --- keyed perturbation of the steps --------------------------------------------------------


@given(solutions(), st.binary(min_size=1, max_size=32))
@settings(max_examples=200, deadline=None)
def test_result_mode_keeps_the_final_answer_and_breaks_every_step(
    case: tuple[str, int], key: bytes
) -> None:
    text, value = case
    out = perturb_steps(text, key, PerturbConfig(rate=1.0, max_offset=3, mode="result"))
    assert _final(out.text) == value  # an honest reader loses nothing
    assert out.changed == out.steps == text.count("\n")
    assert _consistent_steps(out.text) == 0  # no step a student learns right arithmetic from
    for (a, op, b, c), (a2, op2, b2, c2) in zip(
        STEP_RE.findall(text), STEP_RE.findall(out.text), strict=True
    ):
        assert (a, op, b) == (a2, op2, b2)  # operands as the teacher wrote them
        assert 1 <= abs(int(c2) - int(c)) <= 3
        assert int(c) < 0 or int(c2) >= 0  # a count never turns negative


@given(solutions(), st.binary(min_size=1, max_size=32))
@settings(max_examples=200, deadline=None)
def test_carry_mode_is_a_true_consistent_chain_to_the_same_answer(
    case: tuple[str, int], key: bytes
) -> None:
    text, value = case
    out = perturb_steps(text, key, PerturbConfig(rate=1.0, max_offset=3))  # carry: the default
    before, after = STEP_RE.findall(text), STEP_RE.findall(out.text)
    assert _final(out.text) == value  # an honest reader's answer is the teacher's
    assert len(after) == len(before) and after[-1][3] == before[-1][3]  # last result kept
    assert _consistent_steps(out.text) == len(after)  # every line is true arithmetic ...
    assert all(after[i + 1][0] == after[i][3] for i in range(len(after) - 1))  # ... and chained
    if len(before) >= 2:
        assert out.changed >= 2  # a changed result and the step that lands back
        assert [s[3] for s in after[:-1]] != [s[3] for s in before[:-1]]


def test_perturbation_is_keyed_per_account_and_repeatable() -> None:
    text = "12+3=15\n15*2=30\n30-5=25\n#### 25"
    for mode in ("result", "carry"):
        config = PerturbConfig(mode=mode)
        alice, bob = account_key(b"secret", "acct_a"), account_key(b"secret", "acct_b")
        first = perturb_steps(text, alice, config).text
        assert perturb_steps(text, alice, config).text == first  # re-asking: the same steps
        many = {
            perturb_steps(text, account_key(b"secret", f"a{i}"), config).text for i in range(20)
        }
        assert len(many) > 5 and perturb_steps(text, bob, config).text != first  # keys differ
    some = [
        perturb_steps(text, account_key(b"s", f"a{i}"), PerturbConfig(rate=0.5, mode="result"))
        for i in range(200)
    ]
    share = sum(p.changed for p in some) / sum(p.steps for p in some)
    assert 0.4 < share < 0.6
    with pytest.raises(ConfigError):
        PerturbConfig(rate=0.0)
    with pytest.raises(ConfigError):
        PerturbConfig(mode="shuffle")
    with pytest.raises(ConfigError):
        perturb_steps(text, b"")


def test_perturbation_without_final_line_keeps_the_last_result() -> None:
    out = perturb_steps("2+2=4\n4*3=12", b"k", PerturbConfig(mode="result"))
    assert out.text.endswith("4*3=12") and out.changed == 1
    carried = perturb_steps("2+2=4\n4*3=12", b"k")  # carry: lands back on 12
    assert carried.text.endswith("=12") and carried.text != "2+2=4\n4*3=12"


# --- log-probability controls ---------------------------------------------------------------


def _chat_logprobs(tokens: int, k: int) -> dict:
    return {
        "content": [
            {
                "token": f"t{i}",
                "logprob": -0.123456 * (i + 1),
                "bytes": [116],
                "top_logprobs": [
                    {"token": f"a{j}", "logprob": -0.5 * (j + 1), "bytes": [97]} for j in range(k)
                ],
            }
            for i in range(tokens)
        ]
    }


@given(
    tokens=st.integers(0, 12),
    k=st.integers(0, 20),
    cap=st.integers(0, 20),
    decimals=st.one_of(st.none(), st.integers(0, 6)),
    noise=st.floats(0, 2),
    budget=st.one_of(st.none(), st.integers(0, 15)),
)
@settings(max_examples=200, deadline=None)
def test_chat_logprob_controls(tokens, k, cap, decimals, noise, budget) -> None:
    controls = LogprobControls(top_logprobs=cap, round_decimals=decimals, noise=noise)
    out, used = control_chat_logprobs(
        _chat_logprobs(tokens, k), controls, np.random.default_rng(0), budget
    )
    expect = tokens if budget is None else min(tokens, budget)
    assert used == expect
    if expect == 0:
        assert out is None
        return
    assert len(out["content"]) == expect
    for entry in out["content"]:
        assert len(entry["top_logprobs"]) == min(k, cap)
        for value in [entry["logprob"], *(t["logprob"] for t in entry["top_logprobs"])]:
            assert value <= 0.0
            if decimals is not None:
                assert value == round(value, decimals)
    if noise == 0 and decimals is None:
        assert out["content"][0]["logprob"] == pytest.approx(-0.123456)


def test_legacy_logprob_controls_and_strip() -> None:
    legacy = {
        "tokens": ["a", "b", "c"],
        "token_logprobs": [-0.11111, -0.22222, -0.33333],
        "top_logprobs": [{"a": -0.1, "x": -2.0, "y": -3.0}] * 3,
        "text_offset": [0, 1, 2],
    }
    rng = np.random.default_rng(1)
    out, used = control_legacy_logprobs(
        legacy, LogprobControls(top_logprobs=1, round_decimals=1), rng, 2
    )
    assert used == 2 and out["tokens"] == ["a", "b"] and out["text_offset"] == [0, 1]
    assert out["token_logprobs"] == [-0.1, -0.2]
    assert out["top_logprobs"] == [{"a": -0.1}, {"a": -0.1}]
    assert control_legacy_logprobs(legacy, LogprobControls(strip=True), rng) == (None, 0)
    assert control_chat_logprobs(_chat_logprobs(3, 2), LogprobControls(strip=True), rng) == (
        None,
        0,
    )


def test_noise_changes_values_but_not_their_order_of_magnitude() -> None:
    rng = np.random.default_rng(3)
    out, _ = control_chat_logprobs(_chat_logprobs(200, 0), LogprobControls(noise=0.5), rng)
    diffs = [e["logprob"] - (-0.123456 * (i + 1)) for i, e in enumerate(out["content"])]
    assert any(abs(d) > 0.1 for d in diffs)
    assert all(e["logprob"] <= 0 for e in out["content"])
    with pytest.raises(ConfigError):
        LogprobControls(noise=math.inf)
    with pytest.raises(ConfigError):
        LogprobControls(top_logprobs=21)


def test_refusals_name_the_field_and_not_the_reason() -> None:
    controls = LogprobControls(n_max=2)
    chat = {"logprobs": True, "logit_bias": {"50": 100}, "n": 1}
    refused = refusal(chat, controls, chat=True)
    assert refused is not None and refused.param == "logit_bias"
    assert "score" not in refused.message and "detect" not in refused.message
    assert refusal({"logit_bias": {"50": 100}}, controls, chat=True) is None  # no logprobs
    assert refusal({"logprobs": 0, "logit_bias": {"5": 1}}, controls, chat=False) is not None
    assert refusal({"n": 3}, controls, chat=True).param == "n"
    assert refusal({"n": 2}, controls, chat=True) is None
    allowed = LogprobControls(refuse_logit_bias=False)
    assert refusal(chat, allowed, chat=True) is None


# --- antidistillation's logits --------------------------------------------------------------


def test_antidistill_logits_reduce_to_the_teacher_at_lambda_zero() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 11)
    delta = torch.randn(3, 11)
    base = logits.log_softmax(-1)
    assert torch.allclose(antidistill_logits(logits, delta, 0.0), base)
    steered = antidistill_logits(logits, delta, 2.0)
    assert torch.allclose(steered - base, 2.0 * delta, atol=1e-5)
    # a proxy vocabulary narrower than the teacher's leaves the extra rows alone
    narrow = antidistill_logits(logits, delta[:, :7], 1.0)
    assert torch.allclose(narrow[:, 7:], base[:, 7:])
    masked = logits.clone()
    masked[:, 0] = float("-inf")
    assert torch.isneginf(antidistill_logits(masked, delta, 5.0)[:, 0]).all()
    with pytest.raises(ConfigError):
        AntidistillConfig(lam=-0.1)


# --- action parameters ----------------------------------------------------------------------


def test_action_params_out_of_range_are_input_errors() -> None:
    bad = [
        ("antidistill", {"lambda": -1}, "params.lambda"),
        ("antidistill", {"epsilon": 0}, "params.epsilon"),
        ("cap_logprobs", {"top_logprobs": 21}, "params.top_logprobs"),
        ("cap_logprobs", {"round_decimals": 9}, "params.round_decimals"),
        ("cap_logprobs", {"n": 0}, "params.n"),
        ("withhold_reasoning", {"mode": "shred"}, "params.mode"),
        ("perturb_reasoning", {"rate": 1.5}, "params.rate"),
        ("perturb_reasoning", {"surprise": 1}, "params.surprise"),
    ]
    for action, params, where in bad:
        with pytest.raises(InputError) as caught:
            validate_params(action, params)
        assert caught.value.param == where, (action, params)
    assert validate_params("antidistill", {"lambda": 0.5})["lambda"] == 0.5
    with pytest.raises(InputError):
        validate_params("poison_everything", {})
