"""Suspects: load or query them, feed them text, and run the radioactivity tests on them.

Open weights: a model directory with our tokenizer reads text and its predictions are scored
(:func:`prove_open_weights`). API only, or another tokenizer: the suspect answers prompts
(through an OpenAI-compatible API with the openai SDK, resumable, or locally), its answers are
re-tokenised with our tokenizer and scored (:func:`prove_texts`). The statistics themselves
live in ``radioactivity.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillguard.config import Settings
from distillguard.errors import InputError, ModelError, WatermarkError
from distillguard.forensics.radioactivity import (
    AccountEvidence,
    RadioactivityConfig,
    RadioactivityReport,
    collect_predictions,
    open_weights_tests,
    served_context_keys,
    text_tests,
)
from distillguard.forensics.radioactivity_accounts import (
    account_tests_distribution,
    account_tests_pairs,
)
from distillguard.watermark.base import WatermarkScheme
from distillguard.watermark.schemes import build_scheme


def scheme_from_settings(
    settings: Settings,
    *,
    vocab_size: int,
    scheme: str | None = None,
    key_id: int | None = None,
    **params: Any,
) -> WatermarkScheme:
    """Our watermark scheme (the provider's secret from settings) for a tokenizer's vocab."""
    name = scheme or settings.watermark_scheme
    if name == "off":
        raise WatermarkError("the configured watermark scheme is 'off': pass --scheme")
    return build_scheme(
        name,
        secret=settings.require_watermark_secret(),
        key_id=key_id or settings.watermark_key_id,
        vocab_size=vocab_size,
        **params,
    )


@dataclass(frozen=True)
class LoadedSuspect:
    """A suspect model loaded once, for every test and generation run on it."""

    path: Path
    model: Any
    tokenizer: Any


def load_suspect(suspect_dir: Path | str) -> LoadedSuspect:
    """The model at ``suspect_dir`` (ModelError when it is not one)."""
    from distillguard.models.llama import load_model

    model, tokenizer = load_model(Path(suspect_dir))
    return LoadedSuspect(Path(suspect_dir), model, tokenizer)


def _loaded(suspect: LoadedSuspect | Path | str) -> LoadedSuspect:
    return suspect if isinstance(suspect, LoadedSuspect) else load_suspect(suspect)


def same_tokenizer(ours: Any, theirs: Any) -> bool:
    """True when both tokenizers map every token string to the same id."""
    return ours.get_vocab() == theirs.get_vocab()


def encode_rows(
    tokenizer: Any, rows: Sequence[tuple[str, str]], *, chat: bool = True
) -> list[list[int]]:
    """(prompt, answer) rows as one token sequence each, exactly as students train on them:
    the prompt through the chat template (assistant header included) and the answer
    tokenized *separately*, then eos (``distill.data.encode_example``); a suspect is thus
    scored on the very contexts it was trained on, also where BPE would merge across the
    prompt/answer boundary if the pair were tokenized as one string."""
    from distillguard.distill.data import prompt_ids
    from distillguard.models.tokenizer import encode_text

    out = []
    for prompt, answer in rows:
        if chat and prompt:
            ids = prompt_ids(tokenizer, prompt) + encode_text(tokenizer, answer)
            out.append([*ids, int(tokenizer.eos_token_id)])
        else:
            out.append(encode_text(tokenizer, answer))
    return out


def prove_open_weights(
    suspect_dir: LoadedSuspect | Path | str,
    rows: Sequence[tuple[str, str]],
    *,
    tokenizer: Any,
    scheme: WatermarkScheme,
    served_answers: Sequence[str] = (),
    accounts: Sequence[str] = (),
    config: RadioactivityConfig | None = None,
    progress: Any = None,
) -> RadioactivityReport:
    """Open-weights radioactivity of the model at ``suspect_dir`` on ``rows``.

    ``served_answers``: our watermarked answers as served (restricts scoring to their contexts).
    Raises ModelError when the directory is not a model or the suspect's tokenizer is not ours
    (then use :func:`prove_texts` on answers it generates).
    """
    config = config or RadioactivityConfig()
    suspect = _loaded(suspect_dir)
    model, suspect_tok = suspect.model, suspect.tokenizer
    if not same_tokenizer(tokenizer, suspect_tok):
        raise ModelError(
            f"{suspect.path} uses another tokenizer than ours: its predictions "
            "cannot be scored token by token; run the text test on its answers"
        )
    width, vocab = scheme.context.width, scheme.vocab_size
    served = (
        served_context_keys(
            [tokenizer.encode(a, add_special_tokens=False) for a in served_answers], width, vocab
        )
        if served_answers
        else None
    )
    preds = collect_predictions(
        model,
        encode_rows(tokenizer, rows),
        width=width,
        vocab=vocab,
        config=config,
        served=served,
        progress=progress,
    )
    tests = open_weights_tests(scheme, preds, config)
    evidence: list[AccountEvidence] = []
    if accounts:
        evidence = account_tests_distribution(scheme, preds, accounts, config)
    return RadioactivityReport(
        suspect=str(suspect.path),
        mode="open-weights",
        scheme=scheme.name,
        key_id=scheme.key_id,
        tests=tests,
        accounts=tuple(evidence),
        texts=len(rows),
        tokens=preds.tokens,
        served_contexts=None if served is None else int(served.size),
        settings=_settings(scheme, config) | {"positions_scored": preds.positions},
    )


def prove_texts(
    answers: Sequence[str],
    *,
    suspect: str,
    mode: str,
    tokenizer: Any,
    scheme: WatermarkScheme,
    served_answers: Sequence[str] = (),
    accounts: Sequence[str] = (),
    config: RadioactivityConfig | None = None,
) -> RadioactivityReport:
    """Text radioactivity of the suspect's answers (API-only mode or another tokenizer)."""
    config = config or RadioactivityConfig()
    width, vocab = scheme.context.width, scheme.vocab_size
    served = (
        served_context_keys(
            [tokenizer.encode(a, add_special_tokens=False) for a in served_answers], width, vocab
        )
        if served_answers
        else None
    )
    ids = [tokenizer.encode(a, add_special_tokens=False) for a in answers]
    result, ctx, tok, total = text_tests(scheme, ids, config, served)
    evidence = account_tests_pairs(scheme, ctx, tok, accounts, "text-binomial") if accounts else []
    return RadioactivityReport(
        suspect=suspect,
        mode=mode,
        scheme=scheme.name,
        key_id=scheme.key_id,
        tests=(result,),
        accounts=tuple(evidence),
        texts=len(answers),
        tokens=total,
        served_contexts=None if served is None else int(served.size),
        settings=_settings(scheme, config),
    )


def _settings(scheme: WatermarkScheme, config: RadioactivityConfig) -> dict[str, Any]:
    params = asdict(scheme.params) if hasattr(scheme, "params") else {}
    return {"scheme_params": params, "vocab_size": scheme.vocab_size} | asdict(config)


def query_suspect_api(
    prompts: Sequence[str],
    *,
    base_url: str,
    api_key: str,
    cache: Any,
    model: str | None = None,
    max_tokens: int = 128,
    temperature: float = 1.0,
    concurrency: int = 4,
    max_retries: int = 6,
    progress: Any = None,
) -> tuple[list[str], Any]:
    """Ask an OpenAI-compatible suspect for answers, through the openai SDK.

    Every answer is appended (fsynced) to ``cache`` as it arrives, and a rerun skips prompts
    already there, so a run cut by rate limits or a failing server resumes where it stopped;
    429/5xx are retried with backoff (Retry-After honoured) by the harvest client.
    Returns (answers in cache, the HarvestResult).
    """
    from distillguard.distill.harvest import (
        HarvestConfig,
        Prompt,
        harvest,
        prompt_id,
        read_dataset,
    )

    items = [Prompt(prompt_id(p), p) for p in dict.fromkeys(prompts)]
    if not items:
        raise InputError("no prompts to send to the suspect")
    config = HarvestConfig(
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        concurrency=concurrency,
        max_retries=max_retries,
    )
    result = harvest(items, Path(cache), config, on_progress=progress)
    answers = [r.answer for r in read_dataset(Path(cache)) if r.answer.strip()]
    return answers, result


def generate_local(
    suspect_dir: LoadedSuspect | Path | str,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    num_threads: int = 1,
    seed: int = 0,
) -> list[str]:
    """Answers of a local suspect (any tokenizer) to prompts, sampled at temperature 1."""
    from distillguard.distill.harvest import LocalHarvestParams, harvest_local
    from distillguard.models.engine import GenerationEngine

    suspect = _loaded(suspect_dir)
    engine = GenerationEngine(
        suspect.model, suspect.tokenizer, num_threads=num_threads, name=suspect.path.name
    )
    params = LocalHarvestParams(max_new_tokens=max_new_tokens, seed=seed, batch_size=16)
    return [r.answer for r in harvest_local(engine, list(prompts), params)]
