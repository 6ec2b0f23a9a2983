"""From signals to a calibrated score with reasons, and the operating point that flags.

Two kinds of evidence, kept apart so that neither convicts on what legitimate apps do:

- **What is extracted** (``ScoreModel``): a logistic model over features that describe the
  content an account pulls out of the model, never how machine-like it is: volume,
  chain-of-thought elicitation, n>1/logprobs harvesting, topical breadth over a fixed
  capability lexicon, drift from the account's own history. Every weight is constrained to
  be >= 0 (more of any of these can only raise suspicion), so a fit on one generator cannot
  learn that generator's quirks as "streaming means honest". Machine timing, templates and
  output/input ratios are *not* inputs: an integration has all of them. The output is a
  probability calibrated on the fitting generator, plus a p-value against that generator's
  honest accounts (``p_honest``). The flag threshold keeps the fitting generator's honest FPR
  at or below 1e-3.
- **Coordination** (``coordination.py``): a linked cluster's family-wise p-value under a
  permutation null of the population itself. A coordinated cluster sweeping broad content is
  acted on with no chain-of-thought in sight (``decide`` in ``offline.py``).

A cluster is scored as one actor: its members' signals are merged (volumes add, shares are
request-weighted) and every member gets the larger of its own and its cluster's score.
The shipped ``score_model.json`` says what it was fitted on (generator, split, date,
features, counts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.errors import ConfigError, InputError
from distillguard.monitor.signals import PRIOR, AccountSignals, SignalConfig
from distillguard.monitor.topics import topic_breadth

SCORE_FEATURES = ("log_requests", "cot_share", "harvest_share", "topic_breadth", "topic_drift")
MODEL_FILE = "score_model.json"


@dataclass(frozen=True)
class ScoreModel:
    """Standardized, sign-constrained logistic model and its operating point."""

    weights: tuple[float, ...]  # (F,) log-odds per standard deviation of each feature (>= 0)
    bias: float
    mean: tuple[float, ...]  # (F,) feature means on the fitting data
    scale: tuple[float, ...]  # (F,) feature standard deviations on the fitting data
    threshold: float  # flag when score >= threshold (honest FPR <= target on fitting data)
    reason_min: float = 1.0  # a feature is a reason when it adds at least this much log-odds
    fitted_on: str = ""  # one-line provenance
    features: tuple[str, ...] = SCORE_FEATURES  # (F,) names, checked against the code's
    # (K,) sorted scores of the fitting generator's honest accounts (quantiles when many):
    # a score's p-value against honest traffic.
    honest_scores: tuple[float, ...] = ()
    honest_accounts: int = 0  # honest accounts behind honest_scores
    provenance: dict = field(default_factory=dict)  # generator, split, date, counts, target

    def __post_init__(self) -> None:
        f = len(SCORE_FEATURES)
        if tuple(self.features) != SCORE_FEATURES:
            raise ConfigError(
                f"score model features {list(self.features)} are not this "
                f"version's {list(SCORE_FEATURES)}: refit it"
            )
        if not (len(self.weights) == len(self.mean) == len(self.scale) == f):
            raise ConfigError(f"score model must have {f} weights, means and scales")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError("score model threshold must be within [0, 1]")
        if any(s <= 0 for s in self.scale):
            raise ConfigError("score model scales must be positive")

    def contributions(self, x: np.ndarray) -> np.ndarray:  # (F,) -> (F,) log-odds terms
        return np.asarray(self.weights) * (x - np.asarray(self.mean)) / np.asarray(self.scale)

    def logit(self, x: np.ndarray) -> float:
        return self.bias + float(self.contributions(x).sum())

    def score(self, x: np.ndarray, offset: float = 0.0) -> float:
        """Calibrated probability; ``offset`` log-odds are subtracted (a trust tier)."""
        z = self.logit(x) - offset
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def score_many(self, xs: np.ndarray) -> np.ndarray:  # (N, F) -> (N,)
        z = self.bias + ((xs - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(
            self.weights
        )
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def p_honest(self, score: float) -> float | None:
        """Share of the fitting generator's honest accounts scoring at least ``score``
        (conformal, +1 smoothed); None when the model carries no honest scores."""
        if not self.honest_scores:
            return None
        qs = np.asarray(self.honest_scores)
        above = (len(qs) - np.searchsorted(qs, score, side="left")) / len(qs)
        n = max(self.honest_accounts, len(qs))
        return float((above * n + 1) / (n + 1))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | None = None) -> ScoreModel:
        """The shipped model (``path`` None) or one written by ``save``."""
        try:
            if path is None:
                text = resources.files("distillguard.monitor").joinpath(MODEL_FILE).read_text()
            else:
                text = Path(path).read_text()
            d: dict[str, Any] = json.loads(text)
            fields_: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
            }
            return cls(**fields_)
        except FileNotFoundError as exc:
            raise ConfigError(f"score model not found: {path or MODEL_FILE}") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"score model {path or MODEL_FILE} is not valid: {exc}") from exc


def feature_vector(sig: AccountSignals, accounts: int = 1) -> np.ndarray:  # (F,)
    """The model's inputs (``accounts`` is accepted for callers scoring clusters; a cluster's
    size is judged by the coordination test, not by the content model)."""
    del accounts
    return np.array(
        [
            math.log1p(sig.requests),
            sig.cot_share,
            sig.harvest_share,
            sig.topic_breadth,
            sig.topic_drift,
        ]
    )


def without_cot(x: np.ndarray) -> np.ndarray:  # (F,) -> (F,)
    """The features with chain-of-thought elicitation set to an ordinary user's share: what
    an account with reasoning access is scored on."""
    y = np.array(x, dtype=np.float64)
    y[SCORE_FEATURES.index("cot_share")] = PRIOR["cot"]
    return y


def merge_signals(
    members: Sequence[AccountSignals],
    prior_weight: float | None = None,
) -> AccountSignals:
    """One actor's signals from its accounts': volumes add, shares are pooled.

    Each account's shares were shrunk toward the prior on its own (few requests each, for a
    hydra's accounts); pooling undoes that shrinkage, adds the counts and shrinks once with
    the cluster's total, so 40 accounts of 10 requests weigh like one account of 400.
    """
    if not members:
        raise InputError("cannot merge an empty cluster")
    k = SignalConfig().prior_weight if prior_weight is None else prior_weight
    n = np.array([max(1, m.requests) for m in members], dtype=np.float64)
    total = float(n.sum())
    w = n / total

    def pooled(name: str, prior_key: str) -> float:
        prior = PRIOR[prior_key]
        raw = sum(getattr(m, name) * (ni + k) - prior * k for m, ni in zip(members, n, strict=True))
        return float(min(1.0, max(0.0, (raw + prior * k) / (total + k))))

    def avg(name: str) -> float:
        return float(sum(wi * getattr(m, name) for wi, m in zip(w, members, strict=True)))

    # The cluster's breadth is that of its pooled prompts: 30 accounts each on one topic
    # sweep 30 topics together.
    counts = None
    if all(m.topic_counts for m in members):
        counts = np.sum([np.asarray(m.topic_counts) for m in members], axis=0)  # (T,)

    return AccountSignals(
        requests=int(total),
        rate_per_hour=sum(m.rate_per_hour for m in members),
        active_hours=max(m.active_hours for m in members),
        templated_share=pooled("templated_share", "templated"),
        cot_share=pooled("cot_share", "cot"),
        greedy_share=pooled("greedy_share", "greedy"),
        harvest_share=pooled("harvest_share", "harvest"),
        stream_share=pooled("stream_share", "stream"),
        burst_share=pooled("burst_share", "burst"),
        gap_cv=avg("gap_cv"),
        quiet_share=pooled("quiet_share", "quiet"),
        out_in_ratio=avg("out_in_ratio"),
        content_similarity=avg("content_similarity"),
        out_of_order=sum(m.out_of_order for m in members),
        topic_breadth=topic_breadth(counts, SignalConfig().topics.prior_weight)
        if counts is not None
        else avg("topic_breadth"),
        topic_drift=avg("topic_drift"),
        topic_counts=tuple(counts.tolist()) if counts is not None else (),
        first_ts=min(m.first_ts for m in members),
    )


def reasons(
    model: ScoreModel,
    x: np.ndarray,
    sig: AccountSignals,
    accounts: int = 1,
    link_kinds: Sequence[str] = (),
) -> tuple[str, ...]:
    """Features that raised the score by at least ``reason_min`` log-odds, largest first."""
    contrib = model.contributions(x)
    order = np.argsort(-contrib)
    out = []
    for i in order:
        if contrib[i] < model.reason_min:
            break
        out.append(_describe(SCORE_FEATURES[i], x[i] > model.mean[i], sig, accounts, link_kinds))
    return tuple(out)


def _describe(name: str, high: bool, s: AccountSignals, accounts: int, kinds: Sequence[str]) -> str:
    text = {
        "log_requests": f"{'high' if high else 'low'} volume ({s.requests:,} requests)",
        "log_rate": f"{'high' if high else 'low'} request rate ({s.rate_per_hour:.1f}/hour)",
        "templated_share": f"{s.templated_share:.0%} of prompts follow one mined template",
        "cot_share": f"{s.cot_share:.0%} of prompts ask for step-by-step reasoning",
        "greedy_share": f"{s.greedy_share:.0%} of requests at temperature 0",
        "harvest_share": f"{s.harvest_share:.0%} of requests ask for n>1 or logprobs",
        "stream_share": f"responses {'streamed' if high else 'rarely streamed'} "
        f"({s.stream_share:.0%})",
        "burst_share": f"{s.burst_share:.0%} of gaps under a few seconds",
        "log_gap_cv": f"{'bursty' if high else 'more regular than a person'} timing "
        f"(inter-arrival CV {s.gap_cv:.2f})",
        "quiet_share": f"active around the clock ({s.quiet_share:.0%} of requests in its "
        "quietest 6 hours)"
        if high
        else f"sleeps at night ({s.quiet_share:.0%} in its quietest 6 hours)",
        "log_out_in": f"output/input token ratio {s.out_in_ratio:.2f}",
        "topic_breadth": f"{'broad' if high else 'narrow'} content across capability domains "
        f"(breadth {s.topic_breadth:.2f})",
        "topic_drift": f"content drifted from the account's own history "
        f"(divergence {s.topic_drift:.2f})",
        "content_similarity": f"{'narrow' if high else 'varied'} prompt content "
        f"(similarity {s.content_similarity:.2f})",
        "log_accounts": f"acts with {accounts} linked accounts"
        + (f" (shared {', '.join(kinds)})" if kinds else ""),
    }
    return text[name]


def fit_model(
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    target_fpr: float = 1e-3,
    c: float = 1.0,
    fitted_on: str = "",
    provenance: dict | None = None,
    honest_rows: np.ndarray | None = None,
) -> ScoreModel:
    """Fit sign-constrained logistic weights on (N, F) features and 0/1 labels.

    Weights are bounded to >= 0 (L-BFGS-B on the L2-penalized log loss, ``c`` as in
    scikit-learn); no class weighting, so the output is a probability calibrated on the
    fitting data. The threshold is the lowest score that keeps the honest false-positive rate
    on the fitting data at or below ``target_fpr``, never below the highest-scoring honest
    account when there are fewer than 1/target_fpr of them. ``honest_rows`` (a boolean (N,)
    mask, default ``ys == 0``) picks the rows whose scores become ``p_honest``'s reference.
    """
    from scipy.optimize import minimize

    if xs.ndim != 2 or xs.shape[1] != len(SCORE_FEATURES) or len(xs) != len(ys):
        raise InputError(f"need (N, {len(SCORE_FEATURES)}) features and N labels")
    if len(set(np.asarray(ys).tolist())) != 2:
        raise InputError("fitting needs both honest and campaign accounts")
    if c <= 0 or not 0 < target_fpr < 1:
        raise InputError("fit_model needs c > 0 and target_fpr within (0, 1)")
    y = np.asarray(ys, dtype=np.float64)  # (N,)
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (xs - mean) / scale  # (N, F)
    f = z.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:f], theta[f]
        logits = z @ w + b
        # log(1 + e^x) - y x, stable for either sign
        nll = np.logaddexp(0.0, logits) - y * logits
        p = 1.0 / (1.0 + np.exp(-logits))
        g = p - y
        value = float(nll.sum() + 0.5 / c * (w @ w))
        grad = np.append(z.T @ g + w / c, g.sum())
        return value, grad

    bounds = [(0.0, None)] * f + [(None, None)]
    res = minimize(loss, np.zeros(f + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    weights, bias = tuple(float(v) for v in res.x[:f]), float(res.x[f])
    model = ScoreModel(weights, bias, tuple(mean.tolist()), tuple(scale.tolist()), 0.5)
    scores = model.score_many(xs)
    mask = (y == 0) if honest_rows is None else np.asarray(honest_rows, dtype=bool)
    honest = np.sort(scores[y == 0])
    allowed = math.floor(target_fpr * len(honest))
    bar = honest[len(honest) - 1 - allowed] if len(honest) else 0.5
    # Half-way (in log-odds) between that honest score and the next campaign score above it.
    above = scores[(y == 1) & (scores > bar)]
    nxt = float(above.min()) if len(above) else min(1.0, bar + 1e-6)
    lo, hi = _logit(bar), _logit(nxt)
    threshold = float(min(1.0, max(1.0 / (1.0 + math.exp(-(lo + hi) / 2)), bar + 1e-9)))
    ref = np.sort(scores[mask])
    if len(ref) > 2000:  # quantiles keep the file small; p_honest scales them back to n
        ref = np.quantile(ref, np.linspace(0, 1, 2000))
    return ScoreModel(
        weights,
        bias,
        model.mean,
        model.scale,
        threshold,
        fitted_on=fitted_on,
        honest_scores=tuple(float(v) for v in ref),
        honest_accounts=int(mask.sum()),
        provenance=dict(provenance or {}, target_fpr=target_fpr, features=list(SCORE_FEATURES)),
    )


def _logit(p: float) -> float:
    p = min(1 - 1e-12, max(1e-12, p))
    return math.log(p / (1 - p))
