"""Harvest client against a local OpenAI-compatible mock upstream (real openai SDK, real HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillguard.distill.harvest import (
    COT_INSTRUCTION,
    DatasetWriter,
    HarvestConfig,
    HarvestRecord,
    Prompt,
    harvest,
    prompt_id,
    read_dataset,
    read_prompts,
)
from distillguard.errors import AuthError, InputError, NotFound, RateLimited, UpstreamError

from .conftest import API_KEY, MockServer, mock_answer

REPO = Path(__file__).resolve().parents[2]


def _config(server: MockServer, **kw: object) -> HarvestConfig:
    defaults: dict = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 10.0}
    defaults.update(kw)
    return HarvestConfig(base_url=server.base_url, api_key=API_KEY, **defaults)


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(prompt_id(f"question number {i}"), f"question number {i}") for i in range(n)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_harvest_writes_every_prompt_once_with_answers_and_usage(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    out = tmp_path / "data.jsonl"
    prompts = _prompts(12)
    result = harvest(prompts, out, _config(mock_openai, concurrency=4))
    assert result.complete and result.written == 12 and result.failed == 0
    rows = _lines(out)
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in prompts)
    for row in rows:
        assert row["answer"] == mock_answer(row["prompt"])
        assert row["usage"]["completion_tokens"] == len(row["answer"].split(" "))
        assert row["logprobs"] is None and row["model"] == "mock-teacher"
    # A second run has nothing left to do and asks the server nothing.
    calls = sum(mock_openai.behaviour.calls.values())
    again = harvest(prompts, out, _config(mock_openai))
    assert again.written == 0 and again.already_done == 12
    assert sum(mock_openai.behaviour.calls.values()) == calls


def test_dataset_loads_with_hf_datasets(mock_openai: MockServer, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "data.jsonl"
    harvest(_prompts(5), out, _config(mock_openai, top_logprobs=3))
    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert loaded.num_rows == 5
    assert {"prompt", "answer", "logprobs", "usage"} <= set(loaded.column_names)
    first = loaded[0]
    assert len(first["logprobs"][0]["top_logprobs"]) == 3


def test_top_logprobs_are_kept_when_asked(mock_openai: MockServer, tmp_path: Path) -> None:
    out = tmp_path / "data.jsonl"
    harvest(_prompts(2), out, _config(mock_openai, top_logprobs=4))
    for row in _lines(out):
        tokens = [entry["token"] for entry in row["logprobs"]]
        assert " ".join(tokens) == row["answer"]
        assert all(len(entry["top_logprobs"]) == 4 for entry in row["logprobs"])


def test_cot_adds_the_instruction_but_records_the_original_prompt(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    out = tmp_path / "data.jsonl"
    harvest(_prompts(1), out, _config(mock_openai, cot=True))
    (row,) = _lines(out)
    sent = next(iter(mock_openai.behaviour.calls))
    assert sent.endswith(COT_INSTRUCTION) and row["prompt"] == "question number 0"
    assert row["cot"] is True


def test_429_with_retry_after_is_honoured_and_500s_retried(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    behaviour = mock_openai.behaviour
    behaviour.retry_after = "0.3"
    behaviour.failures = {"number 1": [429, 429], "number 2": [500, 502, 503]}
    out = tmp_path / "data.jsonl"
    # Exponential backoff alone would wait at most 0.05 s; the 0.3 s gaps come from Retry-After.
    result = harvest(_prompts(4), out, _config(mock_openai, concurrency=2))
    assert result.complete and result.retries == 5
    assert behaviour.calls["question number 1"] == 3 and behaviour.calls["question number 2"] == 4
    assert len(behaviour.retry_gaps) == 2 and min(behaviour.retry_gaps) >= 0.25
    assert len(_lines(out)) == 4


def test_giving_up_keeps_what_was_harvested_and_a_rerun_finishes(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    mock_openai.behaviour.failures = {"number 3": [429] * 10}
    out = tmp_path / "data.jsonl"
    prompts = _prompts(6)
    with pytest.raises(RateLimited, match="resume"):
        harvest(prompts, out, _config(mock_openai, concurrency=1, max_retries=2))
    kept = {row["id"] for row in _lines(out)}
    assert prompts[0].id in kept and prompts[3].id not in kept
    mock_openai.behaviour.failures = {}
    result = harvest(prompts, out, _config(mock_openai, concurrency=3))
    assert result.complete and result.already_done == len(kept)
    ids = [row["id"] for row in _lines(out)]
    assert len(ids) == len(set(ids)) == 6


def test_invalid_prompts_are_recorded_as_failed_and_skipped_by_reruns(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    """Issue #16 item 12: a 400 is the server's permanent answer, not a transient failure."""
    from distillguard.distill.harvest import rejected_path

    prompts = [*_prompts(3), Prompt("bad", "INVALID prompt")]
    out = tmp_path / "d.jsonl"
    result = harvest(prompts, out, _config(mock_openai))
    assert result.written == 3 and result.failed == 1 and result.failed_ids == ("bad",)
    assert result.complete  # every prompt has its answer or its recorded refusal
    [rejected] = _lines(rejected_path(out))
    assert rejected["id"] == "bad" and rejected["status"] == 400 and rejected["error"]
    assert mock_openai.behaviour.calls["INVALID prompt"] == 1  # permanent: not retried
    again = harvest(prompts, out, _config(mock_openai))
    assert again.complete and again.previously_rejected == 1 and again.failed == 0
    assert mock_openai.behaviour.calls["INVALID prompt"] == 1  # nor asked again by the rerun


