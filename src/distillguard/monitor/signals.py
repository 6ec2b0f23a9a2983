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
from distillguard.monitor.topics import TopicConfig, TopicSketch, prompt_topic
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
        )
        for name in ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"SignalConfig.{name} must be at least 1")
        if not 0 < self.frequent_share < 1:
            raise ConfigError("SignalConfig.frequent_share must be within (0, 1)")
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
    )


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
        self._model(features.model)
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

    def _model(self, model: str) -> None:
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
        )


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
