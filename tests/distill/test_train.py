"""Every distillation mode trains a real `tiny` student end to end (a handful of steps)."""

from __future__ import annotations

import errno
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distillguard.distill import loop
from distillguard.distill.evaluate import EvalConfig, compare_on_rows, evaluate_students
from distillguard.distill.harvest import HarvestRecord, LocalHarvestParams, harvest_local
from distillguard.distill.trainers import DistillConfig, latest_checkpoint, train_student
from distillguard.errors import InputError, ModelError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FAST = DistillConfig(max_steps=6, batch_size=4, max_length=128, checkpoint_every=0, lr=3e-3)


def _prompts(shared: Path | None, n: int) -> list[str]:
    if shared is None:
        return [f"Tell me about topic number {i}." for i in range(n)]
    lines = (shared / "prompts" / "honest.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["prompt"] for line in lines]


@pytest.fixture(scope="module")
def teacher_rows(tiny_model_dir: Path) -> list[HarvestRecord]:
    """The tiny teacher's answers (with top-5 logprobs) to 40 real prompts."""
    from distillguard.models.engine import GenerationEngine

    shared = SHARED_DATA if (SHARED_DATA / "prompts").is_dir() else None
    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1)
    params = LocalHarvestParams(max_new_tokens=24, top_logprobs=5, seed=0)
    return harvest_local(engine, _prompts(shared, 40), params)


def _servable(out: Path) -> str:
    from distillguard.models.engine import GenerationEngine, GenerationParams

    engine = GenerationEngine.from_dir(out, num_threads=1)
    prompt = engine.encode_chat([{"role": "user", "content": "Hello?"}])
    (completion,) = engine.generate_batch([prompt], GenerationParams(max_new_tokens=5, seed=1))
    return completion.finish_reason


def test_local_harvest_records_carry_ids_and_topk(teacher_rows: list[HarvestRecord]) -> None:
    assert len(teacher_rows) == 40
    row = teacher_rows[0]
    assert row.logprobs and all("id" in entry for entry in row.logprobs)
    assert all(len(entry["top_logprobs"]) == 5 for entry in row.logprobs)
    assert row.usage["completion_tokens"] == len(row.logprobs)


@pytest.mark.parametrize("mode", ["sft", "logit-kd", "topk-kd", "gkd"])
def test_each_mode_trains_a_servable_student(
    mode: str, tiny_model_dir: Path, teacher_rows: list[HarvestRecord], tmp_path: Path
) -> None:
    out = tmp_path / mode
    config = replace(FAST, gkd_max_new_tokens=12, lmbda=0.5)
    result = train_student(
        teacher_rows,
        mode=mode,
        out_dir=out,
        teacher_dir=tiny_model_dir,
        student_size="tiny",
        config=config,
        progress=False,
    )
    assert result.steps == 6 and result.tokens_seen > 0
    assert result.held_out_loss == pytest.approx(result.held_out_loss)  # finite, not NaN
    assert 0 < result.held_out_loss < 20
    info = json.loads((out / "distillguard.json").read_text())
    assert info["mode"] == mode and info["distilled"] is True
    assert _servable(out) in ("stop", "length")


def test_logit_kd_pulls_the_student_toward_the_teacher(
    tiny_model_dir: Path, teacher_rows: list[HarvestRecord], tmp_path: Path
) -> None:
    from distillguard.models.llama import load_model

    teacher, teacher_tok = load_model(tiny_model_dir)
    held = teacher_rows[-8:]
    reports = {}
    for steps in (1, 40):
        out = tmp_path / f"s{steps}"
        config = replace(FAST, max_steps=steps, batch_size=8)
        train_student(
            teacher_rows[:-8],
            mode="logit-kd",
            out_dir=out,
            teacher_dir=tiny_model_dir,
            config=config,
            progress=False,
        )
        student, student_tok = load_model(out)
        reports[steps] = compare_on_rows(
            student,
            student_tok,
            teacher,
            teacher_tok,
            held,
            student_dir=out,
            config=EvalConfig(samples=8),
        )
    assert reports[40].kl_teacher_student < reports[1].kl_teacher_student
    assert reports[40].top1_agreement > reports[1].top1_agreement