def test_wrong_key_and_unreachable_server_give_clear_errors(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    bad_key = HarvestConfig(base_url=mock_openai.base_url, api_key="sk-wrong")
    with pytest.raises(AuthError, match="401"):
        harvest(_prompts(1), tmp_path / "a.jsonl", bad_key)
    with pytest.raises(AuthError):
        harvest(
            _prompts(1),
            tmp_path / "b.jsonl",
            HarvestConfig(base_url=mock_openai.base_url, api_key="sk-wrong", model="mock-teacher"),
        )
    dead = HarvestConfig(
        base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=1, backoff_base_s=0.01
    )
    with pytest.raises(UpstreamError, match=r"cannot reach"):
        harvest(_prompts(1), tmp_path / "c.jsonl", dead)


def test_config_validation() -> None:
    with pytest.raises(InputError):
        HarvestConfig(base_url="ftp://x", api_key="k")
    with pytest.raises(InputError):
        HarvestConfig(base_url="http://x", api_key="k", concurrency=0)
    with pytest.raises(InputError):
        HarvestConfig(base_url="http://x", api_key="k", top_logprobs=50)


def test_read_prompts_jsonl_field_chooser_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"question": "a?"}\n'
        "not json\n"
        '{"question": ""}\n'
        '{"other": "x"}\n'
        '{"question": "b?"}\n'
        '{"question": "a?"}\n'
        "[1, 2]\n"
    )
    result = read_prompts(path, field="question")
    assert [p.text for p in result.prompts] == ["a?", "b?"]
    assert result.bad_lines == 4 and result.bad_line_numbers == (2, 3, 4, 7)
    assert result.duplicates == 1
    with pytest.raises(InputError, match="no usable prompt"):
        read_prompts(path, field="missing")


def test_read_prompts_plain_text_and_real_prompts(tmp_path: Path, shared_data: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\nsecond prompt\n")
    assert [p.text for p in read_prompts(path).prompts] == ["first prompt", "second prompt"]
    real = read_prompts(shared_data / "prompts" / "honest.jsonl")
    assert len(real.prompts) > 900 and real.bad_lines == 0
    with pytest.raises(NotFound):
        read_prompts(tmp_path / "missing.txt")


def test_writer_truncates_a_half_written_last_line_and_refuses_foreign_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.jsonl"
    record = HarvestRecord("a", "p", "ans", "stop", "m", False, {"completion_tokens": 1})
    with DatasetWriter(path) as writer:
        writer.append(record)
        writer.append(record)  # same id: never written twice
    with path.open("a") as handle:
        handle.write('{"id": "b", "prompt": "half a rec')
    writer = DatasetWriter(path)
    assert writer.done_ids == {"a"} and writer.truncated_bytes > 0
    writer.close()
    assert [r.id for r in read_dataset(path)] == ["a"]
    foreign = tmp_path / "f.jsonl"
    foreign.write_text('{"x": 1}\n{"id": "a"}\n')
    with pytest.raises(InputError, match="line 1"):
        DatasetWriter(foreign)


def test_harvest_survives_sigkill_and_resumes_without_duplicates_or_losses(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    """A real `distillguard distill harvest` process is SIGKILLed mid-run, then resumed."""
    mock_openai.behaviour.delay_s = 0.05
    prompts_file = tmp_path / "prompts.txt"
    texts = [f"prompt {i} about something" for i in range(80)]
    prompts_file.write_text("\n".join(texts) + "\n")
    out = tmp_path / "data.jsonl"
    command = [
        sys.executable,
        "-m",
        "distillguard",
        "distill",
        "harvest",
        "--base-url",
        mock_openai.base_url,
        "--api-key",
        API_KEY,
        "--prompts",
        str(prompts_file),
        "--out",
        str(out),
        "--concurrency",
        "4",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_bytes().splitlines()) >= 15:
            break
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    partial = len(out.read_bytes().splitlines())
    assert 15 <= partial < len(texts), "the kill must land mid-run"

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    rows = _lines(out)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == len(texts)
    assert {row["prompt"] for row in rows} == set(texts)
    assert all(row["answer"] == mock_answer(row["prompt"]) for row in rows)
