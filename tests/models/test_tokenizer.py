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


# ---- ChunkEncoder: the same ids as the tokenizer, through a cache of chunks ----------------

TRICKY = [
    "",
    " ",
    "word",
    "  two  spaces  and trailing  ",
    "tabs\tand\nnew\n\nlines\r\n  indented\n",
    "unicode spaces: a\u00a0b\u2009c\u3000d\u2028e \u200bzero-width",
    "separators \x1c\x1d! punct!\x1c next",  # Python's \s, not the pre-tokenizer's
    "contractions: don't, I'm, we'll, they've, she'd, it's",
    "digits 1234567 3.14 and symbols $%& -> => ...",
    "emoji 🦙🔥 and 日本語 and café naïve",
    f"special tokens {END} inside{PAD} text {USER}\n",
    "!!!   ???\n\n\n   ",
]


def _real_answers(limit: int) -> list[str]:
    import json

    from tests.conftest import SHARED_DATA

    texts: list[str] = []
    for path in sorted((SHARED_DATA / "outputs").glob("*.jsonl")):
        with path.open() as f:
            texts += [json.loads(line)["output"] for line in f][: limit // 4]
    return texts


def test_chunk_encoder_gives_exactly_the_tokenizers_ids() -> None:
    """Property: on real answers (when the data is there), tricky strings, and random
    concatenations of their pieces, ChunkEncoder's ids equal the tokenizer's batch call,
    cold and with a warm cache, also when the cache overflows."""
    import random

    import numpy as np

    from distillguard.models.tokenizer import ChunkEncoder, chunk_cache_exact

    real = _real_answers(400)
    tok = train_tokenizer((real or CORPUS) + TRICKY, vocab_size=400)
    assert chunk_cache_exact(tok)
    rng = random.Random(0)
    pieces = [p for t in TRICKY + real[:50] for p in t.split(" ")] + ["\n", " ", "  ", "\t"]
    mixed = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    texts = real + TRICKY + mixed
    want = tok(texts, add_special_tokens=False)["input_ids"]
    for enc in (ChunkEncoder(tok), ChunkEncoder(tok, max_chunks=64)):
        for _ in range(2):  # cold, then warm
            got = enc.encode(texts)
            assert len(got) == len(texts)
            for text, g, w in zip(texts, got, want, strict=True):
                assert g.dtype == np.int64
                assert g.tolist() == list(w), text


def test_chunk_encoder_falls_back_when_chunks_are_not_independent() -> None:
    """A tokenizer whose pre-tokenizer adds a prefix space is called directly (and the ids
    still match); non-strings are a clear error."""
    from tokenizers import pre_tokenizers

    from distillguard.models.tokenizer import ChunkEncoder, chunk_cache_exact

    tok = train_tokenizer(CORPUS, vocab_size=300)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert not chunk_cache_exact(tok)
    enc = ChunkEncoder(tok)
    texts = ["hello world", "  x  "]
    want = tok(texts, add_special_tokens=False)["input_ids"]
    assert [g.tolist() for g in enc.encode(texts)] == want
    with pytest.raises(InputError):
        enc.encode(["ok", 3])  # type: ignore[list-item]
