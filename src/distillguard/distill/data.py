"""Training data for students: rows -> token ids with answer masks -> padded batches.

Every mode trains on chat-formatted sequences ``prompt (template) + answer + eos`` in the
*student's* tokenizer; only answer tokens (and the closing eos) count in a loss, so a student
learns to answer, not to predict users' prompts. The gray-box mode additionally carries the
teacher's top-k log-probs per answer token; they arrive as token *strings* (what an API
returns) and are mapped onto the student's vocabulary here (:class:`TokenMapper`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distillguard.distill.records import HarvestRecord, prompt_id, read_dataset
from distillguard.errors import InputError
from distillguard.models.tokenizer import byte_level_alphabet


# --- rows ----------------------------------------------------------------------------------
def load_rows(source: Path | str | Iterable[HarvestRecord | dict]) -> list[HarvestRecord]:
    """Dataset rows from a harvested JSONL path or from records/dicts already in memory."""
    if isinstance(source, str | Path):
        return read_dataset(Path(source))
    rows: list[HarvestRecord] = []
    for index, item in enumerate(source):
        if isinstance(item, HarvestRecord):
            rows.append(item)
            continue
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise InputError(f"row {index}: needs at least a 'prompt' string")
        answer = item.get("answer", item.get("output", ""))
        if not isinstance(answer, str):
            raise InputError(f"row {index}: 'answer' must be a string")
        rows.append(
            HarvestRecord(
                id=str(item.get("id") or prompt_id(item["prompt"])),
                prompt=item["prompt"],
                answer=answer,
                finish_reason=item.get("finish_reason", "stop"),
                model=str(item.get("model", "")),
                cot=bool(item.get("cot", False)),
                usage=item.get("usage") or {},
                logprobs=item.get("logprobs"),
            )
        )
    return rows


def split_rows(
    rows: Sequence[HarvestRecord], *, held_out_fraction: float, seed: int
) -> tuple[list[HarvestRecord], list[HarvestRecord]]:
    """Seeded (train, held-out) split by row; at least one row each side when possible."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(rows) * held_out_fraction)) if len(rows) > 1 else 0
    held = [rows[i] for i in sorted(order[:n_held])]
    train = [rows[i] for i in sorted(order[n_held:])] or held
    return train, held


