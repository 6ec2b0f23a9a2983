"""Per-account signals of distillation, updated one request at a time in bounded memory.

``AccountSketch`` is the only state an account has, offline and online alike: counters,
a 24-bin hour-of-day histogram, Welford moments of inter-arrival gaps, a bounded table of frame
shingles (template mining), a MinHash of the minutes it was active (synchronized timing across
accounts), a fixed-size reservoir of prompts, and a few capped maps of link keys (IP prefixes,
user agents, payment fingerprints). Its memory does not grow with the number of requests.

``AccountSketch.signals()`` turns the state into ``AccountSignals``: shares and rates shrunk
toward an ordinary user's prior while evidence is thin (an account with one request is neither
"100 % chain-of-thought" nor "perfectly regular").
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillguard.errors import ConfigError
from distillguard.mixing import GOLDEN_GAMMA, splitmix64_int
from distillguard.monitor.language import LANGUAGES, language_breadth, prompt_language
from distillguard.monitor.topics import (
    TOPICS,
    TopicConfig,
    TopicSketch,
    prompt_topic,
    topic_breadth,
)
from distillguard.traffic import TrafficRecord, prompt_text

# Chain-of-thought elicitation: generic English phrasings that ask a model to show reasoning.
COT_PATTERN = re.compile(
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|let'?s think|think (?:carefully|it through)"
    r"|show (?:me )?(?:all )?(?:of )?(?:your |the |all )?(?:work|working|steps|reasoning|"
    r"calculations)|explain (?:your |the |each |every |all )?(?:reasoning|steps?|solution)"
    r"|(?:full|detailed|complete) reasoning|intermediate steps?|numbered steps"
    r"|reason (?:through|it out)"
    r"|walk me through|break (?:it|this|the \w+) (?:down|into)|show (?:me )?how to (?:get|solve)"
    r"|each step|every step|lay out your reasoning|(?:talk|go) (?:me )?through"
)  # matched against lower-cased text
_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class SignalConfig:
    """Knobs of the sketches; defaults chosen for API traffic, not tuned per data set."""

    frame_words: int = 12  # words at each end of a prompt: where product/campaign frames live
    shingle_words: int = 3  # word n-gram size; 3 keeps common 2-word phrases from matching
    shingle_table: int = 256  # frame shingles kept per account (space-saving style pruning)
    frequent_share: float = 0.15  # a shingle in >= this share of prompts is part of a template
    frequent_min: int = 5  # ... and seen at least this often (no templates from 3 requests)
    templated_hits: int = 3  # frequent shingles a prompt needs to count as templated
    reservoir: int = 16  # prompts sampled per account for diversity (and embeddings)
    minhash_k: int = 64  # hash functions of the active-minute MinHash (synchronized timing)
    # "Same time" resolution for synchronization: fine enough that two busy but independent
    # accounts rarely share a bucket, coarse enough to hold a scheduler's wave (a few s).
    sync_bucket_s: float = 5.0
    burst_gap_s: float = 5.0  # gaps below this are bursts (humans rarely type that fast)
    prior_weight: float = 8.0  # pseudo-requests of an ordinary user's prior behind each share
    max_keys: int = 8  # IP prefixes / user agents / payment fingerprints kept per account
    seed: int = 1  # hash seed shared by every replica (MinHash must agree across processes)
    topics: TopicConfig = field(default_factory=TopicConfig)  # what the account extracts
    # Models whose name says they reason (the provider knows its own catalogue): asking one
    # of them, or setting ``reasoning_effort``, is asking for reasoning like a CoT frame.
    reasoning_models: str = r"think|reason"
    # Requests that define the models an account "was" using (model drift's baseline).
    model_history: int = 64
    # Every k-th exchange's prompt and answer are read for their language: the language mix
    # is a share, which a 1-in-4 sample estimates well, at a quarter of the cost.
    language_every: int = 4
    # End users (the request's ``user`` field) kept per account: a router or platform serves
    # many people under one account, and a harvest hidden among them is one of its heaviest
    # end users; pruning keeps the heaviest (the table never exceeds twice this).
    max_end_users: int = 64
    # Requests before an end user is judged on its own (a person's first few prompts are
    # neither broad nor narrow), and how many of the heaviest are judged.
    end_user_min: int = 20
    end_users_scored: int = 8
    # Half-life of the recent window of content (seconds): a day, so a broad sweep that
    # started yesterday (cover traffic, a switch to the newest model) is read at its
    # current rate, not diluted by the account's quiet past.
    recent_half_life_s: float = 86_400.0
    # Requests an account must have sent before a model it had not used counts as a switch
    # (a new account's first models are its baseline).
    switch_after: int = 16

    def __post_init__(self) -> None:
        ints = (
            "frame_words",
            "shingle_words",
            "shingle_table",
            "frequent_min",
            "templated_hits",
            "reservoir",
            "minhash_k",
            "max_keys",
            "model_history",
            "language_every",
            "max_end_users",
            "end_user_min",
            "end_users_scored",
            "switch_after",
        )
        for name in ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"SignalConfig.{name} must be at least 1")
        if not 0 < self.frequent_share < 1:
            raise ConfigError("SignalConfig.frequent_share must be within (0, 1)")
        if self.recent_half_life_s <= 0:
            raise ConfigError("SignalConfig.recent_half_life_s must be positive")
        if self.sync_bucket_s <= 0 or self.burst_gap_s <= 0 or self.prior_weight < 0:
            raise ConfigError("SignalConfig times must be positive, prior_weight >= 0")


# A typical answer's length in tokens (the prior of the output/input ratio).
PRIOR_ANSWER_TOKENS = 150.0
# Prior shares of an ordinary account (what thin evidence is shrunk toward).
PRIOR = {
    "cot": 0.03,
    "greedy": 0.2,
    "harvest": 0.01,
    "stream": 0.5,
    "templated": 0.05,
    "burst": 0.2,
    "quiet": 0.05,
    "model_drift": 0.02,
}


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What one request body says, extracted once."""

    text: str
    cot: bool  # asks for step-by-step reasoning
    greedy: bool  # temperature 0
    harvest: bool  # n > 1, logprobs or top_logprobs: asking for more than an answer
    stream: bool
    shingles: tuple[int, ...]  # hashes of the frame's word n-grams
    samples: int = 1  # completions asked for (n)
    topic: int = -1  # dominant capability domain of the prompt's tail (topics.TOPICS; -1 none)
    model: str = ""  # the model asked for
    user: str = ""  # the end user the account says it sends for (``user`` field), if any
    shape: int = 0  # the request's shape (system prompt, turns, sampling, length, tools)