def test_topk_kd_maps_api_token_strings_onto_the_student_vocabulary(
    tiny_model_dir: Path, teacher_rows: list[HarvestRecord], tmp_path: Path
) -> None:
    """Rows as an HTTP API returns them: token strings only, no ids."""
    api_rows = []
    for row in teacher_rows:
        entries = [
            {
                "token": e["token"],
                "logprob": e["logprob"],
                "top_logprobs": [
                    {"token": t["token"], "logprob": t["logprob"]} for t in e["top_logprobs"]
                ],
            }
            for e in row.logprobs or []
        ]
        api_rows.append(replace(row, logprobs=entries))
    result = train_student(
        api_rows,
        mode="topk-kd",
        out_dir=tmp_path / "s",
        student_tokenizer_dir=tiny_model_dir,
        config=FAST,
        progress=False,
    )
    assert result.train_samples >= len(api_rows) * 0.8
    with pytest.raises(InputError, match="logprobs"):
        stripped = [replace(r, logprobs=None) for r in teacher_rows]
        train_student(
            stripped,
            mode="topk-kd",
            out_dir=tmp_path / "t",
            teacher_dir=tiny_model_dir,
            config=FAST,
            progress=False,
        )


def test_logit_mode_with_another_vocabulary_is_refused(
    tiny_model_dir: Path, teacher_rows: list[HarvestRecord], tmp_path: Path
) -> None:
    from distillguard.models.tokenizer import train_tokenizer

    other = train_tokenizer([r.prompt + " " + r.answer for r in teacher_rows], vocab_size=300)
    other.save_pretrained(str(tmp_path / "tok"))
    for mode in ("logit-kd", "gkd"):
        with pytest.raises(ModelError, match="vocabularies to be identical"):
            train_student(
                teacher_rows,
                mode=mode,
                out_dir=tmp_path / mode,
                teacher_dir=tiny_model_dir,
                student_tokenizer_dir=tmp_path / "tok",
                config=FAST,
                progress=False,
            )
    # Sequence-level KD has no such constraint: the student keeps its own tokenizer.
    result = train_student(
        teacher_rows,
        mode="sft",
        out_dir=tmp_path / "sft",
        teacher_dir=tiny_model_dir,
        student_tokenizer_dir=tmp_path / "tok",
        config=FAST,
        progress=False,
    )
    assert result.steps == 6


