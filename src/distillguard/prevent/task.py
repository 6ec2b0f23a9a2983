"""A task whose skill is measurable here: short multi-step arithmetic chains.

The 1.2M-parameter default teacher cannot answer real questions, so prevention is measured on a
task that a few hundred thousand parameters *can* learn, and that a program can grade: chains
of 2-3 operations on small integers applied left to right, written and solved by code, with
answers in
GSM8K's format (one step line per operation, then ``#### <answer>``)::

    12 +3 *2 -5

    12+3=15
    15*2=30
    30-5=25
    #### 25

Reasoning is what makes it learnable: one step is a single small sum a tiny model gets right,
while the answer alone asks it to chain every operation at once. That gap is what withholding
reasoning takes from a student.

Train and held-out problems are disjoint by construction: a problem's numeric structure
(start value and operations) hashes to a bucket, and one bucket in
``held_out_buckets`` belongs to the held-out split only, so no held-out problem has a twin in
training. Everything here is pure and seeded.

The answer format (shared with the serving side, /work/briefs/prevent-task-format.md): a user
message is the problem, optionally followed by one control instruction (answer only, or a
summary in place of the steps); the summary style still writes the steps (the teacher's
private reasoning) and then a ``Summary:`` line, which is all a defence serves of them.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Literal

from distillguard.errors import ConfigError, InputError

FINAL_MARKER = "####"  # GSM8K's final-answer marker
SUMMARY_PREFIX = "Summary:"  # the line a summary answer puts in place of its steps
ANSWER_ONLY_INSTRUCTION = "Final answer only."
SUMMARY_INSTRUCTION = "Summarize your steps."
# One step line: "<int><op><int>=<int>", op in + - *. Exported for defences that edit steps.
STEP_RE = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")
FINAL_RE = re.compile(r"####\s*(-?\d+)\s*$")

Style = Literal["reasoning", "answer_only", "summary"]
STYLES: tuple[Style, ...] = ("reasoning", "answer_only", "summary")
Split = Literal["train", "held_out"]

OP_WORDS = {"+": "add", "-": "subtract", "*": "multiply"}


@dataclass(frozen=True)
class TaskConfig:
    # Operations per problem, drawn from these counts: 2-3 step chains are where written
    # intermediate results help (the answer alone is a composition of 2-3 lookups).
    n_ops: tuple[int, ...] = (2, 3)
    max_start: int = 20  # start value in [2, max_start]: two digits at most, like the steps
    max_operand: int = 9  # + and - operands in [1, max_operand]: one-digit steps stay learnable
    multipliers: tuple[int, ...] = (2, 3)  # * operands; small so values stay two-digit
    # Every intermediate value in [0, max_value]: ~1,000 distinct step facts, few enough for
    # a 0.5M-parameter model to get right on one CPU core in minutes (99 left the previous
    # teacher at 28 %), while 2-3 step chains still span > 100,000 problem structures.
    max_value: int = 49
    held_out_buckets: int = 5  # 1 structure bucket in this many is held out (20 %)

    def __post_init__(self) -> None:
        if not self.n_ops or min(self.n_ops) < 1 or max(self.n_ops) > 8:
            raise ConfigError("n_ops must list operation counts in [1, 8]")
        if self.max_start < 2 or self.max_operand < 1 or self.max_value < self.max_start:
            raise ConfigError("need max_start >= 2, max_operand >= 1, max_value >= max_start")
        if not self.multipliers or min(self.multipliers) < 2:
            raise ConfigError("multipliers must be integers >= 2")
        if self.held_out_buckets < 2:
            raise ConfigError("held_out_buckets must be >= 2 (one bucket is held out)")


@dataclass(frozen=True)
class Step:
    left: int
    op: str  # "+" | "-" | "*"
    right: int
    result: int

    @property
    def line(self) -> str:
        return f"{self.left}{self.op}{self.right}={self.result}"


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (op, operand) in order

    @property
    def key(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        """The numeric structure: what the train/held-out split is decided on."""
        return self.start, self.ops

    @property
    def steps(self) -> tuple[Step, ...]:
        value, out = self.start, []
        for op, b in self.ops:
            result = value + b if op == "+" else value - b if op == "-" else value * b
            out.append(Step(value, op, b, result))
            value = result
        return tuple(out)

    @property
    def answer(self) -> int:
        return self.steps[-1].result

    @property
    def text(self) -> str:
        """The problem as the user writes it: the start and each operation, applied left to
        right (``8 -4 *2 *2``). Terse on purpose: every prompt token costs training compute
        on this CPU, and the skill is in the numbers, not in the prose."""
        return " ".join([str(self.start), *(f"{op}{b}" for op, b in self.ops)])


def split_of(problem: Problem, config: TaskConfig = TaskConfig()) -> Split:
    """The split a problem belongs to, from a hash of its numeric structure (not wording)."""
    digest = hashlib.sha256(repr(problem.key).encode()).digest()
    return "held_out" if digest[0] % config.held_out_buckets == 0 else "train"


def _draw(rng: random.Random, config: TaskConfig) -> Problem | None:
    """One random problem, or None when an intermediate value leaves [0, max_value]."""
    start = rng.randint(2, config.max_start)
    value, ops = start, []
    for _ in range(rng.choice(config.n_ops)):
        op = rng.choice("+-*")
        b = rng.choice(config.multipliers) if op == "*" else rng.randint(1, config.max_operand)
        value = value + b if op == "+" else value - b if op == "-" else value * b
        if not 0 <= value <= config.max_value:
            return None
        ops.append((op, b))
    return Problem(start=start, ops=tuple(ops))


def generate(
    n: int, *, split: Split, seed: int = 0, config: TaskConfig = TaskConfig()
) -> list[Problem]:
    """``n`` distinct problems (distinct structures) of ``split``, the same for the same seed.
    Raises InputError when the split has fewer than ``n`` structures."""
    if split not in ("train", "held_out"):
        raise InputError(f"split must be 'train' or 'held_out', got {split!r}")
    if n < 0:
        raise InputError("n must be >= 0")
    rng = random.Random(f"{seed}:{split}")
    out: list[Problem] = []
    seen: set[tuple[int, tuple[tuple[str, int], ...]]] = set()
    misses = 0
    while len(out) < n:
        problem = _draw(rng, config)
        if problem is None or problem.key in seen or split_of(problem, config) != split:
            misses += 1
            if misses > 200 * n + 10_000:  # far more rejections than the space allows
                raise InputError(f"cannot draw {n} distinct {split} problems under {config}")
            continue
        seen.add(problem.key)
        out.append(problem)
    return out


# --- prompts and answers -------------------------------------------------------------------
def prompt_for(problem: Problem, style: Style = "reasoning") -> str:
    """The user message asking for ``style``: the problem, plus its control instruction."""
    if style == "reasoning":
        return problem.text
    if style == "answer_only":
        return f"{problem.text}\n\n{ANSWER_ONLY_INSTRUCTION}"
    if style == "summary":
        return f"{problem.text}\n\n{SUMMARY_INSTRUCTION}"
    raise InputError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")


def summary_line(problem: Problem) -> str:
    """The operations in words, no numbers: what a summary may reveal of the reasoning."""
    return f"{SUMMARY_PREFIX} " + ", ".join(OP_WORDS[op] for op, _ in problem.ops) + "."


def solution(problem: Problem, style: Style = "reasoning") -> str:
    """The reference answer in ``style`` (what the teacher is trained to write)."""
    final = f"{FINAL_MARKER} {problem.answer}"
    lines = [s.line for s in problem.steps]
    if style == "reasoning":
        return "\n".join([*lines, final])
    if style == "answer_only":
        return final
    if style == "summary":
        return "\n".join([*lines, summary_line(problem), final])
    raise InputError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")


@dataclass(frozen=True)
class ParsedAnswer:
    reasoning: str  # the lines before the summary / final line ("" when none)
    summary: str | None  # the "Summary: ..." line, when present
    final: str | None  # the final line "#### N", when present


def split_answer(text: str) -> ParsedAnswer:
    """Split an answer into reasoning, summary and final line (the last ``####`` line)."""
    lines = text.strip("\n").split("\n") if text.strip() else []
    final_at = max(
        (i for i, ln in enumerate(lines) if ln.lstrip().startswith(FINAL_MARKER)), default=None
    )
    final = lines[final_at].strip() if final_at is not None else None
    body = lines[:final_at] if final_at is not None else lines
    summary_at = next(
        (i for i, ln in enumerate(body) if ln.lstrip().startswith(SUMMARY_PREFIX)), None
    )
    summary = body[summary_at].strip() if summary_at is not None else None
    reasoning = body[:summary_at] if summary_at is not None else body
    return ParsedAnswer(reasoning="\n".join(reasoning), summary=summary, final=final)


def parse_final(text: str) -> int | None:
    """The integer after the last ``####`` of an answer; None when absent or not an integer."""
    final = split_answer(text).final
    if final is None:
        return None
    match = FINAL_RE.fullmatch(final.strip()) or FINAL_RE.search(final)
    return int(match.group(1)) if match else None


def strip_reasoning(text: str, *, keep_summary: bool = False) -> str:
    """The answer with its step lines removed: the final line, after the summary line when
    ``keep_summary`` and one was written. No final line: "" (nothing of the reasoning leaks)."""
    parts = split_answer(text)
    if parts.final is None:
        return parts.summary if keep_summary and parts.summary else ""
    if keep_summary and parts.summary:
        return f"{parts.summary}\n{parts.final}"
    return parts.final


def is_correct(problem: Problem, text: str) -> bool:
    """Whether ``text``'s final answer is the problem's answer (the reasoning is not graded)."""
    return parse_final(text) == problem.answer


def steps_check(text: str) -> bool:
    """Whether every step line of ``text`` is true arithmetic (a grader for the reasoning)."""
    for line in split_answer(text).reasoning.split("\n"):
        match = STEP_RE.fullmatch(line.strip())
        if line.strip() and match is None:
            return False
        if match:
            a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
            if (a + b if op == "+" else a - b if op == "-" else a * b) != c:
                return False
    return True


def majority_final(texts: list[str]) -> int | None:
    """The most frequent parsed final answer of several samples (ties: the first seen)."""
    counts: dict[int, int] = {}
    for text in texts:
        value = parse_final(text)
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return max(counts, key=lambda v: counts[v]) if counts else None