def _stable_hash(s: str) -> int:
    return zlib.crc32(s.encode("utf-8", "surrogatepass"))


def frame_shingles(text: str, cfg: SignalConfig) -> tuple[int, ...]:
    """Hashes of word n-grams at the two ends of a prompt (bounded work for any length).

    The hash is CRC-32 of the n-gram, not Python's per-process salted ``hash``: which
    shingles a full table keeps depends on their values, so a salted hash made the same log
    score differently from one run (or engine worker) to the next."""
    span = cfg.frame_words * 16
    if len(text) <= 2 * span:
        words = text.lower().split()
        if len(words) > 2 * cfg.frame_words:
            words = words[: cfg.frame_words] + words[-cfg.frame_words :]
    else:
        words = text[:span].lower().split()[: cfg.frame_words]
        words += text[-span:].lower().split()[-cfg.frame_words :]
    k = cfg.shingle_words
    grams = zip(*(words[i:] for i in range(k)), strict=False)
    return tuple({_stable_hash(" ".join(g)) for g in grams})


# Cheap substrings one of which every chain-of-thought phrasing contains: most prompts skip
# the regular expression entirely.
_COT_HINTS = (
    "step",
    "reason",
    "think",
    "explain",
    "show",
    "walk",
    "through",
    "break",
    "chain",
    "calculation",
)


