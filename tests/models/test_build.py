"""Building, saving and loading Llama models; corpora; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distillguard.errors import ConfigError, InputError, ModelError, NotFound
from distillguard.models.llama import (
    SIZES,
    TrainConfig,
    _eval_windows,
    build_model,
    held_out_loss,
    load_model,
    new_model,
    read_build_info,
)
from distillguard.models.teacher import FALLBACK_TEXT, read_chat_pairs, read_corpus
from distillguard.models.tokenizer import END, format_chat_pair


def test_tiny_model_loads_with_auto_classes(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tokenizer.eos_token == END and model.config.eos_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    info = read_build_info(tiny_model_dir)
    assert info["size"] == "tiny" and info["held_out_loss"] > 0


def test_training_lowers_held_out_loss(tiny_model_dir: Path, shared_data: Path) -> None:
    """The trained model beats an untrained one of the same shape on pairs it never saw."""
    trained, tokenizer = load_model(tiny_model_dir)
    unseen = read_chat_pairs(shared_data)[1::16][:40]  # the fixture trains on [::16]
    ids = tokenizer.backend_tokenizer.encode("".join(format_chat_pair(q, a) for q, a in unseen))
    windows = _eval_windows(torch.tensor(ids.ids), 128, 16)
    untrained = new_model(SIZES["tiny"], tokenizer, seed=1)
    loss_trained = held_out_loss(trained, windows)
    loss_untrained = held_out_loss(untrained, windows)
    assert loss_untrained > 6.0  # about ln(1024): uniform guessing
    assert loss_trained < loss_untrained - 1.0


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    texts = FALLBACK_TEXT.split("\n\n") * 4
    config = TrainConfig(size="tiny", max_steps=5, seq_len=32, seed=7)
    a = build_model(out_dir=tmp_path / "a", config=config, texts=texts, progress=False)
    b = build_model(
        out_dir=tmp_path / "b",
        config=config,
        texts=texts,
        progress=False,
        tokenizer_dir=tmp_path / "a",
    )
    assert a.held_out_loss == b.held_out_loss
    wa, _ = load_model(a.out_dir)
    wb, _ = load_model(b.out_dir)
    for pa, pb in zip(wa.parameters(), wb.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not list(tmp_path.glob(".*tmp*"))  # no half-built directories left behind


def test_load_model_rejects_what_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load"):
        load_model(tmp_path)


def test_train_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="unknown model size"):
        TrainConfig(size="huge")
    with pytest.raises(ConfigError):
        TrainConfig(max_steps=0)
    with pytest.raises(ConfigError):
        TrainConfig(size="tiny", seq_len=10_000)
    with pytest.raises(InputError, match="empty"):
        build_model(out_dir=Path("unused"), config=TrainConfig(), texts=["  "], progress=False)


def test_read_corpus_counts_bad_lines(tmp_path: Path) -> None:
    jsonl = tmp_path / "pairs.jsonl"
    good = {"instruction": "Say hi", "output": "Hi!"}
    jsonl.write_text(
        "\n".join(
            [
                json.dumps(good),
                "{broken",
                json.dumps({"output": "no prompt"}),
                json.dumps({"question": "2+2?", "answer": "4"}),
                "[1, 2]",
            ]
        )
    )
    text = tmp_path / "book.txt"
    text.write_text("First paragraph.\n\nSecond paragraph.\n\n\n")
    corpus = read_corpus([jsonl, text])
    assert corpus.chat_pairs == [("Say hi", "Hi!"), ("2+2?", "4")]
    assert corpus.texts == ["First paragraph.", "Second paragraph."]
    assert corpus.skipped_lines == 3
    assert corpus.first_skipped == ["pairs.jsonl:2", "pairs.jsonl:3", "pairs.jsonl:5"]
    with pytest.raises(NotFound):
        read_corpus([tmp_path / "nope.txt"])


def test_cli_build_and_info(tmp_path: Path) -> None:
    from distillguard.cli import app

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(FALLBACK_TEXT)
    out = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "model",
            "build",
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--size",
            "tiny",
            "--max-steps",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "held-out loss" in result.output
    result = runner.invoke(app, ["model", "info", str(out)])
    assert result.exit_code == 0 and "LlamaForCausalLM" in result.output
    result = runner.invoke(app, ["model", "info", str(tmp_path)])
    assert isinstance(result.exception, ModelError)


def test_default_teacher_is_built_once_and_cached(
    tmp_path: Path, dg_home: Path, shared_data: Path
) -> None:
    from distillguard.config import Settings
    from distillguard.models.teacher import default_teacher_dir

    data = tmp_path / "data"
    (data / "outputs").mkdir(parents=True)
    lines = [
        json.dumps({"instruction": q, "output": a}) for q, a in read_chat_pairs(shared_data)[:60]
    ]
    (data / "outputs" / "some-model.jsonl").write_text("\n".join(lines))
    settings = Settings(home=dg_home, data_dir=data)
    target = default_teacher_dir(settings, size="tiny", progress=False)
    assert target == dg_home / "models" / "teacher-tiny"
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert default_teacher_dir(settings, size="tiny", progress=False) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    load_model(target)
    with pytest.raises(NotFound, match="outputs"):
        default_teacher_dir(
            Settings(home=tmp_path / "other", data_dir=tmp_path / "none"),
            size="tiny",
            progress=False,
        )
