"""Byte-level BPE tokenizer with a chat template, trained from scratch with HF ``tokenizers``.

Byte-level BPE never meets an unknown character (every byte is in the base alphabet), so any
prompt a client sends encodes. Chat structure is carried by special tokens, one per role plus
``<|end|>`` closing each message; ``<|end|>`` is also the end-of-sequence token, so the model
learns to stop an answer by emitting it:

    <|user|>\\nWhat is 2+2?<|end|>\\n<|assistant|>\\n4<|end|>\\n
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np

from distillguard.errors import InputError, ModelError

END = "<|end|>"  # closes every message; the end-of-sequence token
PAD = "<|pad|>"  # left padding in batches; never trained on
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (END, PAD, SYSTEM, USER, ASSISTANT)
ROLES: tuple[str, ...] = ("system", "user", "assistant")

# Jinja chat template stored in tokenizer_config.json, so `apply_chat_template` works for anyone
# who loads the directory with AutoTokenizer, not only through this package.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus our special tokens


def format_chat_pair(instruction: str, output: str) -> str:
    """One (instruction, answer) pair as the text the model is trained on (template + eos)."""
    return f"{USER}\n{instruction}{END}\n{ASSISTANT}\n{output}{END}\n"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int) -> Any:
    """Train a byte-level BPE on ``texts``; return a ``PreTrainedTokenizerFast`` with the chat
    template, ``<|end|>`` as eos and ``<|pad|>`` as padding (left side, for batched decoding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise InputError(f"vocab_size must be at least {MIN_VOCAB} (bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise InputError("cannot train a tokenizer on an empty corpus")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Any) -> Any:
    """Wrap a raw ``tokenizers.Tokenizer`` as a transformers tokenizer with our conventions."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def validate_messages(messages: Sequence[dict]) -> None:
    """Reject malformed chat messages with an InputError naming the problem."""
    if not messages:
        raise InputError("messages must not be empty", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InputError(f"messages[{i}] must be an object", param="messages")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise InputError(f"messages[{i}].role must be a non-empty string", param="messages")
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content must be a string", param="messages")


def encode_chat(
    tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template (with the assistant header
    appended when ``add_generation_prompt``). Tokenizers without a template fall back to ours
    rendered as text, so every HF model directory can serve chat requests."""
    validate_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=add_generation_prompt,
                tokenize=True,
                return_dict=False,
            )
        except Exception as exc:  # a template may reject roles it does not know
            raise InputError(f"the model's chat template rejected the messages: {exc}") from exc
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in some versions
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = "".join(f"<|{m['role']}|>\n{m['content']}{END}\n" for m in messages)
    if add_generation_prompt:
        text += f"{ASSISTANT}\n"
    return encode_text(tokenizer, text)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Plain token ids of ``text`` (no special tokens added)."""
    if not isinstance(text, str):
        raise InputError("prompt must be a string")
    return list(tokenizer.encode(text, add_special_tokens=False))


def eos_token_ids(tokenizer: Any, model_config: Any = None) -> frozenset[int]:
    """Every id that ends a generation: the tokenizer's eos plus the model config's eos ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    cfg_eos = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif isinstance(cfg_eos, (list, tuple)):
        ids.update(int(i) for i in cfg_eos)
    if not ids:
        raise ModelError("the tokenizer has no end-of-sequence token; cannot end generations")
    return frozenset(ids)


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-level map (byte -> character) that byte-level BPE vocabularies are written
    in: printable bytes stand for themselves, the rest shift to 256+. Reversible."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    for n, b in enumerate(shifted):
        mapping[b] = chr(256 + n)
    return mapping


# ---- many texts at once, fast: a cache of whitespace-delimited chunks ----------------------
# Unicode White_Space, what the byte-level pre-tokenizer's regex calls \s (Python's \s also
# takes \x1c-\x1f, which the pre-tokenizer treats as punctuation: not a safe cut there).
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CHUNKS = re.compile(f"[{_WS}]*[^{_WS}]+|[{_WS}]+")
_WS_CHARS = re.compile(f"[{_WS}]")


def chunk_cache_exact(tokenizer: Any) -> bool:
    """Whether ``ChunkEncoder`` gives exactly this tokenizer's ids.

    True for a byte-level BPE whose pre-tokenizer is GPT-2's regex without a prefix space and
    no normalizer (ours, GPT-2's, Llama 3's style): that regex never matches across the start
    of a whitespace run that follows a non-whitespace character (no pattern takes whitespace
    after other characters, and nothing looks behind), so such positions cut the text into
    chunks that are tokenized independently; added tokens must contain no whitespace and not
    strip it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        spec = json.loads(backend.to_str())
    except (ValueError, AttributeError):
        return False
    pre = spec.get("pre_tokenizer") or {}
    model = spec.get("model") or {}
    if spec.get("normalizer") is not None or model.get("type") != "BPE" or model.get("dropout"):
        return False
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex"):
        return False
    return all(
        not (t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
        and not _WS_CHARS.search(t.get("content", ""))
        for t in spec.get("added_tokens") or []
    )


class ChunkEncoder:
    """Token ids of many texts, the same as ``tokenizer(texts, add_special_tokens=False)``,
    several times faster on real text: texts are cut into whitespace-led chunks (one regex
    pass in C), each distinct chunk is tokenized once (one batch call into the Rust
    tokenizer) and kept in a bounded table, and the ids of a whole batch are gathered from
    that table with numpy (no Encoding objects, no per-token Python). Text repeats words a
    lot: the 10k real answers (3.9M tokens) have ~130k distinct chunks. Tokenizers for which
    the cut is not exact (``chunk_cache_exact``) are called directly."""

    def __init__(self, tokenizer: Any, *, max_chunks: int = 1 << 18) -> None:
        if max_chunks < 1:
            raise InputError("max_chunks must be positive")
        self.tokenizer = tokenizer
        self.exact = chunk_cache_exact(tokenizer)
        # distinct chunks kept (~150 bytes each with the dict: ~40 MB at 256k; the 10k real
        # answers have 131k); beyond it the cache starts over
        self.max_chunks = max_chunks
        self._lock = threading.Lock()  # a gateway's detector serves several threads
        self._clear()

    def _clear(self) -> None:
        self._index: dict[str, int] = {}  # chunk -> row of the table
        self._starts = np.zeros(0, dtype=np.int64)  # (C,) where each chunk's ids start
        self._lens = np.zeros(0, dtype=np.int64)  # (C,) how many ids it has
        self._table = np.zeros(0, dtype=np.int64)  # every cached chunk's ids, concatenated

    def _add(self, chunks: list[str]) -> None:
        backend = self.tokenizer.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        ids = [e.ids for e in encode(chunks, add_special_tokens=False)]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        base = len(self._index)
        self._index.update(zip(chunks, range(base, base + len(chunks)), strict=True))
        starts = self._table.size + np.cumsum(lens) - lens
        self._starts = np.concatenate([self._starts, starts])
        self._lens = np.concatenate([self._lens, lens])
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
        self._table = np.concatenate([self._table, flat])

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """texts -> one int64 array of token ids per text (no special tokens added)."""
        if not texts:
            return []
        if any(not isinstance(t, str) for t in texts):
            raise InputError("texts must be strings")
        if not self.exact:
            ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
            return [np.asarray(x, dtype=np.int64) for x in ids]
        chunked = [_CHUNKS.findall(t) for t in texts]
        with self._lock:
            return self._gather(chunked, len(texts))

    def _gather(self, chunked: list[list[str]], count: int) -> list[np.ndarray]:
        """The ids of texts cut into chunks, adding unseen chunks to the table first."""
        per_text = np.fromiter(map(len, chunked), dtype=np.int64, count=len(chunked))
        flat = list(chain.from_iterable(chunked))  # (N,) chunk strings
        rows = np.fromiter(map(self._index.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        if (rows < 0).any():
            new = list(dict.fromkeys(flat[i] for i in np.flatnonzero(rows < 0).tolist()))
            if len(self._index) + len(new) > self.max_chunks:
                self._clear()
                new = list(dict.fromkeys(flat))
            self._add(new)
            rows = np.fromiter(map(self._index.__getitem__, flat), dtype=np.int64, count=len(flat))
        lens = self._lens[rows]  # (N,) ids per chunk occurrence
        pos = np.repeat(self._starts[rows] - (np.cumsum(lens) - lens), lens)
        ids = self._table[pos + np.arange(pos.size)]  # (L,) the whole batch's ids
        text_of = np.repeat(np.arange(count), per_text)  # (N,) text of each chunk
        counts = np.bincount(text_of, weights=lens, minlength=count).astype(np.int64)
        return np.split(ids, np.cumsum(counts)[:-1])
