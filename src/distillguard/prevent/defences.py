"""Output defences against distillation, as pure functions over answers and OpenAI records.

Two families, both applied by the gateway (``gateway.prevention``) to what an account is
served while an action is in force on it, and usable offline by the trade-off benchmark:

- **Reasoning withheld** (``withhold_reasoning``): an answer is split into its reasoning,
  an optional summary line and its final answer; the reasoning is dropped, or replaced by a
  summary the teacher wrote itself. Understood formats: ``<think>...</think>`` (reasoning
  models), a ``Summary: ...`` line, GSM8K's final ``#### <answer>`` line. An answer with none
  of these markers is all final answer: there is nothing to withhold.
- **Log-probability controls** (``cap_logprobs``): ``top_logprobs`` capped, rounded or noised
  log-probabilities, a per-account budget of tokens that may carry them, ``n`` capped, and
  ``logprobs`` refused together with ``logit_bias``: biasing chosen tokens and reading their
  log-probabilities recovers the whole logit vector (Carlini et al. 2024, "Stealing part of a
  production language model"), the richest distillation signal there is.

Refusal messages say what the client may do under the account's terms, never why the
account is acted on (a detection score in an error is an evasion guide).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from distillguard.errors import ConfigError

# The control instruction the arithmetic teacher answers with a summary line
# (prevent-task's format: the user message, "\n\n", the instruction).
SUMMARY_INSTRUCTION = "Summarize your steps."
FINAL_MARKER = "####"
SUMMARY_PREFIX = "Summary:"
_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_FINAL_LINE_RE = re.compile(r"^[ \t]*####.*$", re.MULTILINE)
_SUMMARY_LINE_RE = re.compile(r"^[ \t]*Summary:.*$", re.MULTILINE)


@dataclass(frozen=True)
class SplitAnswer:
    """One answer taken apart. ``reasoning + summary + final`` is the answer's content."""

    reasoning: str  # the steps ("" when the answer has none)
    summary: str | None  # the "Summary: ..." line, when the answer has one
    final: str | None  # the final-answer part ("#### 25", or the text after </think>)


def split_reasoning(text: str) -> SplitAnswer:
    """Split ``text`` into reasoning, summary line and final answer (see the module doc).

    ``<think>`` first (a reasoning model's trace; an unclosed one is all reasoning), then the
    last ``####`` line: everything before it is reasoning except a ``Summary:`` line."""
    think = _THINK_RE.search(text)
    if think is not None:
        rest = (text[: think.start()] + text[think.end() :]).strip()
        inner = split_reasoning(rest) if rest else SplitAnswer("", None, None)
        reasoning = "\n".join(p for p in (think.group(1).strip(), inner.reasoning) if p)
        return SplitAnswer(reasoning, inner.summary, inner.final if rest else None)
    finals = list(_FINAL_LINE_RE.finditer(text))
    if not finals:
        summary = _SUMMARY_LINE_RE.search(text)
        if summary is None:
            return SplitAnswer("", None, text)  # nothing marked as reasoning
        before = text[: summary.start()].strip()
        return SplitAnswer(before, summary.group(0).strip(), None)
    last = finals[-1]
    head, final = text[: last.start()], text[last.start() :].strip()
    summaries = list(_SUMMARY_LINE_RE.finditer(head))
    if summaries:
        s = summaries[-1]
        reasoning = (head[: s.start()] + head[s.end() :]).strip()
        return SplitAnswer(reasoning, s.group(0).strip(), final)
    return SplitAnswer(head.strip(), None, final)


def summary_of(text: str) -> str | None:
    """The ``Summary: ...`` line of a regenerated answer, or None when it wrote none."""
    return split_reasoning(text).summary


def withhold(
    text: str, mode: Literal["drop", "summary"] = "drop", summary: str | None = None
) -> str:
    """``text`` served without its reasoning. drop: the final answer only; summary: the
    answer's own summary line (or ``summary``, one the teacher wrote when asked) above the
    final answer, and the final answer alone when there is no summary to give."""
    if mode not in ("drop", "summary"):
        raise ConfigError(f"withhold mode must be drop or summary, not {mode!r}")
    parts = split_reasoning(text)
    if not parts.reasoning and parts.summary is None:
        return text  # nothing to withhold
    kept = parts.summary if parts.summary is not None else summary
    body = [kept] if mode == "summary" and kept else []
    if parts.final is not None:
        body.append(parts.final)
    return "\n".join(body)


def with_summary_instruction(
    messages: Sequence[Mapping[str, Any]], instruction: str = SUMMARY_INSTRUCTION
) -> list[dict[str, Any]]:
    """The chat ``messages`` with ``instruction`` appended to the last user message (the
    task's control format), so the teacher writes its own summary line. String contents
    only: the gateway's chat messages are text."""
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user":
            content = m.get("content")
            text = content if isinstance(content, str) else _text_of(content)
            m["content"] = f"{text}\n\n{instruction}"
            return out
    return [*out, {"role": "user", "content": instruction}]


