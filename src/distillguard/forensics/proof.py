"""The radioactivity proof as one workflow: gather the inputs, load or query the suspect once,
run the tests that fit it, attach the monitor's clusters.

Which test runs depends on the suspect (``suspects.py`` holds the pieces):

* a model directory with our tokenizer reads the text and its predictions are scored
  (open weights);
* a model directory with another tokenizer answers the prompts locally, and its answers are
  re-tokenised with ours and scored (local generation);
* an OpenAI-compatible URL answers the prompts through the API, resumably (api).

The CLI (``prove radioactivity``) parses its options into ``ProofInputs`` / ``SuspectApi``,
calls :func:`prove_radioactivity` and prints the result; nothing here prints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from distillguard.distill.data import load_rows
from distillguard.distill.harvest import read_prompts
from distillguard.errors import InputError, ModelError
from distillguard.forensics import suspects
from distillguard.forensics.radioactivity import RadioactivityConfig, RadioactivityReport
from distillguard.forensics.report import load_verdicts
from distillguard.progress import ProgressFn
from distillguard.watermark.base import WatermarkScheme

StageProgress = Callable[[str], ProgressFn | None]  # stage label -> its update(done, total)


@dataclass(frozen=True)
class ProofInputs:
    """What the suspect is tested on, and for which accounts."""

    rows: tuple[tuple[str, str], ...] = ()  # (prompt, answer): text an open-weights suspect reads
    prompts: tuple[str, ...] = ()  # what a suspect that must answer is asked (unique, capped)
    served_answers: tuple[str, ...] = ()  # our answers as served: only their contexts score
    accounts: tuple[str, ...] = ()  # accounts tested (Holm over them)
    clusters: Mapping[str, str] = field(default_factory=dict)  # account -> monitor's cluster


@dataclass(frozen=True)
class SuspectApi:
    """An OpenAI-compatible suspect (API-only mode)."""

    base_url: str
    api_key: str
    model: str | None = None
    max_retries: int = 6  # per prompt on 429/5xx, then the run stops (resumable)
    cache: Path | None = None  # answers checkpoint; None: under ``home``/forensics


@dataclass(frozen=True)
class ProofOutcome:
    report: RadioactivityReport
    notices: tuple[str, ...] = ()  # what the person running it should know (not errors)


def _no_progress(label: str) -> None:
    return None


def read_rows(harvest: Path | None, text: Path | None) -> list[tuple[str, str]]:
    """(prompt, answer) rows from a harvested dataset, or ("", paragraph) from a text file."""
    rows: list[tuple[str, str]] = []
    if harvest is not None:
        rows += [(r.prompt, r.answer) for r in load_rows(harvest) if r.answer.strip()]
    if text is not None:
        if not text.is_file():
            raise InputError(f"text file not found: {text}")
        paragraphs = text.read_text(encoding="utf-8").split("\n\n")
        rows += [("", p) for p in paragraphs if p.strip()]
    return rows


def accounts_to_test(
    named: Sequence[str], verdicts: Path | None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Accounts to test: the named ones, else the monitor's flagged accounts; with clusters."""
    names = [a.strip() for a in named if a.strip()]
    clusters: dict[str, str] = {}
    for v in load_verdicts(verdicts, names):
        clusters[v["account_id"]] = v.get("cluster_id") or ""
    return tuple(names or clusters), clusters


def gather_inputs(
    *,
    harvest: Path | None = None,
    text: Path | None = None,
    prompts: Path | None = None,
    served_filter: bool = True,
    accounts: Sequence[str] = (),
    verdicts: Path | None = None,
    max_queries: int = 1000,
) -> ProofInputs:
    """The inputs from files: the harvest gives text, served answers and prompts; ``prompts``
    replaces its prompts; ``text`` adds paragraphs to read."""
    rows = read_rows(harvest, text)
    served = [a for p, a in rows if p] if (served_filter and harvest is not None) else []
    asked = [p for p, _ in rows if p]
    if prompts is not None:
        asked = [p.text for p in read_prompts(prompts).prompts]
    names, clusters = accounts_to_test(accounts, verdicts)
    return ProofInputs(
        rows=tuple(rows),
        prompts=tuple(dict.fromkeys(asked))[:max_queries],
        served_answers=tuple(served),
        accounts=names,
        clusters=clusters,
    )