def request_features(request: dict[str, Any], cfg: SignalConfig) -> RequestFeatures:
    text = prompt_text(request)
    # Instructions live at the ends of a prompt; bounded work however long the payload is.
    window = text.lower() if len(text) <= 1200 else f"{text[:600]} {text[-600:]}".lower()
    temp = request.get("temperature")
    n = request.get("n")
    harvest = (
        bool(request.get("logprobs"))
        or bool(request.get("top_logprobs"))
        or (isinstance(n, int) and not isinstance(n, bool) and n > 1)
    )
    model = request.get("model")
    model = model if isinstance(model, str) else ""
    reasoning = request.get("reasoning_effort") is not None or request.get("reasoning") is not None
    if not reasoning and model:
        reasoning = _reasoning_model(cfg.reasoning_models, model)
    return RequestFeatures(
        text=text,
        cot=reasoning
        or (any(h in window for h in _COT_HINTS) and COT_PATTERN.search(window) is not None),
        greedy=isinstance(temp, int | float) and not isinstance(temp, bool) and temp == 0,
        harvest=harvest,
        stream=request.get("stream") is True,
        samples=min(n, 128) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1,
        shingles=frame_shingles(text, cfg),
        topic=prompt_topic(text, cfg.topics),
        model=model[:64],
        user=_end_user(request),
        shape=request_shape(request),
    )


def _bucket(x: object, edges: tuple[float, ...]) -> int:
    if not isinstance(x, int | float) or isinstance(x, bool):
        return 0
    return 1 + sum(x > e for e in edges)


def request_shape(request: dict[str, Any]) -> int:
    """What kind of request this is, apart from its content, model and conversation turn:
    system prompt or not, temperature and length asked for, streaming, tools. An
    integration sends a few shapes forever (a person's client too); requests of a shape it
    never sent before are traffic that is not the integration (cover traffic riding on its
    account). The turn is left out: a person's follow-ups are not a new kind of request."""
    msgs = request.get("messages")
    system = bool(request.get("instructions"))
    if isinstance(msgs, list):
        system = system or any(
            isinstance(m, dict) and m.get("role") in ("system", "developer") for m in msgs
        )
    temp = _bucket(request.get("temperature"), (0.0, 0.6, 0.99))  # 0..4
    length = _bucket(
        request.get("max_tokens", request.get("max_completion_tokens")), (256.0, 1024.0)
    )  # 0..3
    return (
        int(system)
        | (temp << 1)
        | (length << 4)
        | (int(request.get("stream") is True) << 6)
        | (int(bool(request.get("tools"))) << 7)
    )


def _end_user(request: dict[str, Any]) -> str:
    user = request.get("user")
    if isinstance(user, str):
        return user[:64]
    meta = request.get("metadata")  # some platforms tag the end user in metadata instead
    if isinstance(meta, dict):
        u = meta.get("user") or meta.get("user_id")
        if isinstance(u, str):
            return u[:64]
    return ""


_REASONING_CACHE: dict[tuple[str, str], bool] = {}


def _reasoning_model(pattern: str, model: str) -> bool:
    key = (pattern, model)
    hit = _REASONING_CACHE.get(key)
    if hit is None:
        hit = re.search(pattern, model.lower()) is not None
        if len(_REASONING_CACHE) < 4096:  # model names are few; bound it anyway
            _REASONING_CACHE[key] = hit
    return hit


def ip_prefix(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) network of an address: what a proxy pool shares."""
    parts = ip.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        return f"{parts[0]}.{parts[1]}.{parts[2]}.0/24"  # fast path for the common case
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"raw:{ip}"
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


class MinHasher:
    """Bottom-k MinHash of integer keys (time buckets): one 64-bit mix per key, and a sketch
    keeps the k smallest values. Two accounts active in the same buckets share many of them.
    Pure integer arithmetic: a fraction of a microsecond per new bucket."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        # splitmix64_int adds one GOLDEN_GAMMA itself: x + seed * GOLDEN_GAMMA in all
        self.salt = ((seed - 1) * GOLDEN_GAMMA) & _M64

    def hash(self, x: int) -> int:
        return splitmix64_int(x + self.salt)  # every input bit moves every output bit