def _text_of(content: Any) -> str:
    """OpenAI content parts ([{"type": "text", "text": ...}]) as one string."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


# ---- log-probability controls --------------------------------------------------------------


@dataclass(frozen=True)
class LogprobControls:
    """What an account's answers may carry of the teacher's distribution."""

    # The most top_logprobs served (None: as asked); requests asking more get this many.
    top_logprobs: int | None = None
    # Decimals the returned log-probabilities are rounded to (None: exact).
    round_decimals: int | None = None
    # Std (nats) of Gaussian noise on each returned log-probability (0: none).
    noise: float = 0.0
    # The most choices a request may ask for (None: the API's limit); above it: refused.
    n_max: int | None = None
    # Refuse logprobs together with logit_bias (the logit-extraction path).
    refuse_logit_bias: bool = True
    # No log-probabilities at all (the answer's text was changed: they would describe tokens
    # that were not served, or leak the withheld ones).
    strip: bool = False

    def __post_init__(self) -> None:
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise ConfigError("top_logprobs cap must be in [0, 20] (the API's maximum)")
        if self.round_decimals is not None and not 0 <= self.round_decimals <= 6:
            raise ConfigError("round_decimals must be in [0, 6]")
        if not (math.isfinite(self.noise) and 0.0 <= self.noise <= 5.0):
            raise ConfigError("logprob noise must be in [0, 5] nats")
        if self.n_max is not None and self.n_max < 1:
            raise ConfigError("the n cap must be at least 1")

    @property
    def changes_values(self) -> bool:
        return self.round_decimals is not None or self.noise > 0.0


def asks_logprobs(body: Mapping[str, Any], *, chat: bool) -> bool:
    """Whether a request body asks for log-probabilities (chat: ``logprobs: true`` or
    ``top_logprobs``; legacy completions: ``logprobs`` set, 0 included)."""
    if chat:
        return bool(body.get("logprobs")) or bool(body.get("top_logprobs"))
    return body.get("logprobs") is not None


@dataclass(frozen=True)
class Refusal:
    """Why a request is not served under the account's controls (for an OpenAI 400)."""

    message: str  # one sentence: what the client may do instead
    param: str  # the request field at fault
    code: str


def refusal(body: Mapping[str, Any], controls: LogprobControls, *, chat: bool) -> Refusal | None:
    """The refusal of a request that ``controls`` cannot serve, or None. Says what the
    account may do, never why it is limited."""
    n = body.get("n")
    if controls.n_max is not None and isinstance(n, int) and n > controls.n_max:
        return Refusal(f"n is limited to {controls.n_max} for this account", "n", "n_limited")
    if (
        controls.refuse_logit_bias
        and not controls.strip
        and body.get("logit_bias")
        and asks_logprobs(body, chat=chat)
    ):
        return Refusal(
            "logprobs cannot be combined with logit_bias for this account; send one or the other",
            "logit_bias",
            "logprobs_with_logit_bias",
        )
    return None


def _noised(value: float, controls: LogprobControls, rng: np.random.Generator) -> float:
    """One log-probability after noise (kept <= 0: it stays a log-probability) and rounding.
    The floor for tokens outside the nucleus (-9999) is left as it is."""
    if value <= -9999.0:
        return value
    if controls.noise > 0.0:
        value = min(0.0, value + float(rng.normal(0.0, controls.noise)))
    if controls.round_decimals is not None:
        value = round(value, controls.round_decimals)
    return value


def control_chat_logprobs(
    logprobs: Mapping[str, Any] | None,
    controls: LogprobControls,
    rng: np.random.Generator,
    budget_left: int | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """A chat choice's ``logprobs`` ({"content": [{token, logprob, bytes, top_logprobs}]})
    under ``controls``: at most ``budget_left`` tokens keep entries (None: no budget), each
    with at most ``top_logprobs`` alternatives, values noised and rounded. Returns the new
    object (None when nothing is left) and how many tokens carried log-probabilities."""
    if logprobs is None or controls.strip:
        return None, 0
    content = logprobs.get("content") or []
    if budget_left is not None:
        content = content[: max(0, budget_left)]
    if not content:
        return None, 0
    cap = controls.top_logprobs
    out = []
    for entry in content:
        tops = entry.get("top_logprobs") or []
        if cap is not None:
            tops = tops[:cap]
        out.append(
            {
                **entry,
                "logprob": _noised(entry["logprob"], controls, rng),
                "top_logprobs": [
                    {**t, "logprob": _noised(t["logprob"], controls, rng)} for t in tops
                ],
            }
        )
    return {**logprobs, "content": out}, len(out)


def control_legacy_logprobs(
    logprobs: Mapping[str, Any] | None,
    controls: LogprobControls,
    rng: np.random.Generator,
    budget_left: int | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """The same for a ``/v1/completions`` choice's ``{tokens, token_logprobs, top_logprobs,
    text_offset}`` (top_logprobs: one {piece: logprob} dict per token, or None)."""
    if logprobs is None or controls.strip:
        return None, 0
    keep = len(logprobs.get("tokens") or [])
    if budget_left is not None:
        keep = min(keep, max(0, budget_left))
    if keep == 0:
        return None, 0
    cap = controls.top_logprobs
    tops = logprobs.get("top_logprobs")
    new_tops = None
    if tops is not None:
        new_tops = []
        for alternatives in tops[:keep]:
            items = sorted((alternatives or {}).items(), key=lambda kv: -kv[1])
            if cap is not None:
                items = items[:cap]
            new_tops.append({k: _noised(v, controls, rng) for k, v in items})
    values = [
        v if v is None else _noised(v, controls, rng)
        for v in (logprobs.get("token_logprobs") or [])[:keep]
    ]
    return {
        **logprobs,
        "tokens": list(logprobs.get("tokens") or [])[:keep],
        "token_logprobs": values,
        "top_logprobs": new_tops,
        "text_offset": list(logprobs.get("text_offset") or [])[:keep],
    }, keep
