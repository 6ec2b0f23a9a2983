"""Text-level detection: tokenize with the teacher's tokenizer, try the key ids, batch files.

* ``TextDetector`` holds one scheme object per key id tried. The provider p-value of a text is
  the smallest over the key ids, multiplied by the number tried (Bonferroni), so keeping old
  keys detectable after a rotation never raises the false-positive rate. Account tests run
  under the key id that matched best (their keys differ per key id; under "not this account"
  they are independent of the provider test, so choosing the key first does not bias them).
* ``detect_text`` is the one-call API; ``TextDetector.detect_batch`` tokenizes many texts in one
  call and scores them in one vectorized pass per key id.
* ``read_inputs`` / ``detect_stream`` read plain text or JSONL and never stop on a bad line:
  every input gets either a result or an error record (InputError, InsufficientData, ...),
  and the number of skipped inputs is counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from distillguard.config import Settings
from distillguard.errors import (
    DistillGuardError,
    InputError,
    InsufficientData,
    NotFound,
    WatermarkError,
)
from distillguard.watermark.base import DetectionResult, WatermarkScheme
from distillguard.watermark.keys import KeyRing
from distillguard.watermark.schemes import build_scheme

INPUT_FORMATS = ("auto", "jsonl", "text", "lines")


def load_tokenizer(tokenizer_dir: Path | None, settings: Settings) -> Any:
    """The teacher's tokenizer: ``tokenizer_dir``, else settings.model_dir, else the cached
    default teacher (never trained here: detection must not start a training run)."""
    if tokenizer_dir is None:
        if settings.model_dir is not None:
            tokenizer_dir = Path(settings.model_dir)
        else:
            from distillguard.models.teacher import teacher_dir_path

            tokenizer_dir = teacher_dir_path(settings)
    path = Path(tokenizer_dir)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise NotFound(
            f"no tokenizer in {path}: pass --tokenizer DIR (the teacher's model "
            "directory) or set DISTILLGUARD_MODEL_DIR"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


class TextDetector:
    """Detect a scheme's watermark in texts under one or more key ids of a key ring."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        keyring: KeyRing,
        scheme: str = "kgw",
        key_ids: Sequence[int] | None = None,
        **params: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self._encoder: Any = None  # models.tokenizer.ChunkEncoder, built on first use
        self.vocab_size = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
        ids = keyring.check(tuple(key_ids) if key_ids else keyring.key_ids)
        self.schemes: list[WatermarkScheme] = [
            build_scheme(
                scheme, secret=keyring.secret, key_id=k, vocab_size=self.vocab_size, **params
            )
            for k in ids
        ]
        self.scheme = scheme

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        tokenizer: Any | None = None,
        scheme: str | None = None,
        key_ids: Sequence[int] | None = None,
        tokenizer_dir: Path | None = None,
    ) -> TextDetector:
        name = scheme or settings.watermark_scheme
        if name == "off":
            raise WatermarkError("the configured watermark scheme is 'off'; pass a scheme")
        return cls(
            tokenizer=tokenizer or load_tokenizer(tokenizer_dir, settings),
            keyring=KeyRing.from_settings(settings),
            scheme=name,
            key_ids=key_ids,
        )

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, without special tokens (the answer as the model wrote it):
        exactly the tokenizer's ids, through a cache of whitespace-led chunks
        (``models.tokenizer.ChunkEncoder``, several times faster on real text)."""
        if not texts:
            return []
        if self._encoder is None:
            from distillguard.models.tokenizer import ChunkEncoder

            self._encoder = ChunkEncoder(self.tokenizer)
        return self._encoder.encode(texts)

    def detect_ids(
        self,
        sequences: Sequence[Sequence[int]] | Sequence[np.ndarray],
        *,
        prompts: Sequence[Sequence[int] | np.ndarray | None] | None = None,
        accounts: Sequence[str] = (),
    ) -> list[DetectionResult]:
        """Batch detection over all key ids (Bonferroni over key ids, per text)."""
        per_key = [s.detect_many(sequences, prompts=prompts) for s in self.schemes]
        K = len(self.schemes)
        best = np.argmin([[r.log10_p_value for r in rs] for rs in per_key], axis=0)  # (R,)
        out: list[DetectionResult] = []
        for i, k in enumerate(best.tolist()):
            r = per_key[k][i]
            lp = min(0.0, r.log10_p_value + math.log10(K))
            out.append(replace(r, log10_p_value=lp, p_value=10.0**lp, keys_tried=K))
        if accounts:
            for k in set(best.tolist()):
                rows = [i for i, b in enumerate(best.tolist()) if b == k]
                acc = self.schemes[k].detect_many(
                    [sequences[i] for i in rows],
                    prompts=None if prompts is None else [prompts[i] for i in rows],
                    accounts=accounts,
                )
                for i, r in zip(rows, acc, strict=True):
                    out[i] = replace(out[i], accounts=r.accounts)
        return out

    def detect_batch(
        self,
        texts: Sequence[str],
        *,
        prompts: Sequence[str | None] | None = None,
        accounts: Sequence[str] = (),
    ) -> list[DetectionResult | DistillGuardError]:
        """Detect many texts; each entry is a result or the error for that text."""
        ids = self.encode(texts)
        pids = None
        if prompts is not None:
            enc = self.encode([p or "" for p in prompts])
            pids = [e if p else None for e, p in zip(enc, prompts, strict=True)]
        results: list[DetectionResult | DistillGuardError] = list(
            self.detect_ids(ids, prompts=pids, accounts=accounts)
        )
        for i, r in enumerate(results):
            if isinstance(r, DetectionResult) and r.num_scored == 0:
                results[i] = _insufficient(r, self.schemes[0].context.width)
        return results

    def detect_text(
        self, text: str, *, prompt: str | None = None, accounts: Sequence[str] = ()
    ) -> DetectionResult:
        r = self.detect_batch(
            [text], prompts=None if prompt is None else [prompt], accounts=accounts
        )[0]
        if isinstance(r, DistillGuardError):
            raise r
        return r


def _insufficient(r: DetectionResult, width: int) -> InsufficientData:
    if r.num_tokens == 0:
        return InsufficientData("empty text: nothing to test")
    if r.num_tokens <= width:
        return InsufficientData(
            f"text has {r.num_tokens} tokens; at least {width + 1} are "
            f"needed (context width {width})"
        )
    return InsufficientData(
        f"no scorable pair left: {r.num_repeated} repeated, "
        f"{r.num_prompt_copied} copied from the prompt"
    )


def detect_text(
    text: str,
    *,
    tokenizer: Any,
    settings: Settings | None = None,
    secret: bytes | None = None,
    scheme: str = "kgw",
    key_ids: Sequence[int] | None = None,
    prompt: str | None = None,
    accounts: Sequence[str] = (),
) -> DetectionResult:
    """Detect the watermark in one text (key ring from ``secret`` or the settings)."""
    if secret is not None:
        ring = KeyRing(secret=secret, current_key_id=max(key_ids) if key_ids else 1)
    elif settings is None:
        raise WatermarkError("detect_text needs the provider's secret or the settings holding it")
    else:
        ring = KeyRing.from_settings(settings)
    det = TextDetector(tokenizer=tokenizer, keyring=ring, scheme=scheme, key_ids=key_ids)
    return det.detect_text(text, prompt=prompt, accounts=accounts)


# ------------------------------------------------------------------------ batch inputs


@dataclass(frozen=True)
class InputItem:
    line: int  # 1-based line number (1 for a whole-file text)
    text: str | None
    prompt: str | None = None
    error: DistillGuardError | None = None  # set when the line could not be read


def _sniff(first: str) -> str:
    return "jsonl" if first.lstrip().startswith("{") else "text"


def read_inputs(
    stream: IO[str], *, fmt: str = "auto", field: str = "text", prompt_field: str | None = None
) -> Iterator[InputItem]:
    """Inputs of a stream: JSONL records (``field`` / ``prompt_field``), one text per line
    (``lines``) or the whole stream as one text (``text``). Bad lines become error items."""
    if fmt not in INPUT_FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {INPUT_FORMATS}")
    if fmt in ("auto", "text"):
        data = stream.read()
        if fmt == "auto":
            fmt = _sniff(data[:1000]) if data.strip() else "text"
        if fmt == "text":
            yield InputItem(line=1, text=data)
            return
        lines: Iterable[str] = data.splitlines()
    else:
        lines = stream
    for no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if fmt == "lines":
            yield InputItem(line=no, text=line)
            continue
        if not line.strip():
            continue
        yield _parse_record(no, line, field, prompt_field)


def _parse_record(no: int, line: str, field: str, prompt_field: str | None) -> InputItem:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        return InputItem(no, None, error=InputError(f"not JSON: {exc.msg}"))
    if not isinstance(rec, dict):
        return InputItem(no, None, error=InputError("a JSONL record must be an object"))
    if field not in rec:
        return InputItem(no, None, error=InputError(f"no field {field!r} in the record"))
    text = rec[field]
    if not isinstance(text, str):
        return InputItem(no, None, error=InputError(f"field {field!r} is not a string"))
    prompt = rec.get(prompt_field) if prompt_field else None
    if prompt is not None and not isinstance(prompt, str):
        return InputItem(no, None, error=InputError(f"field {prompt_field!r} is not a string"))
    return InputItem(no, text, prompt)


def detect_stream(
    detector: TextDetector,
    items: Iterable[InputItem],
    *,
    accounts: Sequence[str] = (),
    batch: int = 512,
) -> Iterator[dict[str, Any]]:
    """One output record per input item, in order: the result, or ``{"error": ...}``."""
    chunk: list[InputItem] = []

    def flush() -> Iterator[dict[str, Any]]:
        ok = [it for it in chunk if it.error is None]
        res = (
            detector.detect_batch(
                [it.text or "" for it in ok],
                prompts=[it.prompt for it in ok] if any(it.prompt for it in ok) else None,
                accounts=accounts,
            )
            if ok
            else []
        )
        by_line = dict(zip((id(it) for it in ok), res, strict=True))
        for it in chunk:
            r = it.error if it.error is not None else by_line[id(it)]
            yield detection_record(it.line, r)

    for item in items:
        chunk.append(item)
        if len(chunk) >= batch:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()


def detection_record(line: int, r: DetectionResult | DistillGuardError) -> dict[str, Any]:
    if isinstance(r, DistillGuardError):
        return {"line": line, "error": type(r).__name__, "message": r.message}
    return {"line": line, **r.to_dict()}
