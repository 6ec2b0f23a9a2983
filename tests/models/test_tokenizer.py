"""Tokenizer: byte-level round trip, chat template, special tokens, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.errors import InputError
from distillguard.models.tokenizer import (
    ASSISTANT,
    END,
    PAD,
    USER,
    encode_chat,
    encode_text,
    format_chat_pair,
    train_tokenizer,
)

CORPUS = [
    format_chat_pair("What is the capital of France?", "The capital of France is Paris."),
    format_chat_pair("Name three colors.", "Red, green and blue are three colors."),
    "Plain text also trains the tokenizer, with numbers like 1234 and symbols like $%&.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        "  leading and trailing  ",
        "tabs\tand\nnewlines\r\n",
        "unicode: café, naïve, 日本語, emoji 🦙🔥, math ∑∫",
        "",
        "<|user|> typed by a user",
    ],
)
def test_round_trip_is_exact_for_any_text(tokenizer, text: str) -> None:
    assert tokenizer.decode(encode_text(tokenizer, text)) == text


def test_special_tokens_are_single_ids_and_eos_is_end(tokenizer) -> None:
    for token in (END, PAD, USER, ASSISTANT):
        ids = encode_text(tokenizer, token)
        assert len(ids) == 1
    assert tokenizer.eos_token == END
    assert tokenizer.pad_token == PAD
    assert tokenizer.padding_side == "left"
    assert len(tokenizer) == 300


def test_chat_template_renders_roles_and_generation_prompt(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    ids = encode_chat(tokenizer, messages)
    assert tokenizer.decode(ids) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\n"
    )
    without = encode_chat(tokenizer, messages, add_generation_prompt=False)
    assert ids[: len(without)] == without
    assert tokenizer.decode(ids[len(without) :]) == "<|assistant|>\n"


def test_saved_tokenizer_reloads_with_autotokenizer(tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert encode_chat(reloaded, messages) == encode_chat(tokenizer, messages)
    assert reloaded.eos_token == END


def test_bad_input_is_rejected_clearly(tokenizer) -> None:
    with pytest.raises(InputError, match="empty"):
        encode_chat(tokenizer, [])
    with pytest.raises(InputError, match="content"):
        encode_chat(tokenizer, [{"role": "user", "content": 3}])
    with pytest.raises(InputError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(InputError, match="empty corpus"):
        train_tokenizer(["", "   "], vocab_size=300)
