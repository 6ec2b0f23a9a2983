"""`distillguard distill train | eval | harvest` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.distill.harvest import LocalHarvestParams, harvest_local
from distillguard.errors import InputError, ModelError, NotFound

from .conftest import API_KEY, MockServer

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distillguard.models.engine import GenerationEngine

    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1)
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(24)]
    out = tmp_path_factory.mktemp("data") / "teacher.jsonl"
    harvest_local(engine, prompts, LocalHarvestParams(max_new_tokens=16, top_logprobs=3), out=out)
    return out


def test_train_then_eval_from_the_command_line(
    dataset: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student"
    trained = runner.invoke(
        app,
        [
            "distill",
            "train",
            "--data",
            str(dataset),
            "--teacher",
            str(tiny_model_dir),
            "--mode",
            "topk-kd",
            "--out",
            str(out),
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            "--no-progress",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "topk-kd" in trained.output and (out / "config.json").is_file()
    evaluated = runner.invoke(
        app,
        [
            "distill",
            "eval",
            "--student",
            str(out),
            "--teacher",
            str(tiny_model_dir),
            "--data",
            str(dataset),
            "--samples",
            "6",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "top-1 agreement" in evaluated.output and "student" in evaluated.output


def test_bad_arguments_raise_clear_errors(dataset: Path, tmp_path: Path) -> None:
    bad_mode = runner.invoke(
        app, ["distill", "train", "--data", str(dataset), "--mode", "x", "--out", str(tmp_path)]
    )
    assert isinstance(bad_mode.exception, InputError)
    missing = runner.invoke(
        app, ["distill", "train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]
    )
    assert isinstance(missing.exception, NotFound)
    not_a_model = runner.invoke(
        app, ["distill", "eval", "--student", str(tmp_path), "--teacher", str(tmp_path)]
    )
    assert isinstance(not_a_model.exception, ModelError)


def test_harvest_command_reports_bad_prompt_lines(mock_openai: MockServer, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n{broken\n{"prompt": "two"}\n')
    out = tmp_path / "d.jsonl"
    result = runner.invoke(
        app,
        [
            "distill",
            "harvest",
            "--base-url",
            mock_openai.base_url,
            "--api-key",
            API_KEY,
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--logprobs",
            "2",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 bad prompt lines" in result.output and "2 new" in result.output
    assert len([json.loads(line) for line in out.read_text().splitlines()]) == 2


def test_harvest_reruns_exit_zero_after_the_server_rejects_a_prompt(
    mock_openai: MockServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n{"prompt": "INVALID two"}\n')
    out = tmp_path / "d.jsonl"
    command = [
        "distill",
        "harvest",
        "--base-url",
        mock_openai.base_url,
        "--api-key",
        API_KEY,
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--no-progress",
    ]
    for _ in range(2):  # before: exit 1 and "rerun to retry", on every rerun
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert "1 prompts rejected" in result.output and "d.rejected.jsonl" in result.output
    assert len(out.read_text().splitlines()) == 1
