"""Harvest through the real distillguard gateway serving a tiny teacher, then distil from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.distill.data import TokenMapper, encode_topk_example
from distillguard.distill.harvest import HarvestConfig, Prompt, harvest, prompt_id, read_dataset
from distillguard.distill.trainers import DistillConfig, train_student
from distillguard.models.llama import load_model


@pytest.mark.slow
def test_gray_box_harvest_through_the_gateway_trains_a_topk_student(
    gateway_server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = gateway_server(model_dir=tiny_model_dir)
    _, _, secret = server.create_key()
    texts = [f"Write a sentence about the number {i}." for i in range(12)]
    prompts = [Prompt(prompt_id(t), t) for t in texts]
    out = tmp_path / "harvest.jsonl"
    config = HarvestConfig(
        base_url=server.api_url, api_key=secret, concurrency=4, max_tokens=16, top_logprobs=4
    )
    result = harvest(prompts, out, config)
    assert result.complete and result.written == 12
    records = read_dataset(out)
    assert all(r.logprobs and len(r.logprobs[0]["top_logprobs"]) == 4 for r in records)

    # The API's token strings and bytes map back onto the teacher's own ids: re-decoding the
    # mapped answer gives the answer text the gateway returned.
    _, tokenizer = load_model(tiny_model_dir)
    mapper = TokenMapper(tokenizer)
    for record in records:
        example = encode_topk_example(tokenizer, mapper, record, k=4, max_length=256)
        assert example is not None
        answer_ids = example.input_ids[example.prompt_length :]
        if record.finish_reason == "stop":
            answer_ids = answer_ids[:-1]
        # (A special token the tiny teacher emits mid-answer has no text but is a real step.)
        # A cut mid-character leaves partial UTF-8 bytes that either side may render as U+FFFD.
        decoded = tokenizer.decode(list(answer_ids), skip_special_tokens=True)
        assert decoded.replace("\ufffd", "") == record.answer.replace("\ufffd", ""), record

    trained = train_student(
        out, mode="topk-kd", out_dir=tmp_path / "student", student_tokenizer_dir=tiny_model_dir,
        config=DistillConfig(max_steps=4, batch_size=4, max_length=128, checkpoint_every=0),
        progress=False,
    )  # fmt: skip
    assert trained.skipped_samples == 0 and trained.steps == 4
