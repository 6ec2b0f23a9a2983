"""The per-request features of ``monitor.signals`` computed for a whole batch of log rows at once.

``signals.request_features`` is the one definition of what a request says (its text, chain-of-
thought, greedy/harvest/stream flags, frame shingles, topic, end user, shape); the end user and
the shape are a few dict reads per row, taken by the reference functions themselves
(``signals._end_user``, ``signals.request_shape``); for the rest this module computes exactly the
same values column-wise, so that the engines spend their per-row Python time on the account
sketch (the order-sensitive part) and not on text processing:

- the request JSON is parsed once per row (``orjson``) and the text taken by
  ``traffic.prompt_text`` (the same function);
- chain-of-thought: ``signals.COT_PATTERN`` and ``signals._COT_HINTS`` run as Arrow (RE2)
  kernels over the lower-cased windows;
- language (``batch_languages``, for the rows whose language the sketch reads): function-word
  votes over Arrow's split, counted with ``np.bincount``;
- topic: the prompts' tails mapped byte-wise (numpy) to lower-case letters and spaces, split by
  Arrow, looked up in the lexicon (``index_in``) and counted per row with ``np.bincount``;
- frame shingles: the words split as bytes (for such text ``bytes.split`` is ``str.split``) and
  ``zlib.crc32`` of each joined n-gram, no per-n-gram encode; each row's set is built in
  n-gram order, as ``frame_shingles`` builds it, so the tuple (and the order the template
  table sees the shingles in) is the same. (An Arrow/numpy CRC-32 over the n-grams' bytes was
  measured slower than this.)

The fast path holds for ASCII text without the ASCII separators ``\\x1c``-``\\x1f`` (Python's
``str.split`` splits on them, Arrow's and ``bytes.split`` do not); any other row, and any
pattern RE2 cannot compile, goes through ``request_features`` itself.
``tests/monitor/test_vectorized.py`` compares both on random requests (unicode, separators,
long and empty texts, odd shapes).

``decode_rows`` reads the log's rows column-wise: a row that fails a cheap check goes through
``TrafficRecord.from_dict`` (``records_from_table``), so a corrupt value raises the same
``InputError`` naming the exchange. ``engines.fold`` folds the rows into account sketches.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.columnar import records_from_table
from distillguard.monitor import language as lang
from distillguard.monitor import signals as sig
from distillguard.monitor.signals import (
    RequestFeatures,
    SignalConfig,
    request_features,
)
from distillguard.monitor.topics import TOPICS, WORD_TOPIC
from distillguard.traffic import prompt_text


@dataclass(frozen=True)
class BatchFeatures:
    """``RequestFeatures`` of n requests, as columns."""

    text: list[str]  # (n,)
    cot: np.ndarray  # (n,) bool
    greedy: np.ndarray  # (n,) bool
    harvest: np.ndarray  # (n,) bool
    stream: np.ndarray  # (n,) bool
    samples: np.ndarray  # (n,) int64
    shingles: list[tuple[int, ...]]  # (n,)
    topic: np.ndarray  # (n,) int64, -1 none
    model: list[str]  # (n,)
    user: list[str]  # (n,) end user ("" none)
    shape: np.ndarray  # (n,) int64, signals.request_shape

    def row(self, i: int) -> RequestFeatures:
        return RequestFeatures(
            text=self.text[i],
            cot=bool(self.cot[i]),
            greedy=bool(self.greedy[i]),
            harvest=bool(self.harvest[i]),
            stream=bool(self.stream[i]),
            shingles=self.shingles[i],
            samples=int(self.samples[i]),
            topic=int(self.topic[i]),
            model=self.model[i],
            user=self.user[i],
            shape=int(self.shape[i]),
        )


_SEPARATORS = "[\x1c-\x1f]"  # whitespace to str.split, not to bytes.split or Arrow's split
_LEXICON = pa.array(list(WORD_TOPIC), pa.string())
_LEXICON_TOPIC = np.array(list(WORD_TOPIC.values()), dtype=np.int64)
# Byte map of ``[a-z]`` after lower-casing (ASCII): letters to lower case, anything else to a
# space, so that a whitespace split yields exactly ``topics._WORD``'s runs of letters.
_LETTERS = np.full(256, ord(" "), dtype=np.uint8)
_LETTERS[ord("a") : ord("z") + 1] = np.arange(ord("a"), ord("z") + 1, dtype=np.uint8)
_LETTERS[ord("A") : ord("Z") + 1] = np.arange(ord("a"), ord("z") + 1, dtype=np.uint8)
_RE2_OK: dict[str, bool] = {}


def _re2_compiles(pattern: str) -> bool:
    ok = _RE2_OK.get(pattern)
    if ok is None:
        try:
            pc.match_substring_regex(pa.array(["x"]), pattern)
            ok = True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ok = False
        _RE2_OK[pattern] = ok
    return ok


def _ok(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _frame_shingles_ascii(text: str, fw: int, k: int) -> tuple[int, ...]:
    """``frame_shingles`` of an ASCII text without ``\\x1c``-``\\x1f``: the same words (for
    such text ``bytes.split`` is ``str.split``) and the same CRC-32 of the same bytes, with
    no per-n-gram encode."""
    span = fw * 16
    if len(text) <= 2 * span:
        words = text.lower().encode().split()
        if len(words) > 2 * fw:
            words = words[:fw] + words[-fw:]
    else:
        words = text[:span].lower().encode().split()[:fw]
        words += text[-span:].lower().encode().split()[-fw:]
    grams = zip(*(words[i:] for i in range(k)), strict=False)
    return tuple(set(map(zlib.crc32, map(b" ".join, grams))))


def _topics(texts: pa.Array, window: int) -> np.ndarray:
    """``prompt_topic`` of n ASCII texts: (n,) int64 (-1: no lexicon word)."""
    n = len(texts)
    tail = (
        pc.utf8_slice_codeunits(texts, -window).combine_chunks()
        if isinstance(texts, pa.ChunkedArray)
        else pc.utf8_slice_codeunits(texts, -window)
    )
    offsets, data = tail.buffers()[1], tail.buffers()[2]
    letters = _LETTERS[np.frombuffer(data, dtype=np.uint8)] if data is not None else b""
    mapped = pa.StringArray.from_buffers(n, offsets, pa.py_buffer(letters), offset=tail.offset)
    tokens = pc.ascii_split_whitespace(mapped)
    flat = pc.list_flatten(tokens)
    rows = pc.list_parent_indices(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    idx = pc.index_in(flat, value_set=_LEXICON)
    found = _ok(pc.and_(pc.is_valid(idx), pc.greater_equal(pc.binary_length(flat), 3)))
    pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    t = len(TOPICS)
    counts = np.bincount(rows[found] * t + _LEXICON_TOPIC[pos[found]], minlength=n * t)
    counts = counts.reshape(n, t)
    best = counts.argmax(axis=1)  # first of the largest: the lowest topic index on a tie
    return np.where(counts.max(axis=1) > 0, best, -1).astype(np.int64)


def _cot_text(texts: pa.Array) -> np.ndarray:
    """The chain-of-thought phrase test of ``request_features`` on n ASCII texts: (n,) bool."""
    lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    long_ = pa.array(lengths > 1200)
    joined = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(texts, 0, 600), pc.utf8_slice_codeunits(texts, -600), " "
    )
    window = pc.ascii_lower(pc.if_else(long_, joined, texts))
    hints = "|".join(re.escape(h) for h in sig._COT_HINTS)
    hint = _ok(pc.match_substring_regex(window, hints))
    return hint & _ok(pc.match_substring_regex(window, sig.COT_PATTERN.pattern))


_LANG_WORDS = pa.array(list(lang._WORD_LANG), pa.string())
_LANG_OF_WORD = np.array(list(lang._WORD_LANG.values()), dtype=np.int64)


def batch_languages(texts: list[str]) -> np.ndarray:
    """``language.prompt_language`` of each text: (n,) int64. ASCII texts (no script to test)
    vote by their function words with Arrow and ``np.bincount``; others go through
    ``prompt_language`` itself."""
    n = len(texts)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    arr = pa.array(texts, pa.string())
    fast = _ok(
        pc.and_(pc.string_is_ascii(arr), pc.invert(pc.match_substring_regex(arr, _SEPARATORS)))
    )
    fi = np.flatnonzero(fast)
    if len(fi):
        sub = pc.take(arr, pa.array(fi))
        w = lang._WINDOW
        long_ = pa.array(pc.utf8_length(sub).to_numpy(zero_copy_only=False) > 2 * w)
        joined = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(sub, 0, w), pc.utf8_slice_codeunits(sub, -w), " "
        )
        words = pc.ascii_split_whitespace(pc.ascii_lower(pc.if_else(long_, joined, sub)))
        flat = pc.list_flatten(words)
        rows = pc.list_parent_indices(words).to_numpy(zero_copy_only=False).astype(np.int64)
        idx = pc.index_in(flat, value_set=_LANG_WORDS)
        found = _ok(pc.is_valid(idx))
        pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        k = len(lang._FUNCTION_WORDS)
        votes = np.bincount(rows[found] * k + _LANG_OF_WORD[pos[found]], minlength=len(fi) * k)
        votes = votes.reshape(len(fi), k)
        best = votes.argmax(axis=1)  # first of the largest, as max(range, key=...) picks
        out[fi] = np.where(votes.max(axis=1) >= 2, best, -1)
    for i in np.flatnonzero(~fast).tolist():
        out[i] = lang.prompt_language(texts[i])
    return out


def batch_features(requests: list[dict[str, Any]], cfg: SignalConfig) -> BatchFeatures:
    """``request_features(r, cfg)`` for each request, column-wise (see the module docstring)."""
    n = len(requests)
    texts = [prompt_text(r) for r in requests]
    greedy = np.zeros(n, dtype=bool)
    harvest = np.zeros(n, dtype=bool)
    stream = np.zeros(n, dtype=bool)
    reasoning = np.zeros(n, dtype=bool)
    samples = np.ones(n, dtype=np.int64)
    models: list[str] = []
    users: list[str] = []
    shape = np.zeros(n, dtype=np.int64)
    end_user, request_shape = sig._end_user, sig.request_shape
    pattern = cfg.reasoning_models
    for i, r in enumerate(requests):  # the request fields, as request_features reads them
        temp = r.get("temperature")
        greedy[i] = isinstance(temp, int | float) and not isinstance(temp, bool) and temp == 0
        nn = r.get("n")
        many = isinstance(nn, int) and not isinstance(nn, bool) and nn > 1
        harvest[i] = bool(r.get("logprobs")) or bool(r.get("top_logprobs")) or many
        if many and isinstance(nn, int):
            samples[i] = min(nn, 128)
        stream[i] = r.get("stream") is True
        model = r.get("model")
        model = model if isinstance(model, str) else ""
        reasoning[i] = r.get("reasoning_effort") is not None or r.get("reasoning") is not None
        if not reasoning[i] and model:
            reasoning[i] = sig._reasoning_model(pattern, model)
        models.append(model[:64])
        users.append(end_user(r))  # cheap dict reads: the reference functions themselves
        shape[i] = request_shape(r)
    arr = pa.array(texts, pa.string())
    fast = _ok(
        pc.and_(pc.string_is_ascii(arr), pc.invert(pc.match_substring_regex(arr, _SEPARATORS)))
    )
    hints = "|".join(re.escape(h) for h in sig._COT_HINTS)
    if not (_re2_compiles(sig.COT_PATTERN.pattern) and _re2_compiles(hints)):
        fast[:] = False
    cot = np.zeros(n, dtype=bool)
    topic = np.full(n, -1, dtype=np.int64)
    shingles: list[tuple[int, ...]] = [()] * n
    fi = np.flatnonzero(fast)
    if len(fi):
        sub = pc.take(arr, pa.array(fi))
        cot[fi] = _cot_text(sub)
        topic[fi] = _topics(sub, cfg.topics.window)
        fw, k = cfg.frame_words, cfg.shingle_words
        for i in fi.tolist():
            shingles[i] = _frame_shingles_ascii(texts[i], fw, k)
    for i in np.flatnonzero(~fast).tolist():  # the reference, row by row
        f = request_features(requests[i], cfg)
        cot[i], topic[i], shingles[i] = f.cot, f.topic, f.shingles
    return BatchFeatures(
        texts,
        cot | reasoning,
        greedy,
        harvest,
        stream,
        samples,
        shingles,
        topic,
        models,
        users,
        shape,
    )


# --------------------------------------------------------------------------------------------
# Rows: checked column-wise, decoded once
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """What the sketch reads of n log rows (validated as ``TrafficRecord.from_dict`` would)."""

    account_id: list[str]
    ts: list[float]
    ip: list[str]
    user_agent: list[str | None]
    payment: list[str | None]
    request: list[dict[str, Any]]
    status: list[int]
    completion_tokens: list[int | None]
    response_text: list[str | None]


_REQUIRED_TEXT = ("id", "account_id", "key_id", "ip", "endpoint")


def decode_rows(table: pa.Table | pa.RecordBatch, where: str) -> Rows:
    """The rows of a table of the log; a row that fails a cheap check is decoded by
    ``records_from_table`` (the reference), which raises ``InputError`` for a bad value."""
    n = table.num_rows
    names = set(table.schema.names)

    def col(name: str) -> pa.Array | pa.ChunkedArray | None:
        return table.column(name) if name in names else None

    good = np.ones(n, dtype=bool)
    for name in _REQUIRED_TEXT:
        c = col(name)
        good &= False if c is None else _ok(pc.greater(pc.binary_length(c), 0))
    ts_col = col("ts")
    if ts_col is None:
        good[:] = False
        ts = [0.0] * n
    else:
        tsf = pc.cast(ts_col, pa.float64())
        good &= _ok(pc.and_(pc.greater_equal(tsf, 0.0), pc.less(tsf, math.inf)))
        ts = tsf.to_pylist()
    status = col("status")
    good &= False if status is None else _ok(pc.is_valid(status))
    for name in ("prompt_tokens", "completion_tokens"):
        c = col(name)
        if c is not None:
            good &= _ok(pc.or_(pc.is_null(c), pc.greater_equal(c, 0)))
    lat = col("latency_ms")
    if lat is not None:
        good &= _ok(pc.or_(pc.is_null(lat), pc.is_finite(pc.cast(lat, pa.float64()))))
    for name in ("choices", "response"):
        c = col(name)
        if c is not None:
            good &= _ok(pc.is_null(c))

    def pylist(name: str) -> list[Any]:
        c = col(name)
        return [None] * n if c is None else c.to_pylist()

    raw = pylist("request")
    requests: list[Any] = [None] * n
    loads = orjson.loads
    for i, r in enumerate(raw):
        if good[i]:
            try:
                d = loads(r)
            except orjson.JSONDecodeError:
                d = None
            if type(d) is dict:
                requests[i] = d
            else:
                good[i] = False
    rows = Rows(
        pylist("account_id"),
        ts,
        pylist("ip"),
        pylist("user_agent"),
        pylist("payment_fingerprint"),
        requests,
        pylist("status"),
        pylist("completion_tokens"),
        pylist("response_text"),
    )
    for i in np.flatnonzero(~good).tolist():  # the reference decodes (or rejects) the row
        rec = next(records_from_table(table.slice(i, 1), where))
        rows.account_id[i], rows.ts[i], rows.ip[i] = rec.account_id, rec.ts, rec.ip
        rows.user_agent[i], rows.payment[i] = rec.user_agent, rec.payment_fingerprint
        rows.request[i], rows.status[i] = rec.request, rec.status
        rows.completion_tokens[i], rows.response_text[i] = rec.completion_tokens, rec.response_text
    return rows
