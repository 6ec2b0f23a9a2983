"""Keyed perturbation of reasoning steps: wrong intermediate results, the right final answer.

The defence of our own design (action ``perturb_reasoning``). Withholding the reasoning
removes what a student learns the skill from, but a harvester sees at once that it is gone
and can go elsewhere for it; a summary still teaches the plan. This defence keeps the
answer's shape and its final line exact (an honest user, who reads the answer, loses
nothing) and changes the *result* of intermediate steps (``12+3=15`` becomes ``12+3=17``):

- a student fine-tuned on such traces learns arithmetic that is wrong in small, plausible
  ways, and since its own final line follows from its own steps, the errors reach its
  answers; learning to copy a final line that does not follow from the steps is harder than
  learning the task (the teacher's reasoning is what makes the task learnable);
- the change is keyed by an HMAC of the account's key and the step's operands, so the same
  step asked again gets the same wrong result: sampling ``n`` answers and voting per step
  cannot average it away, and re-asking does not reveal it;
- the keyed pattern of errors is itself a fingerprint: a student that reproduces
  ``12+3=17`` carries evidence of which account's harvest it learnt from.

What it does not survive: an attacker who checks every step with a calculator can repair
the results (for this checkable task such an attacker needs no teacher at all); steps whose
operands repeat an earlier perturbed result stay as the teacher wrote them (a client who
compares lines sees the inconsistency). Both are stated in docs/prevention.md.

Steps follow the arithmetic task's grammar ``<int><op><int>=<int>`` (op in + - *), one per
line, before the ``####`` line; GSM8K calculator annotations ``<<a*b=c>>`` are steps too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from distillguard.errors import ConfigError

# One step: operands, operator, result. Integers only (the task's grammar); a negative
# operand or result keeps its sign.
STEP_RE = re.compile(r"(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)")
_FINAL_RE = re.compile(r"^[ \t]*####", re.MULTILINE)


@dataclass(frozen=True)
class PerturbConfig:
    """How many steps change, and by how much."""

    # Fraction of the intermediate steps whose result is changed: 1.0 changes every one;
    # lower leaves some steps right (harder to spot, weaker against a student).
    rate: float = 1.0
    # Largest change of a result (an offset in [1, max_offset], either sign): small offsets
    # keep the steps plausible, so a skimming harvester does not notice.
    max_offset: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ConfigError(f"perturb rate must be in (0, 1], not {self.rate}")
        if not 1 <= self.max_offset <= 1000:
            raise ConfigError(f"perturb max_offset must be in [1, 1000], not {self.max_offset}")


@dataclass(frozen=True)
class Perturbed:
    """A perturbed answer and how much of it changed."""

    text: str
    steps: int  # intermediate steps found
    changed: int  # of which the result was changed


def _draw(key: bytes, a: str, op: str, b: str, occurrence: int) -> tuple[float, int]:
    """(u in [0, 1), offset != 0) for one step, from HMAC-SHA256(key, step)."""
    digest = hmac.new(key, f"{a}{op}{b}#{occurrence}".encode(), hashlib.sha256).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    raw = int.from_bytes(digest[8:16], "big")
    return u, raw


def perturb_steps(text: str, key: bytes, config: PerturbConfig | None = None) -> Perturbed:
    """``text`` with the results of its intermediate steps changed (see the module doc).

    Only steps before the last ``####`` line are touched; without such a line the last step
    is taken as the answer and kept. A changed result is never negative when the true one
    was not (a negative count would give the change away)."""
    config = config or PerturbConfig()
    if not isinstance(key, bytes | bytearray) or not key:
        raise ConfigError("perturb_steps needs a non-empty key (bytes)")
    finals = list(_FINAL_RE.finditer(text))
    head_end = finals[-1].start() if finals else len(text)
    steps = list(STEP_RE.finditer(text, 0, head_end))
    if not finals and steps:
        steps = steps[:-1]  # no final line: the last step's result is the answer
    seen: dict[tuple[str, str, str], int] = {}
    pieces: list[str] = []
    at = changed = 0
    for m in steps:
        a, op, b, result = m.groups()
        occurrence = seen.get((a, op, b), 0)
        seen[(a, op, b)] = occurrence + 1
        u, raw = _draw(bytes(key), a, op, b, occurrence)
        if u >= config.rate:
            continue
        magnitude = 1 + raw % config.max_offset
        sign = 1 if (raw >> 32) & 1 else -1
        value = int(result)
        new = value + sign * magnitude
        if value >= 0 > new:
            new = value + magnitude
        start, end = m.span(4)
        pieces.append(text[at:start])
        pieces.append(str(new))
        at = end
        changed += 1
    pieces.append(text[at:])
    return Perturbed("".join(pieces), len(steps), changed)


def account_key(secret: bytes, account_id: str) -> bytes:
    """The per-account perturbation key: HMAC of the provider's secret and the account, so
    two accounts (two halves of a split campaign) get different errors."""
    return hmac.new(secret, b"perturb-reasoning:" + account_id.encode(), hashlib.sha256).digest()