def test_white_box_modes_need_a_teacher(teacher_rows: list[HarvestRecord], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--teacher"):
        train_student(teacher_rows, mode="logit-kd", out_dir=tmp_path / "x", config=FAST)
    with pytest.raises(InputError, match="unknown mode"):
        train_student(teacher_rows, mode="magic", out_dir=tmp_path / "y", config=FAST)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_interrupted_training_resumes_to_the_same_weights(
    tiny_model_dir: Path,
    teacher_rows: list[HarvestRecord],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = replace(FAST, max_steps=6, checkpoint_every=2)
    kwargs = {
        "mode": "logit-kd",
        "teacher_dir": tiny_model_dir,
        "config": config,
        "progress": False,
    }
    train_student(teacher_rows, out_dir=tmp_path / "straight", **kwargs)

    real_step = loop.save_checkpoint
    saved: list[int] = []

    def crash_after_second_checkpoint(*args, **kw):
        path = real_step(*args, **kw)
        saved.append(args[1])
        if len(saved) == 2:
            raise KeyboardInterrupt  # the run dies right after step 4's checkpoint
        return path

    monkeypatch.setattr(loop, "save_checkpoint", crash_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_student(teacher_rows, out_dir=tmp_path / "resumed", **kwargs)
    monkeypatch.setattr(loop, "save_checkpoint", real_step)
    assert latest_checkpoint(tmp_path / "resumed").name == "step-4"
    with pytest.raises(InputError, match="--resume"):
        train_student(teacher_rows, out_dir=tmp_path / "resumed", **kwargs)
    result = train_student(teacher_rows, out_dir=tmp_path / "resumed", resume=True, **kwargs)
    assert result.resumed_from_step == 4
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(
    tiny_model_dir: Path,
    teacher_rows: list[HarvestRecord],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def save_until_disk_full(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    out = tmp_path / "s"
    with pytest.raises(ModelError, match=r"No space left.*step-2 is intact"):
        train_student(
            teacher_rows,
            mode="logit-kd",
            out_dir=out,
            teacher_dir=tiny_model_dir,
            config=replace(FAST, checkpoint_every=2),
            progress=False,
        )
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-2"]
    assert (out / "checkpoints" / "step-2" / "optimizer.pt").is_file()


def test_sft_checkpoint_on_full_disk_is_a_clear_error(
    teacher_rows: list[HarvestRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distillguard.distill import sft

    trainer_cls = sft._make_trainer_class()
    parent = trainer_cls.__mro__[1]

    def disk_full(self, model, trial):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parent, "_save_checkpoint", disk_full)
    with pytest.raises(ModelError, match="No space left"):
        train_student(
            teacher_rows,
            mode="sft",
            out_dir=tmp_path / "s",
            config=replace(FAST, checkpoint_every=3),
            progress=False,
        )
    assert not (tmp_path / "s" / "checkpoints" / ".staging").exists()


def test_evaluate_students_reports_nan_agreement_for_a_foreign_vocabulary(
    tiny_model_dir: Path, teacher_rows: list[HarvestRecord], tmp_path: Path
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(r.to_json() + "\n" for r in teacher_rows))
    train_student(data, mode="sft", out_dir=tmp_path / "own", config=FAST, progress=False)
    reports = evaluate_students(
        [tiny_model_dir, tmp_path / "own"],
        teacher_dir=tiny_model_dir,
        data_path=data,
        config=EvalConfig(samples=8),
    )
    self_report, own = reports
    assert self_report.top1_agreement == 1.0 and self_report.kl_teacher_student < 1e-5
    assert own.top1_agreement != own.top1_agreement  # NaN: no shared vocabulary
    assert own.held_out_loss > self_report.held_out_loss


def test_token_mapper_recovers_ids_from_text_and_bytes(tiny_model_dir: Path) -> None:
    from distillguard.distill.data import TokenMapper
    from distillguard.models.llama import load_model
    from distillguard.models.tokenizer import byte_level_alphabet

    _, tokenizer = load_model(tiny_model_dir)
    mapper = TokenMapper(tokenizer)
    to_byte = {c: b for b, c in byte_level_alphabet().items()}
    special = set(tokenizer.all_special_ids)
    unmapped_by_text = []
    for token, index in tokenizer.get_vocab().items():
        if index in special:
            continue
        raw = [to_byte[c] for c in token]
        # The table agrees with the tokenizer's own decoder wherever the bytes are valid UTF-8.
        assert bytes(raw).decode("utf-8", errors="replace") == tokenizer.decode([index])
        assert mapper(tokenizer.decode([index]), raw) == index
        if mapper(tokenizer.decode([index])) != index:
            unmapped_by_text.append(tokenizer.decode([index]))
    # Without bytes, only pieces that are partial UTF-8 (shown as U+FFFD, shared by many ids)
    # stay unmapped: they are ambiguous, and a wrong id must never get the teacher's mass.
    assert unmapped_by_text and all("\ufffd" in piece for piece in unmapped_by_text)


def test_sft_resumes_from_its_last_checkpoint(
    teacher_rows: list[HarvestRecord], tmp_path: Path
) -> None:
    out = tmp_path / "s"
    first = train_student(
        teacher_rows,
        mode="sft",
        out_dir=out,
        config=replace(FAST, max_steps=3, checkpoint_every=3),
        progress=False,
    )
    assert first.steps == 3 and (out / "checkpoints" / "checkpoint-3").is_dir()
    more = train_student(
        teacher_rows,
        mode="sft",
        out_dir=out,
        config=replace(FAST, max_steps=6, checkpoint_every=3),
        resume=True,
        progress=False,
    )
    assert more.resumed_from_step == 3 and more.steps == 6
    assert not list((out / "checkpoints").glob(".staging*"))


def test_learning_curve_trains_per_count_and_plots(
    tiny_model_dir: Path, teacher_rows: list[HarvestRecord], tmp_path: Path
) -> None:
    from distillguard.distill.campaign import learning_curve

    plot = tmp_path / "curve.png"
    points = learning_curve(
        teacher_rows,
        teacher_dir=tiny_model_dir,
        mode="logit-kd",
        sample_counts=[8, 24],
        config=replace(FAST, max_steps=12),
        eval_config=EvalConfig(samples=8),
        plot_path=plot,
    )
    assert [p.samples for p in points] == [8, 24]
    assert all(0.0 <= p.top1_agreement <= 1.0 and p.kl_teacher_student > 0 for p in points)
    assert plot.stat().st_size > 1000
    with pytest.raises(InputError, match="held out"):
        learning_curve(
            teacher_rows,
            teacher_dir=tiny_model_dir,
            mode="sft",
            sample_counts=[40],
            eval_config=EvalConfig(samples=8),
        )


def test_held_out_prompts_longer_than_the_teacher_are_skipped_and_counted(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Issue #16 item 12: the first held-out prompt that did not fit crashed the evaluation."""
    prompts = tmp_path / "held_out.jsonl"
    lines = [{"prompt": "word " * 2_000}] + [{"prompt": f"a short question {i}"} for i in range(3)]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    [report] = evaluate_students(
        [tiny_model_dir],
        teacher_dir=tiny_model_dir,
        prompts_path=prompts,
        config=EvalConfig(samples=4, max_new_tokens=8),
    )
    assert report.skipped_prompts == 1 and report.samples == 3
    assert report.top1_agreement == 1.0  # the teacher against itself on what fits