@dataclass(slots=True)
class EndUserSketch:
    """What one end user of an account (the ``user`` field) extracts: a small sketch, judged
    like an account of its own (a router's end users are people; a harvest among them is
    not)."""

    first_ts: float
    last_ts: float = -math.inf
    n: int = 0
    cot: int = 0
    harvest: int = 0
    topics: list[float] = field(default_factory=list)  # (T,) prompts per domain

    def observe(self, f: RequestFeatures, ts: float) -> None:
        self.n += 1
        self.cot += f.cot
        self.harvest += f.harvest
        self.first_ts = min(self.first_ts, ts)
        self.last_ts = max(self.last_ts, ts)
        if f.topic >= 0:
            if not self.topics:
                self.topics = [0.0] * len(TOPICS)
            self.topics[f.topic] += 1

    def signals(self, cfg: SignalConfig) -> AccountSignals:
        k = cfg.prior_weight
        n = self.n
        counts = self.topics or [0.0] * len(TOPICS)
        span_h = max(1.0, (self.last_ts - self.first_ts) / 3600.0)
        return AccountSignals(
            requests=n,
            rate_per_hour=n / span_h,
            active_hours=0,
            templated_share=PRIOR["templated"],
            cot_share=(self.cot + PRIOR["cot"] * k) / (n + k),
            greedy_share=PRIOR["greedy"],
            harvest_share=(self.harvest + PRIOR["harvest"] * k) / (n + k),
            stream_share=PRIOR["stream"],
            burst_share=PRIOR["burst"],
            gap_cv=2.0,
            quiet_share=PRIOR["quiet"],
            out_in_ratio=1.0,
            content_similarity=0.0,
            out_of_order=0,
            topic_breadth=topic_breadth(np.asarray(counts), cfg.topics.prior_weight),
            topic_counts=tuple(counts),
            first_ts=self.first_ts,
            last_ts=self.last_ts,
        )