def default_cache(home: Path, api: SuspectApi, max_tokens: int) -> Path:
    """Where API answers are checkpointed: one file per (url, model, length)."""
    key = f"{api.base_url}|{api.model}|{max_tokens}".encode()
    return home / "forensics" / f"suspect-{hashlib.sha256(key).hexdigest()[:12]}.jsonl"


def prove_radioactivity(
    *,
    inputs: ProofInputs,
    tokenizer: object,
    scheme: WatermarkScheme,
    home: Path,
    suspect_dir: Path | None = None,
    api: SuspectApi | None = None,
    config: RadioactivityConfig | None = None,
    max_tokens: int = 128,
    progress: StageProgress | None = None,
) -> ProofOutcome:
    """Run the radioactivity tests on one suspect (exactly one of ``suspect_dir`` / ``api``)."""
    if (suspect_dir is None) == (api is None):
        raise InputError("give exactly one suspect: a model directory or an API URL")
    config = config or RadioactivityConfig()
    notices: list[str] = []
    stage: StageProgress = progress or _no_progress
    if suspect_dir is not None:
        suspect = suspects.load_suspect(suspect_dir)  # once: ModelError when not a model
        if suspects.same_tokenizer(tokenizer, suspect.tokenizer):
            if not inputs.rows:
                raise InputError("open-weights mode needs text: --harvest or --text")
            report = suspects.prove_open_weights(
                suspect,
                inputs.rows,
                tokenizer=tokenizer,
                scheme=scheme,
                served_answers=inputs.served_answers,
                accounts=inputs.accounts,
                config=config,
                progress=stage("suspect reads the text"),
            )
        else:
            if not inputs.prompts:
                raise ModelError(
                    f"{suspect_dir} has another tokenizer: it must answer prompts "
                    "(--prompts or --harvest) to be tested on its text"
                )
            notices.append(
                "suspect uses another tokenizer: testing its generated answers, "
                "re-tokenised with ours"
            )
            stage(f"suspect answers {len(inputs.prompts)} prompts")
            answers = suspects.generate_local(suspect, inputs.prompts, max_new_tokens=max_tokens)
            report = suspects.prove_texts(
                answers,
                suspect=str(suspect_dir),
                mode="local-generation",
                tokenizer=tokenizer,
                scheme=scheme,
                served_answers=inputs.served_answers,
                accounts=inputs.accounts,
                config=config,
            )
    else:
        assert api is not None  # checked above
        if not inputs.prompts:
            raise InputError("API mode needs prompts: --prompts or --harvest")
        cache = api.cache or default_cache(home, api, max_tokens)
        answers, result = suspects.query_suspect_api(
            inputs.prompts,
            base_url=api.base_url,
            api_key=api.api_key,
            cache=cache,
            model=api.model,
            max_tokens=max_tokens,
            max_retries=api.max_retries,
            progress=stage(f"querying the suspect ({len(inputs.prompts)} prompts, {cache})"),
        )
        if not result.complete:
            notices.append(
                f"{result.failed} prompts failed; rerun to resume "
                f"({result.retries} retries so far; answers kept in {cache})"
            )
        report = suspects.prove_texts(
            answers,
            suspect=api.base_url,
            mode="api",
            tokenizer=tokenizer,
            scheme=scheme,
            served_answers=inputs.served_answers,
            accounts=inputs.accounts,
            config=config,
        )
    if inputs.clusters:
        tagged = tuple(
            replace(a, cluster_id=inputs.clusters.get(a.account) or None) for a in report.accounts
        )
        report = replace(report, accounts=tagged)
    return ProofOutcome(report=report, notices=tuple(notices))
