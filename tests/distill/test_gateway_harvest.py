"""Distillation through the real distillguard gateway serving a tiny teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.distill.campaign import run_campaign
from distillguard.distill.data import TokenMapper, encode_topk_example
from distillguard.distill.records import read_dataset
from distillguard.distill.trainers import DistillConfig
from distillguard.models.llama import load_model


@pytest.mark.slow
def test_gray_box_campaign_through_the_gateway(
    gateway_server, tiny_model_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Harvest with top-k logprobs through the gateway, distil a topk-kd student, and score it
    and a no-teacher baseline against the teacher."""
    server = gateway_server(model_dir=tiny_model_dir)
    _, _, secret = server.create_key()
    result = run_campaign(
        api_url=server.api_url,
        api_key=secret,
        teacher_dir=tiny_model_dir,
        work_dir=tmp_path / "campaign",
        data_dir=shared_data,
        samples=16,
        mode="topk-kd",
        top_logprobs=4,
        concurrency=4,
        eval_samples=6,
        progress=False,
        config=DistillConfig(max_steps=30, batch_size=4, max_length=128, checkpoint_every=0),
    )
    assert result.harvest.complete and result.harvest.written == 16
    records = read_dataset(result.dataset)
    # An answer the teacher ends at once (eos first) has no token and so no logprobs.
    scored = [r for r in records if r.logprobs]
    assert len(scored) >= 12 and all(not r.answer for r in records if not r.logprobs)
    assert all(len(e["top_logprobs"]) == 4 for r in scored for e in r.logprobs or [])

    # The API's token strings and bytes map back onto the teacher's own ids: re-decoding the
    # mapped answer gives the answer text the gateway returned.
    _, tokenizer = load_model(tiny_model_dir)
    mapper = TokenMapper(tokenizer)
    for record in scored:
        example = encode_topk_example(tokenizer, mapper, record, k=4, max_length=256)
        assert example is not None
        answer_ids = example.input_ids[example.prompt_length :]
        if record.finish_reason == "stop":
            answer_ids = answer_ids[:-1]
        # A special token the tiny teacher emits mid-answer has no text but is a real step; a
        # cut mid-character leaves partial UTF-8 that either side may render as U+FFFD.
        decoded = tokenizer.decode(list(answer_ids), skip_special_tokens=True)
        assert decoded.replace("\ufffd", "") == record.answer.replace("\ufffd", ""), record

    for report in (result.student, result.baseline):
        assert report.positions > 0 and 0.0 <= report.top1_agreement <= 1.0
    # Thirty steps on the teacher's own distributions already beat a student that never saw it.
    assert result.student.kl_teacher_student < result.baseline.kl_teacher_student