@dataclass
class AccountSketch:
    """Streaming state of one account (bounded: nothing grows with its request count)."""

    cfg: SignalConfig
    hasher: MinHasher
    n: int = 0
    n_failed: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    out_of_order: int = 0
    gap_n: int = 0
    gap_mean: float = 0.0
    gap_m2: float = 0.0
    bursts: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    cot: int = 0
    greedy: int = 0
    harvest: int = 0
    stream: int = 0
    templated: int = 0
    prompt_chars: int = 0
    completion_tokens: int = 0
    responses: int = 0
    shingles: dict[int, int] = field(default_factory=dict)
    minhash: list[int] = field(default_factory=list)  # max-heap (negated) of k smallest
    buckets: int = 0
    last_bucket: int = -1
    reservoir: list[str] = field(default_factory=list)
    prefixes: dict[str, int] = field(default_factory=dict)
    user_agents: dict[str, int] = field(default_factory=dict)
    payments: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    topics: TopicSketch | None = None  # created on first use with cfg.topics
    languages: list[int] = field(default_factory=lambda: [0] * len(LANGUAGES))  # (L,)
    early_models: dict[str, int] = field(default_factory=dict)  # models of the first requests
    late: int = 0  # requests after the model history
    late_new_model: int = 0  # ... that asked for a model absent from the history
    samples: int = 0  # completions asked for (sum of n): a harvest's yield
    end_users: dict[str, EndUserSketch] = field(default_factory=dict)  # heaviest end users
    # (T,) topic counts decayed in time (half-life cfg.recent_half_life_s), stored relative
    # to ``_recent_anchor`` (value * 2^((ts - anchor) / half-life)): no per-request decay pass
    recent_topics: list[float] = field(default_factory=list)
    _recent_anchor: float = math.nan
    # model -> [requests, first ts, account requests before it]: a switch and its volume
    models: dict[str, list[float]] = field(default_factory=dict)
    # request shapes of the first ``model_history`` requests, and decayed like recent_topics
    early_shapes: dict[int, int] = field(default_factory=dict)
    recent_shapes: dict[int, float] = field(default_factory=dict)
    _similarity: float = 0.0  # cached content_similarity (pairwise work: refreshed rarely)
    _similarity_n: int = 0

    # ---- updates ----------------------------------------------------------------------------
    def observe(
        self,
        *,
        ts: float,
        ip: str,
        user_agent: str | None,
        payment: str | None,
        features: RequestFeatures,
    ) -> bool:
        """Fold one request in; returns whether the prompt matched the account's template."""
        cfg = self.cfg
        self.n += 1
        self._time(ts)
        self.cot += features.cot
        self.greedy += features.greedy
        self.harvest += features.harvest
        self.stream += features.stream
        self.prompt_chars += len(features.text)
        templated = self._template(features.shingles)
        if self.topics is None:
            self.topics = TopicSketch(cfg.topics)
        self.topics.observe(features.topic)
        if self.n % cfg.language_every == 0:
            lang = prompt_language(features.text)
            if lang >= 0:
                self.languages[lang] += 1
        self._model(features.model, ts)
        w = self._weight(ts)
        self._recent(features.topic, w)
        self._shape(features.shape, w)
        if features.user:
            self._end_user(features, ts)
        self.samples += features.samples
        self.templated += templated
        if len(self.reservoir) < cfg.reservoir:
            self.reservoir.append(features.text[:400])
        else:
            j = self.rng.randrange(self.n)
            if j < cfg.reservoir:
                self.reservoir[j] = features.text[:400]
        _bump(self.prefixes, ip_prefix(ip), cfg.max_keys)
        if user_agent:
            _bump(self.user_agents, user_agent, cfg.max_keys)
        if payment:
            _bump(self.payments, payment, cfg.max_keys)
        return templated

    def observe_response(
        self, *, completion_tokens: int | None, response_text: str | None, ok: bool = True
    ) -> None:
        if not ok:
            self.n_failed += 1
            return
        if response_text and self.n % self.cfg.language_every == 0:
            # The language of what was extracted: a multilingual harvest asks for answers in
            # many languages (often with an English payload).
            lang = prompt_language(response_text)
            if lang >= 0:
                self.languages[lang] += 1
        if completion_tokens is None and response_text is not None:
            completion_tokens = max(1, len(response_text) // 4)
        if completion_tokens is not None:
            self.completion_tokens += completion_tokens
            self.responses += 1

    def _time(self, ts: float) -> None:
        cfg = self.cfg
        self.hours[int(ts // 3600) % 24] += 1
        self.first_ts = min(self.first_ts, ts)
        if ts >= self.last_ts:
            if self.last_ts > -math.inf:
                gap = ts - self.last_ts
                self.bursts += gap < cfg.burst_gap_s
                self.gap_n += 1
                d = gap - self.gap_mean
                self.gap_mean += d / self.gap_n
                self.gap_m2 += d * (gap - self.gap_mean)
            self.last_ts = ts
        else:
            self.out_of_order += 1  # late arrival: counted in volume, not in gap moments
        bucket = int(ts // cfg.sync_bucket_s)
        if bucket != self.last_bucket:
            self.last_bucket = bucket
            self.buckets += 1
            h = -self.hasher.hash(bucket)
            heap = self.minhash
            if len(heap) < cfg.minhash_k:
                if h not in heap:
                    heapq.heappush(heap, h)
            elif h > heap[0] and h not in heap:
                heapq.heapreplace(heap, h)

    def _weight(self, ts: float) -> float:
        """This request's weight in the time-decayed windows (2^((ts - anchor) / half-life)),
        moving the anchor before the weights overflow."""
        if math.isnan(self._recent_anchor):
            self._recent_anchor = ts
        e = (ts - self._recent_anchor) / self.cfg.recent_half_life_s
        if e > 200.0:
            f = 2.0 ** (-e)
            self.recent_topics = [v * f for v in self.recent_topics]
            self.recent_shapes = {k: v * f for k, v in self.recent_shapes.items()}
            self._recent_anchor, e = ts, 0.0
        return 2.0 ** max(-200.0, e)

    def _recent(self, topic: int, w: float) -> None:
        if topic < 0:
            return
        if not self.recent_topics:
            self.recent_topics = [0.0] * len(TOPICS)
        self.recent_topics[topic] += w

    def _shape(self, shape: int, w: float) -> None:
        cap = 4 * self.cfg.max_keys
        early = self.early_shapes
        if self.n <= self.cfg.model_history and (shape in early or len(early) < cap):
            self.early_shapes[shape] = self.early_shapes.get(shape, 0) + 1
        rs = self.recent_shapes
        if shape in rs:
            rs[shape] += w
        elif len(rs) < cap:
            rs[shape] = w
        else:  # full: the shape replaces the faintest (space-saving)
            low = min(rs, key=rs.__getitem__)
            rs[shape] = rs.pop(low) + w

    def shape_drift(self) -> float:
        """Share of the recent window's requests of shapes the account's history did not
        have (total variation between the early and the recent shape mix, each shrunk by
        ``prior_weight`` pseudo-requests spread over the early shapes): 0 until the account
        has a history."""
        if self.n <= self.cfg.model_history or not self.recent_shapes:
            return 0.0
        k = self.cfg.prior_weight
        early_n = float(sum(self.early_shapes.values()))
        total = float(sum(self.recent_shapes.values()))
        tv = 0.0
        for shape in set(self.early_shapes) | set(self.recent_shapes):
            pe = self.early_shapes.get(shape, 0) / early_n
            pr = (self.recent_shapes.get(shape, 0.0) + k * pe) / (total + k)
            tv += max(0.0, pr - pe)
        return tv

    def recent_counts(self) -> np.ndarray:  # (T,) topic counts decayed to the last request
        if not self.recent_topics:
            return np.zeros(len(TOPICS))
        e = (self.last_ts - self._recent_anchor) / self.cfg.recent_half_life_s
        return np.asarray(self.recent_topics) * 2.0 ** (-max(-200.0, e))

    def _end_user(self, f: RequestFeatures, ts: float) -> None:
        users = self.end_users
        u = users.get(f.user)
        if u is None:
            if len(users) >= 2 * self.cfg.max_end_users:
                keep = sorted(users.items(), key=lambda kv: kv[1].n, reverse=True)
                self.end_users = users = dict(keep[: self.cfg.max_end_users])
            u = users[f.user] = EndUserSketch(first_ts=ts)
        u.observe(f, ts)

    def _model(self, model: str, ts: float = math.nan) -> None:
        m = self.models.get(model)
        if m is None:
            if len(self.models) < self.cfg.max_keys:
                self.models[model] = [1.0, ts, float(self.n - 1)]
        else:
            m[0] += 1
        if self.n <= self.cfg.model_history:
            _bump(self.early_models, model, self.cfg.max_keys)
        else:
            self.late += 1
            self.late_new_model += model not in self.early_models

    def _template(self, shingles: tuple[int, ...]) -> bool:
        cfg = self.cfg
        table = self.shingles
        floor = max(cfg.frequent_min, cfg.frequent_share * self.n)
        hits = 0
        for s in shingles:
            c = table.get(s)
            if c is None:
                table[s] = 1
            else:
                hits += c >= floor
                table[s] = c + 1
        if len(table) > 2 * cfg.shingle_table:
            keep = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[: cfg.shingle_table]
            self.shingles = dict(keep)
        return hits >= cfg.templated_hits

    # ---- read-out ---------------------------------------------------------------------------
    def bottom_k(self) -> tuple[int, ...]:
        """The k smallest bucket hashes, ascending (the timing signature for linking)."""
        return tuple(sorted(-h for h in self.minhash))

    def frequent_shingles(self) -> frozenset[int]:
        floor = max(self.cfg.frequent_min, self.cfg.frequent_share * self.n)
        return frozenset(s for s, c in self.shingles.items() if c >= floor)

    def signals(self) -> AccountSignals:
        n = self.n
        k = self.cfg.prior_weight

        def share(count: float, prior_key: str, total: float = n) -> float:
            return (count + PRIOR[prior_key] * k) / (total + k)

        cv = 0.0
        if self.gap_n >= 2 and self.gap_mean > 0:
            cv = math.sqrt(self.gap_m2 / (self.gap_n - 1)) / self.gap_mean
        # Human gap CV is well above 1 (sessions); shrink few-gap accounts toward 2.
        cv = (cv * self.gap_n + 2.0 * k) / (self.gap_n + k)
        h2 = self.hours + self.hours
        quiet = min(sum(h2[i : i + 6]) for i in range(24)) if n else 0.0
        # Pairwise similarity of the reservoir costs ~0.2 ms: measured from 64 requests on (the
        # reservoir is full and the figure means something), refreshed when the account has
        # doubled (or grown by 512) since the last time, which amortizes to nothing.
        if n >= 64 and (n >= 2 * self._similarity_n or n - self._similarity_n >= 512):
            self._similarity = content_similarity(self.reservoir, self.cfg)
            self._similarity_n = n
        span_h = max(1.0, (self.last_ts - self.first_ts) / 3600.0) if n > 1 else 1.0
        mean_in = self.prompt_chars / max(1, n) / 4.0
        # Shrunk toward a typical answer length: an account whose few requests failed (no
        # output yet) must not look like one that asks for nothing back.
        mean_out = (self.completion_tokens + PRIOR_ANSWER_TOKENS * k) / (self.responses + k)
        totals = self.topics.total if self.topics else []
        recent = self.recent_counts()  # (T,)
        recent_off = 0.0
        if totals and recent.sum() > 0:
            recent_off = float(recent.sum() - recent[int(np.argmax(totals))])
        heavy = sorted(self.end_users.items(), key=lambda kv: kv[1].n, reverse=True)
        users = tuple(
            (u, e.signals(self.cfg))
            for u, e in heavy[: self.cfg.end_users_scored]
            if e.n >= self.cfg.end_user_min
        )
        return AccountSignals(
            requests=n,
            rate_per_hour=n / span_h,
            active_hours=sum(1 for h in self.hours if h),
            templated_share=share(self.templated, "templated"),
            cot_share=share(self.cot, "cot"),
            greedy_share=share(self.greedy, "greedy"),
            harvest_share=share(self.harvest, "harvest"),
            stream_share=share(self.stream, "stream"),
            burst_share=share(self.bursts, "burst", self.gap_n),
            gap_cv=cv,
            quiet_share=share(quiet, "quiet"),
            out_in_ratio=(mean_out + 1.0) / (mean_in + 1.0),
            content_similarity=self._similarity,
            out_of_order=self.out_of_order,
            topic_breadth=self.topics.breadth() if self.topics else 0.0,
            topic_drift=self.topics.drift() if self.topics else 0.0,
            topic_counts=tuple(self.topics.total) if self.topics else (),
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            language_breadth=language_breadth(self.languages, k),
            language_counts=tuple(self.languages),
            model_drift=share(self.late_new_model, "model_drift", self.late),
            samples_per_request=(self.samples + k) / (n + k),
            # decayed sum of a steady rate r per day is r * half-life / ln 2
            recent_off_rate=recent_off * math.log(2) * 86_400.0 / self.cfg.recent_half_life_s,
            model_jump=self._model_jump(),
            shape_drift=self.shape_drift(),
            end_users=users,
        )

    def _model_jump(self) -> float:
        """log of how much faster the account sends to a model it switched to (first asked
        after ``switch_after`` requests) than it sent before the switch, per day (spans of at
        least a day, ``prior_weight`` pseudo-requests on both sides): 0 without a switch."""
        k = self.cfg.prior_weight
        best = None
        for count, first, before in self.models.values():
            eligible = before >= self.cfg.switch_after and math.isfinite(first)
            if eligible and (best is None or count > best[0]):
                best = (count, first, before)
        if best is None:
            return 0.0
        count, first, before = best
        day = 86_400.0
        after_rate = (count + k) / max(1.0, (self.last_ts - first) / day)
        before_rate = (before + k) / max(1.0, (first - self.first_ts) / day)
        return max(0.0, math.log(after_rate / before_rate))


def _bump(d: dict[str, int], key: str, cap: int) -> None:
    if key in d:
        d[key] += 1
    elif len(d) < cap:
        d[key] = 1


_WORD = re.compile(r"[a-z]{3,}")


def content_similarity(samples: list[str], cfg: SignalConfig) -> float:
    """Mean pairwise Jaccard of sampled prompts' word sets: a narrow domain sweep is high,
    people's varied requests are low. Frame words shared by every sample are removed first
    so that a product template does not count as sameness of content."""
    if len(samples) < 3:
        return 0.0
    sets = [set(_WORD.findall(s.lower())) for s in samples]
    common = set.intersection(*sets)
    sets = [s - common for s in sets]
    total, pairs = 0.0, 0
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            u = len(sets[i] | sets[j])
            if u:
                total += len(sets[i] & sets[j]) / u
                pairs += 1
    return total / pairs if pairs else 0.0


@dataclass(frozen=True)
class AccountSignals:
    """Per-account signal values (shares are shrunk toward an ordinary user's prior)."""

    requests: int
    rate_per_hour: float  # requests per hour over the account's active span
    active_hours: int  # distinct hours of day (0-24) with any request
    templated_share: float  # prompts matching the account's own mined frame
    cot_share: float  # prompts eliciting step-by-step reasoning
    greedy_share: float  # requests at temperature 0
    harvest_share: float  # requests with n > 1 or logprobs
    stream_share: float  # requests streamed (a person reading along)
    burst_share: float  # gaps shorter than a person types
    gap_cv: float  # coefficient of variation of inter-arrival gaps (regular scripts: low)
    quiet_share: float  # share in the quietest 6 hours of day (people sleep: near 0)
    out_in_ratio: float  # mean completion tokens over mean prompt tokens
    content_similarity: float  # word overlap between sampled prompts after removing frames
    out_of_order: int  # requests that arrived earlier than one already seen
    topic_breadth: float = 0.0  # normalized entropy of capability domains (0 one, 1 all)
    topic_drift: float = 0.0  # JS divergence of the recent topic mix from the first requests
    topic_counts: tuple[float, ...] = ()  # (T,) prompts per domain (pooled for clusters)
    first_ts: float = math.inf  # first request seen (account age, with the accounts file)
    last_ts: float = -math.inf  # last request seen
    language_breadth: float = 0.0  # effective number of prompt languages - 1 (shrunk)
    language_counts: tuple[float, ...] = ()  # (L,) prompts per language (pooled for clusters)
    model_drift: float = 0.0  # share of later requests asking a model unseen in the first 64
    samples_per_request: float = 1.0  # completions asked for per request (mean n)
    # off-domain prompts per day in the recent window (a day's half-life): what the account
    # extracts now, undiluted by a quiet past
    recent_off_rate: float = 0.0
    model_jump: float = 0.0  # log rate ratio after / before switching to a model (0: none)
    shape_drift: float = 0.0  # recent share of request shapes the account's history lacks
    # the heaviest end users (``user`` field) with enough requests: (user, their signals)
    end_users: tuple[tuple[str, AccountSignals], ...] = ()

    def vector(self) -> np.ndarray:  # (F,) float64, the score's inputs
        return np.array(
            [
                math.log1p(self.requests),
                math.log1p(self.rate_per_hour),
                self.templated_share,
                self.cot_share,
                self.greedy_share,
                self.harvest_share,
                self.stream_share,
                self.burst_share,
                math.log(max(self.gap_cv, 1e-3)),
                self.quiet_share,
                math.log(self.out_in_ratio),
                self.content_similarity,
            ]
        )


FEATURES = (
    "log_requests",
    "log_rate",
    "templated_share",
    "cot_share",
    "greedy_share",
    "harvest_share",
    "stream_share",
    "burst_share",
    "log_gap_cv",
    "quiet_share",
    "log_out_in",
    "content_similarity",
)


def new_sketch(cfg: SignalConfig, hasher: MinHasher, account_id: str) -> AccountSketch:
    # The reservoir's RNG is seeded per account so results do not depend on arrival order
    # of other accounts.
    return AccountSketch(cfg, hasher, rng=random.Random(_stable_hash(account_id)))


def observe_record(sketch: AccountSketch, rec: TrafficRecord) -> bool:
    feats = request_features(rec.request, sketch.cfg)
    templated = sketch.observe(
        ts=rec.ts,
        ip=rec.ip,
        user_agent=rec.user_agent,
        payment=rec.payment_fingerprint,
        features=feats,
    )
    sketch.observe_response(
        completion_tokens=rec.completion_tokens,
        response_text=rec.response_text,
        ok=200 <= rec.status < 300,
    )
    return templated
