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
PERTURB_MODES = ("carry", "result")


@dataclass(frozen=True)
class PerturbConfig:
    """How many steps change, and by how much."""

    # Fraction of the intermediate steps whose result is changed: 1.0 changes every one;
    # lower leaves some steps right (harder to spot, weaker against a student).
    rate: float = 1.0
    # Largest change of a result (an offset in [1, max_offset], either sign): small offsets
    # keep the steps plausible, so a skimming harvester does not notice.
    max_offset: int = 3
    # "carry" (default): a changed result is carried into the next step, whose operand is
    # rewritten so the chain lands back on the teacher's next value; every line stays true
    # arithmetic and the chain stays consistent, so neither a calculator nor a chain check
    # can repair it (the operands no longer match the problem). "result": only the step's
    # result changes (the first design; a chain check undoes it byte for byte).
    mode: str = "carry"

    def __post_init__(self) -> None:
        if self.mode not in PERTURB_MODES:
            raise ConfigError(f"perturb mode must be one of {PERTURB_MODES}, not {self.mode!r}")
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
    if config.mode == "carry":
        return _perturb_carry(text, steps, bytes(key), config)
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


# --- carry mode: self-consistent chains ----------------------------------------------------
def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _express(left: int, target: int, op: str, operand: int) -> str:
    """A true step line from ``left`` to ``target``: the original operator and operand when
    they still fit, else the same operator with a new operand, else + or - the difference."""
    if _apply(left, op, operand) == target:
        return f"{left}{op}{operand}={target}"
    if op == "*" and left > 0 and target % left == 0 and target // left >= 2:
        return f"{left}*{target // left}={target}"
    diff = target - left
    return f"{left}+{diff}={target}" if diff >= 0 else f"{left}-{-diff}={target}"


def _new_result(
    key: bytes, m: re.Match[str], occurrence: int, left: int, avoid: set[int], config: PerturbConfig
) -> int | None:
    """The keyed wrong result of one step whose (served) left operand is ``left``: a changed
    multiplier for ``*`` steps, else the true result moved by 1..max_offset; never negative
    when the true one is not, never one of ``avoid`` (values that would give a no-op line)."""
    a, op, b, result = m.groups()
    _, raw = _draw(key, a, op, b, occurrence)
    true = _apply(left, op, int(b))
    candidates: list[int] = []
    if op == "*" and int(b) >= 2 and (raw >> 48) & 1:  # half the time a changed multiplier
        up = (raw >> 40) & 1 or int(b) - 1 < 2
        candidates.append(left * (int(b) + 1 if up else int(b) - 1))
    magnitude = 1 + raw % config.max_offset
    sign = 1 if (raw >> 32) & 1 else -1
    for extra in range(config.max_offset + 2):
        for s in (sign, -sign):
            candidates.append(true + s * (magnitude + extra))
    # Values that keep a + or - step's operator first (``15-1=14`` -> ``15-3=12``, not
    # ``15+2=17``): a flipped operator is easier to spot against the problem.
    keeps = {"+": lambda v: v > left, "-": lambda v: v < left}.get(op, lambda v: True)
    candidates.sort(key=lambda v: not keeps(v))
    for value in candidates:
        if value not in avoid and value != true and (value >= 0 or int(result) < 0):
            return value
    return None


def _perturb_carry(
    text: str, steps: list[re.Match[str]], key: bytes, config: PerturbConfig
) -> Perturbed:
    """Carry mode: a chosen step gets a wrong (keyed) result with an operand that makes its
    line true, and the next step starts from that result with an operand that lands on the
    teacher's next value. Only a step whose result the next step starts from is chosen (so
    the chain can land back); the last step and the final line are never changed."""
    values = [(int(m[1]), m[2], int(m[3]), int(m[4])) for m in steps]
    linked = [i + 1 < len(values) and values[i + 1][0] == values[i][3] for i in range(len(values))]
    seen: dict[tuple[str, str, str], int] = {}
    pieces: list[str] = []
    at = changed = 0
    carried: int | None = None  # the served result the next step starts from, if changed
    for i, m in enumerate(steps):
        a, op, b, result = values[i]
        occurrence = seen.get((m[1], m[2], m[3]), 0)
        seen[(m[1], m[2], m[3])] = occurrence + 1
        left = carried if carried is not None else a
        target = result
        if linked[i]:
            u, _ = _draw(key, m[1], m[2], m[3], occurrence)
            if u < config.rate:
                nxt = values[i + 1]
                avoid = {result, left, nxt[3]}
                new = _new_result(key, m, occurrence, left, avoid, config)
                target = new if new is not None else result
        line = _express(left, target, op, b)
        carried = target if target != result else None
        if line != m.group(0):
            pieces.append(text[at : m.start()])
            pieces.append(line)
            at = m.end()
            changed += 1
    pieces.append(text[at:])
    return Perturbed("".join(pieces), len(steps), changed)
