"""What an account extracts: a fixed topic sketch of its prompts, breadth and drift.

An integration (a support bot, a translation service, a tutor) serves one domain, however
machine-like its timing; a harvest sweeps the capability space. The sketch maps words of a
prompt to a fixed, shipped lexicon of capability domains (no model, no training data: it is
the same for every provider and every generator) and keeps, per account, two small count
vectors: the topics of its first ``history`` requests (what the account was) and an
exponentially decayed recent window (what it is now). From them:

- ``breadth``: normalized entropy of the account's topic distribution (0: one domain, 1: every
  domain alike), shrunk toward a single-domain prior while few prompts carry a topic;
- ``drift``: Jensen-Shannon divergence between the early and the recent topic mix (an
  established account that starts sweeping other domains: cover traffic, a takeover).

Cost per request: one regular-expression pass over at most ``window`` characters and a dict
lookup per word; memory: 2 x ``len(TOPICS)`` floats per account.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from distillguard.errors import ConfigError

# Capability domains and words that mark them. Chosen by hand from general knowledge of what
# people ask an LLM about (not from any traffic generator's prompt pool); a word belongs to one
# domain only. Frame words ("answer", "question", "please") are deliberately absent.
_LEXICON: dict[str, str] = {
    "math": "equation algebra integer integers fraction fractions percent percentage calculate "
    "multiply divide divided sum product probability geometry triangle circle radius area "
    "perimeter polynomial derivative integral theorem prime ratio average remainder digits",
    "code": "python javascript java function functions variable code compile compiler bug "
    "debug array arrays class method api json sql query database regex script loop "
    "recursion github programming typescript rust golang html css",
    "science": "physics chemistry molecule molecules atom atoms energy gravity electron "
    "photosynthesis cell cells dna evolution species planet planets orbit quantum "
    "velocity acceleration experiment hypothesis element elements",
    "medicine": "health disease symptoms symptom doctor medicine medication treatment "
    "diagnosis patient patients blood vaccine virus infection pain diabetes cancer "
    "therapy nutrition vitamin calories diet",
    "law": "legal law laws court contract lawyer attorney rights liability lawsuit tenant "
    "landlord copyright patent regulation regulations constitution judge crime criminal",
    "finance": "money invest investment investing stock stocks bank loan mortgage tax "
    "taxes budget salary interest inflation crypto bitcoin retirement insurance "
    "credit debt revenue profit accounting",
    "history": "history historical war wars century empire ancient revolution president "
    "king queen medieval civilization dynasty colonial independence",
    "geography": "country countries city cities capital continent river mountain ocean "
    "population climate map island border europe asia africa america",
    "writing": "poem poetry story stories essay novel character characters plot write "
    "rewrite haiku lyrics fiction narrative paragraph sentence sentences grammar",
    "language": "translate translation spanish french german chinese japanese italian "
    "portuguese english language languages word words meaning synonym pronounce",
    "business": "business marketing customer customers product products sales startup "
    "company brand strategy manager employee employees meeting email resume interview",
    "food": "recipe recipes cook cooking bake baking ingredients chicken dish dishes "
    "meal meals restaurant flavor sauce vegetables dessert cake",
    "travel": "travel trip hotel flight flights visit vacation tourist destination airport "
    "itinerary beach",
    "sports": "football soccer basketball baseball tennis game team player players score "
    "league match olympics athlete coach",
    "entertainment": "movie movies film films music song songs album band actor actress "
    "show series netflix book books game games video",
    "tech": "computer computers phone iphone android laptop software hardware internet "
    "wifi network server cloud app apps install password",
    "philosophy": "philosophy ethics moral morality meaning life consciousness religion "
    "god belief beliefs existence truth",
    "home": "house home garden plant plants clean cleaning furniture kitchen repair dog "
    "dogs cat cats pet pets baby child children parenting",
    "education": "student students teacher school college university exam homework class "
    "course learn learning lesson study",
    "reasoning": "logic puzzle riddle true false implies conclusion premise argument "
    "assumption infer inference deduce",
}
TOPICS: tuple[str, ...] = tuple(_LEXICON)
WORD_TOPIC: dict[str, int] = {}
for _i, _name in enumerate(TOPICS):
    for _w in _LEXICON[_name].split():
        WORD_TOPIC.setdefault(_w, _i)
_WORD = re.compile(r"[a-z]{3,}")


@dataclass(frozen=True)
class TopicConfig:
    """Knobs of the topic sketch (defaults reasoned, not tuned on any generator)."""

    window: int = 600  # characters of a prompt read (the tail: where the user's content sits)
    history: int = 64  # first requests that define what the account "was" (drift baseline)
    half_life: float = 128.0  # requests: the recent window's decay (weeks of an app's traffic)
    prior_weight: float = 16.0  # pseudo-prompts of one domain behind each account's breadth

    def __post_init__(self) -> None:
        if self.window < 16 or self.history < 1 or self.half_life <= 0:
            raise ConfigError("TopicConfig: window >= 16, history >= 1, half_life > 0")
        if self.prior_weight < 0:
            raise ConfigError("TopicConfig.prior_weight must be >= 0")


def prompt_topic(text: str, cfg: TopicConfig) -> int:
    """The dominant topic of a prompt's tail (-1: no lexicon word).

    A prompt counts once, for its dominant domain: one long document must not read as broad."""
    tail = text[-cfg.window :].lower()
    counts: dict[int, int] = {}
    for w in _WORD.findall(tail):
        t = WORD_TOPIC.get(w)
        if t is not None:
            counts[t] = counts.get(t, 0) + 1
    if not counts:
        return -1
    return max(counts.items(), key=lambda kv: (kv[1], -kv[0]))[0]


@dataclass
class TopicSketch:
    """Bounded per-account topic state: early counts and a decayed recent mix.

    Plain lists, and the decay is lazy (a running scale instead of touching every topic on
    every request): this runs once per request on the scoring hot path."""

    cfg: TopicConfig
    seen: int = 0  # requests observed (with or without a topic)
    early: list[float] = field(default_factory=lambda: [0.0] * len(TOPICS))  # (T,)
    total: list[float] = field(default_factory=lambda: [0.0] * len(TOPICS))  # (T,) all time
    _recent: list[float] = field(default_factory=lambda: [0.0] * len(TOPICS))  # (T,) / _scale
    _scale: float = 1.0  # recent = _recent * _scale (decays by one step per request)

    def observe(self, topic: int) -> None:
        self.seen += 1
        self._scale *= 0.5 ** (1.0 / self.cfg.half_life)
        if self._scale < 1e-150:  # fold the scale back in before it underflows
            self._recent = [v * self._scale for v in self._recent]
            self._scale = 1.0
        if topic < 0:
            return
        if self.seen <= self.cfg.history:
            self.early[topic] += 1
        self._recent[topic] += 1.0 / self._scale
        self.total[topic] += 1

    @property
    def recent(self) -> np.ndarray:  # (T,) decayed topic counts
        return np.asarray(self._recent) * self._scale

    def breadth(self) -> float:
        return topic_breadth(np.asarray(self.total), self.cfg.prior_weight)

    def drift(self) -> float:
        if self.seen <= self.cfg.history:
            return 0.0  # no history to drift from yet
        return topic_drift(np.asarray(self.early), self.recent, self.cfg.prior_weight)


def topic_breadth(counts: np.ndarray, prior_weight: float) -> float:
    """Normalized entropy of (T,) topic counts, shrunk toward one domain.

    The prior puts ``prior_weight`` pseudo-prompts on the account's own top topic, so five
    prompts on five topics are not yet "broad" and a thousand are."""
    c = np.asarray(counts, dtype=np.float64).copy()
    if c.sum() <= 0:
        return 0.0
    c[int(np.argmax(c))] += prior_weight
    p = c / c.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(len(TOPICS)))


def topic_drift(early: np.ndarray, recent: np.ndarray, prior_weight: float) -> float:
    """Jensen-Shannon divergence (base 2, 0-1) of two (T,) topic mixes, each smoothed toward
    uniform by ``prior_weight`` / T pseudo-counts per topic (thin windows do not drift)."""
    t = len(TOPICS)
    a = np.asarray(early, dtype=np.float64) + prior_weight / t
    b = np.asarray(recent, dtype=np.float64) + prior_weight / t
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        return float((x * np.log2(x / y)).sum())

    return max(0.0, 0.5 * kl(a, m) + 0.5 * kl(b, m))