# --- encoding ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]  # prompt (chat template) + answer + eos
    answer_mask: tuple[bool, ...]  # True on answer tokens and the closing eos
    prompt_length: int  # tokens before the answer
    # gray box: per position, the teacher's top-k (ids, log-probs, usable); empty otherwise
    topk_ids: tuple[tuple[int, ...], ...] = ()
    topk_logprobs: tuple[tuple[float, ...], ...] = ()
    topk_valid: tuple[tuple[bool, ...], ...] = ()


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt as the student sees it at inference: chat template + assistant header."""
    from distillguard.models.tokenizer import encode_chat

    return encode_chat(tokenizer, [{"role": "user", "content": prompt}])


def _fit(prompt: list[int], answer: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Truncate to ``max_length``: the answer's end first, the prompt's start if still needed
    (keeping at least half the window for the answer so something is learned)."""
    if len(prompt) + len(answer) <= max_length:
        return prompt, answer
    keep_prompt = min(len(prompt), max(max_length - len(answer), max_length // 2))
    prompt = prompt[len(prompt) - keep_prompt :]
    return prompt, answer[: max_length - len(prompt)]


def encode_example(tokenizer: Any, prompt: str, answer: str, *, max_length: int) -> Example:
    """Chat-format one (prompt, answer) pair in the student's tokenizer."""
    ids_prompt = prompt_ids(tokenizer, prompt)
    ids_answer = list(tokenizer.encode(answer, add_special_tokens=False))
    ids_answer.append(int(tokenizer.eos_token_id))
    ids_prompt, ids_answer = _fit(ids_prompt, ids_answer, max_length)
    return Example(
        input_ids=tuple(ids_prompt + ids_answer),
        answer_mask=(False,) * len(ids_prompt) + (True,) * len(ids_answer),
        prompt_length=len(ids_prompt),
    )


class TokenMapper:
    """Token strings an API returns (decoded pieces) -> the student's token ids.

    Built from the student's vocabulary: each id's decoded piece, and its raw BPE form. A
    piece several ids decode to (partial UTF-8 bytes all print as U+FFFD) is ambiguous and
    maps to nothing, so a wrong id never gets the teacher's probability.
    """

    def __init__(self, tokenizer: Any):
        pieces: dict[str, int] = {}
        ambiguous: set[str] = set()
        for index in tokenizer.get_vocab().values():
            piece = tokenizer.decode([index])
            if piece in pieces and pieces[piece] != index:
                ambiguous.add(piece)
            pieces.setdefault(piece, index)
        for piece in ambiguous:
            pieces.pop(piece)
        self.pieces = pieces
        self.raw = dict(tokenizer.get_vocab())
        # Byte-level BPE spells each byte as one printable character (GPT-2's table): invert
        # it to know every token's exact bytes, which APIs return beside the text.
        to_byte = {char: byte for byte, char in byte_level_alphabet().items()}
        self.by_bytes: dict[bytes, int] = {}
        for token, index in self.raw.items():
            if token and all(char in to_byte for char in token):
                self.by_bytes.setdefault(bytes(to_byte[c] for c in token), index)

    def __call__(self, token: str, raw: Sequence[int] | None = None) -> int | None:
        if raw:
            found = self.by_bytes.get(bytes(raw))
            if found is not None:
                return found
        found = self.pieces.get(token)
        return found if found is not None else self.raw.get(token)


def encode_topk_example(
    tokenizer: Any, mapper: TokenMapper, record: HarvestRecord, *, k: int, max_length: int
) -> Example | None:
    """One harvested record with top-k log-probs -> an Example, or None when its answer
    tokens cannot be expressed in the student's vocabulary (the caller counts it).

    The answer's token ids come from the harvested tokens themselves (not a re-tokenization
    of the text), so position i of the sequence is exactly the position the API scored.
    The closing eos (when the answer stopped on its own) gets a one-hot target: the API
    reports no distribution for it, but the teacher certainly chose to stop.
    """
    entries = record.logprobs or []
    if not entries:
        return None
    answer: list[int] = []
    tops_ids: list[tuple[int, ...]] = []
    tops_lp: list[tuple[float, ...]] = []
    tops_ok: list[tuple[bool, ...]] = []
    for entry in entries:
        chosen = entry.get("id")
        if not isinstance(chosen, int):
            chosen = mapper(entry.get("token", ""), entry.get("bytes"))
        if chosen is None:
            return None
        answer.append(chosen)
        alternatives = (entry.get("top_logprobs") or [])[:k]
        if not alternatives:  # no distribution: the sampled token as a one-hot target
            alternatives = [{"id": chosen, "logprob": 0.0}]
        ids, lps, oks = [], [], []
        for alt in alternatives:
            alt_id = alt.get("id")
            alt_id = int(alt_id) if isinstance(alt_id, int) else mapper(alt.get("token", ""))
            ids.append(alt_id if alt_id is not None else 0)
            lps.append(float(alt.get("logprob", -1e9)))
            oks.append(alt_id is not None)
        tops_ids.append(tuple(ids))
        tops_lp.append(tuple(lps))
        tops_ok.append(tuple(oks))
    if record.finish_reason == "stop":
        eos = int(tokenizer.eos_token_id)
        answer.append(eos)
        tops_ids.append((eos,))
        tops_lp.append((0.0,))
        tops_ok.append((True,))
    ids_prompt, answer = _fit(prompt_ids(tokenizer, record.prompt), answer, max_length)
    n = len(answer)
    pad_ids: tuple[tuple[int, ...], ...] = ((),) * len(ids_prompt)
    return Example(
        input_ids=tuple(ids_prompt + answer),
        answer_mask=(False,) * len(ids_prompt) + (True,) * n,
        prompt_length=len(ids_prompt),
        topk_ids=pad_ids + tuple(tops_ids[:n]),
        topk_logprobs=((),) * len(ids_prompt) + tuple(tops_lp[:n]),
        topk_valid=((),) * len(ids_prompt) + tuple(tops_ok[:n]),
    )


# --- batches -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    input_ids: Tensor  # (B, T) long, right-padded
    attention_mask: Tensor  # (B, T) long
    answer_mask: Tensor  # (B, T) bool: token counts in the loss
    topk_ids: Tensor | None = None  # (B, T, K) long, aligned with the token it describes
    topk_logprobs: Tensor | None = None  # (B, T, K) float
    topk_valid: Tensor | None = None  # (B, T, K) bool

    @property
    def answer_tokens(self) -> int:
        return int(self.answer_mask.sum())


def collate(examples: Sequence[Example], *, pad_id: int, with_topk: bool = False) -> Batch:
    """Right-pad examples into one batch (training needs no left padding: no generation)."""
    if not examples:
        raise InputError("cannot collate an empty batch")
    width = max(len(e.input_ids) for e in examples)
    size = len(examples)
    input_ids = torch.full((size, width), pad_id, dtype=torch.long)
    attention = torch.zeros((size, width), dtype=torch.long)
    answer = torch.zeros((size, width), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        attention[row, :n] = 1
        answer[row, :n] = torch.tensor(example.answer_mask)
    if not with_topk:
        return Batch(input_ids, attention, answer)
    k = max((len(slot) for e in examples for slot in e.topk_ids), default=1) or 1
    topk_ids = torch.zeros((size, width, k), dtype=torch.long)
    topk_lp = torch.zeros((size, width, k), dtype=torch.float32)
    topk_ok = torch.zeros((size, width, k), dtype=torch.bool)
    for row, example in enumerate(examples):
        for pos, (ids, lps, oks) in enumerate(
            zip(example.topk_ids, example.topk_logprobs, example.topk_valid, strict=True)
        ):
            if ids:
                topk_ids[row, pos, : len(ids)] = torch.tensor(ids)
                topk_lp[row, pos, : len(lps)] = torch.tensor(lps)
                topk_ok[row, pos, : len(oks)] = torch.tensor(oks)
    return Batch(input_ids, attention, answer, topk_ids, topk_lp, topk_ok)


def batch_indices(count: int, batch_size: int, *, seed: int, step: int) -> list[int]:
    """Indices of the examples in batch ``step``: a fresh seeded permutation per epoch, so a
    resumed run (same seed, same step) sees exactly the batches it would have seen."""
    per_epoch = max(1, count // batch_size) if count >= batch_size else 1
    epoch, within = divmod(step, per_epoch)
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    chosen = order[within * batch_size : within * batch_size + batch_size]
    return chosen or order[:batch_size]
