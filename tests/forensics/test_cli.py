"""The prove CLI: attribute, radioactivity and report end to end, and their bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.config import get_settings
from distillguard.errors import InputError, ModelError

runner = CliRunner()


def _write(path: Path, answers: dict[str, str]) -> None:
    path.write_text(
        "".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in answers.items())
    )


def _candidates(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    rng = np.random.default_rng(0)
    cdir = tmp_path / "cands"
    cdir.mkdir()
    models = {}
    for c in range(6):
        style = [f"habit{c}x{j}" for j in range(20)]
        models[f"model{c}"] = {
            f"question {i}": " ".join(
                [*rng.choice([f"t{i}w{j}" for j in range(12)], 10), *rng.choice(style, 8)]
            )
            for i in range(60)
        }
        _write(cdir / f"model{c}.jsonl", models[f"model{c}"])
    return cdir, models


def test_attribute_cli_names_the_teacher_and_writes_json(tmp_path: Path) -> None:
    cdir, models = _candidates(tmp_path)
    rng = np.random.default_rng(1)
    student = {
        q: " ".join(w if rng.random() > 0.4 else "noise" for w in a.split())
        for q, a in models["model3"].items()
    }
    _write(tmp_path / "student.jsonl", student)
    out = tmp_path / "attr.json"
    result = runner.invoke(
        app,
        [
            "prove",
            "attribute",
            "--suspect",
            str(tmp_path / "student.jsonl"),
            "--candidates",
            str(cdir),
            "--out",
            str(out),
            "--min-prompts",
            "40",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verdict: model3" in result.output
    data = json.loads(out.read_text())
    assert data["test"] == "attribution" and data["verdict"] == "model3"
    assert data["command"].startswith("distillguard prove attribute")


def test_attribute_cli_refuses_too_few_answers(tmp_path: Path) -> None:
    cdir, _ = _candidates(tmp_path)
    _write(tmp_path / "s.jsonl", {f"another prompt {i}": "x" for i in range(12)})
    result = runner.invoke(
        app,
        ["prove", "attribute", "--suspect", str(tmp_path / "s.jsonl"), "--candidates", str(cdir)],
    )
    assert isinstance(result.exception, InputError)
    assert "the suspect has 12 answers; need >= 50" in result.exception.message


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_SECRET", "cli-test-secret-0123456789abcdef")
    get_settings.cache_clear()


def _harvest(path: Path, data: Path, count: int = 120) -> Path:
    """Real answers (gpt4's alpaca_eval outputs) in the harvest format."""
    lines = (data / "outputs" / "gpt4.jsonl").read_text().splitlines()[:count]
    with path.open("w") as fh:
        for i, line in enumerate(lines):
            row = json.loads(line)
            fh.write(
                json.dumps(
                    {
                        "id": f"p{i}",
                        "prompt": row["instruction"][:200],
                        "answer": row["output"][:600],
                    }
                )
                + "\n"
            )
    return path


def test_radioactivity_cli_clean_model_not_flagged_then_report(
    tmp_path: Path, tiny_model_dir: Path, secret: None, shared_data: Path
) -> None:
    harvest = _harvest(tmp_path / "harvest.jsonl", shared_data)
    out = tmp_path / "rad.json"
    result = runner.invoke(
        app,
        [
            "prove",
            "radioactivity",
            "--suspect",
            str(tiny_model_dir),
            "--harvest",
            str(harvest),
            "--tokenizer",
            str(tiny_model_dir),
            "--random-keys",
            "10",
            "--out",
            str(out),
        ],
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    data = json.loads(out.read_text())
    assert data["test"] == "radioactivity" and data["mode"] == "open-weights"
    assert all(t["log10_p_value"] > -3 for t in data["tests"])  # never trained on our answers
    assert all(len(t["null_log10_p"]) == 10 for t in data["tests"])

    report = tmp_path / "report" / "evidence.html"
    result = runner.invoke(app, ["prove", "report", "--evidence", str(out), "--out", str(report)])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert "data:image/png;base64," in page and "No test reached" in page
    assert "<link" not in page and "<script src" not in page  # self-contained
    assert json.loads(report.with_suffix(".json").read_text())["evidence"][0]["test"] == (
        "radioactivity"
    )


def test_radioactivity_cli_bad_inputs(
    tmp_path: Path, tiny_model_dir: Path, secret: None, shared_data: Path
) -> None:
    harvest = _harvest(tmp_path / "harvest.jsonl", shared_data, count=5)
    not_model = tmp_path / "not-a-model"
    not_model.mkdir()
    result = runner.invoke(
        app,
        [
            "prove",
            "radioactivity",
            "--suspect",
            str(not_model),
            "--harvest",
            str(harvest),
            "--tokenizer",
            str(tiny_model_dir),
        ],
    )
    assert isinstance(result.exception, ModelError)
    result = runner.invoke(
        app,
        [
            "prove",
            "radioactivity",
            "--suspect",
            str(tiny_model_dir),
            "--suspect-url",
            "http://127.0.0.1:9/v1",
            "--tokenizer",
            str(tiny_model_dir),
        ],
    )
    assert isinstance(result.exception, InputError)


def test_report_refuses_non_evidence(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text(json.dumps({"hello": 1}))
    result = runner.invoke(
        app, ["prove", "report", "--evidence", str(bogus), "--out", str(tmp_path / "r.html")]
    )
    assert isinstance(result.exception, InputError)
    assert not (tmp_path / "r.html").exists()


def test_radioactivity_cli_api_mode_resumes(
    tmp_path: Path, tiny_model_dir: Path, secret: None, shared_data: Path
) -> None:
    """API-only mode through the CLI: the server dies midway, the rerun resumes from the
    answers checkpoint and the test runs on all of them."""
    from .test_radioactivity import _FlakyServer

    answers = [
        json.loads(line)["output"][:500]
        for line in (shared_data / "outputs" / "gpt4.jsonl").read_text().splitlines()[:60]
    ]
    server = _FlakyServer(answers, die_after=20)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"question number {i}\n" for i in range(60)))
    args = [
        "prove",
        "radioactivity",
        "--suspect-url",
        server.url,
        "--api-key",
        "k",
        "--model",
        "suspect",
        "--prompts",
        str(prompts),
        "--tokenizer",
        str(tiny_model_dir),
        "--cache",
        str(tmp_path / "cache.jsonl"),
        "--random-keys",
        "5",
        "--max-retries",
        "1",
        "--out",
        str(tmp_path / "api.json"),
    ]
    first = runner.invoke(app, args)
    assert first.exception is not None and "resume" in str(first.exception)
    assert 15 <= (tmp_path / "cache.jsonl").read_text().count("\n") < 60
    server.revive()
    second = runner.invoke(app, args)
    if second.exception is not None and not isinstance(second.exception, SystemExit):
        raise second.exception
    data = json.loads((tmp_path / "api.json").read_text())
    assert data["mode"] == "api" and data["texts"] == 60
    assert data["tests"][0]["test"] == "text-binomial"
    assert data["tests"][0]["log10_p_value"] > -3  # gpt4 never saw our key
    assert "k" not in data["command"].split("--api-key")[-1][:3]  # the key is not recorded
