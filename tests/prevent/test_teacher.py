"""The arithmetic teacher: a tiny build on an easy setting learns the format and beats
chance, is saved as a model directory the engine serves, and is cached under the home."""

from __future__ import annotations

from dataclasses import replace

import pytest

from distillguard.config import get_settings
from distillguard.errors import ConfigError
from distillguard.models.engine import GenerationEngine
from distillguard.prevent.task import TaskConfig, generate, parse_final
from distillguard.prevent.teacher import (
    TINY_TEACHER,
    ArithTeacherConfig,
    answer,
    arith_teacher_dir,
    arith_teacher_path,
    build_arith_teacher,
    training_pairs,
)

# One operation, +1 / -1 / *2: what a 2-layer model learns in a couple of hundred steps (a
# harder easy setting, operands up to 9, stayed at chance at this budget).
EASY = TaskConfig(n_ops=(1,), max_start=60, max_operand=1, multipliers=(2,), max_value=120)
# The build's own grading (generation in three styles) only has to report every style: 3
# problems do; the digit NLL below judges the model on 30 held-out ones (forward passes only).
EASY_TEACHER = replace(TINY_TEACHER, train_problems=130, steps=250, eval_problems=3, lr=5e-3)
HELD_OUT = 30


@pytest.fixture(scope="module")
def easy_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith") / "teacher"
    return build_arith_teacher(out, EASY_TEACHER, task=EASY, progress=False)


def _digit_nll(model_dir, problems) -> float:
    """Mean NLL (nats) of the reference answers' digit tokens under the model."""
    import torch

    from distillguard.distill.data import encode_example
    from distillguard.models.llama import load_model
    from distillguard.prevent.task import prompt_for, solution

    model, tok = load_model(model_dir)
    digits = {tok.convert_tokens_to_ids(d) for d in "0123456789"}
    total, count = 0.0, 0
    with torch.inference_mode():
        for p in problems:
            ex = encode_example(tok, prompt_for(p), solution(p), max_length=256)
            ids = torch.tensor([ex.input_ids])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)  # (T-1, V)
            for t in range(ex.prompt_length, len(ex.input_ids)):
                if ex.input_ids[t] in digits:
                    total -= float(logp[t - 1, ex.input_ids[t]])
                    count += 1
    return total / count


def test_tiny_teacher_beats_chance_on_an_easy_setting(easy_teacher):
    """At this budget (seconds) a tiny model does not yet get whole answers right (measured:
    0 of 30 held-out), so chance is judged per digit: the reference answers' digits are far
    likelier under the teacher than a uniform guess among ten digits."""
    import math

    held = generate(HELD_OUT, split="held_out", seed=0, config=EASY)
    assert _digit_nll(easy_teacher.out_dir, held) < 0.85 * math.log(10)  # measured: 1.69
    assert easy_teacher.parameters < 300_000
    assert {a.style for a in easy_teacher.accuracy} == {"reasoning", "answer_only", "summary"}


def test_the_teacher_directory_serves_and_writes_the_task_format(easy_teacher):
    engine = GenerationEngine.from_dir(easy_teacher.out_dir, num_threads=1)
    held = generate(8, split="held_out", seed=0, config=EASY)
    texts = answer(engine, held, "reasoning")
    assert sum(parse_final(t) is not None for t in texts) >= 6  # "#### N" closes most answers
    only = answer(engine, held, "answer_only")
    assert sum(t.strip().startswith("####") for t in only) >= 6


def test_training_pairs_mix_the_three_styles():
    pairs = training_pairs(replace(TINY_TEACHER, train_problems=400))
    finals_only = sum(a.startswith("####") for _, a in pairs)
    summaries = sum("Summary:" in a for _, a in pairs)
    assert 20 < finals_only < 120 and 20 < summaries < 120  # 15 % each of 400


def test_bad_teacher_settings_are_refused():
    with pytest.raises(ConfigError):
        ArithTeacherConfig(hidden=30, heads=4)
    with pytest.raises(ConfigError):
        ArithTeacherConfig(answer_only_share=0.6, summary_share=0.5)
    with pytest.raises(ConfigError):
        ArithTeacherConfig(steps=0)


def test_cached_teacher_is_built_once_under_the_home(dg_home, monkeypatch):
    calls = []

    def fake_build(out_dir, config, *, task=TaskConfig(), progress=True):
        calls.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr("distillguard.prevent.teacher.build_arith_teacher", fake_build)
    first = arith_teacher_dir(get_settings(), TINY_TEACHER, progress=False)
    again = arith_teacher_dir(get_settings(), TINY_TEACHER, progress=False)
    assert first == again == arith_teacher_path(get_settings())
    assert first.is_relative_to(dg_home) and len(calls) == 1
