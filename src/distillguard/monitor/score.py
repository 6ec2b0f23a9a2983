"""From signals to a 0-1 score with reasons, and the operating point that turns it into a flag.

The score is a logistic model over the signal vector (``signals.FEATURES`` plus the number of
linked accounts), standardized so every weight reads as "log-odds per standard deviation".
Its weights and the flag threshold are fitted on the *train* split of simulated traffic
(``benchmarks/detection.py --fit``) and shipped as ``score_model.json``; reports use the held-out
*test* split. A cluster is scored as one actor: its members' signals are merged (volumes add,
shares are request-weighted) and every member gets the larger of its own and its cluster's
score, so a hydra's low-volume accounts are judged by what they do together.

Reasons are the features that pushed the score up the most, in words a reviewer reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.errors import ConfigError, InputError
from distillguard.monitor.signals import FEATURES, PRIOR, AccountSignals, SignalConfig

SCORE_FEATURES = (*FEATURES, "log_accounts")
MODEL_FILE = "score_model.json"


@dataclass(frozen=True)
class ScoreModel:
    """Standardized logistic model and its operating point."""

    weights: tuple[float, ...]  # (F,) log-odds per standard deviation of each feature
    bias: float
    mean: tuple[float, ...]  # (F,) feature means on the fitting data
    scale: tuple[float, ...]  # (F,) feature standard deviations on the fitting data
    threshold: float  # flag when score >= threshold (chosen on the train split)
    reason_min: float = 1.0  # a feature is a reason when it adds at least this much log-odds
    fitted_on: str = ""  # provenance (split, seed, counts)

    def __post_init__(self) -> None:
        f = len(SCORE_FEATURES)
        if not (len(self.weights) == len(self.mean) == len(self.scale) == f):
            raise ConfigError(f"score model must have {f} weights, means and scales")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError("score model threshold must be within [0, 1]")
        if any(s <= 0 for s in self.scale):
            raise ConfigError("score model scales must be positive")

    def contributions(self, x: np.ndarray) -> np.ndarray:  # (F,) -> (F,) log-odds terms
        return np.asarray(self.weights) * (x - np.asarray(self.mean)) / np.asarray(self.scale)

    def score(self, x: np.ndarray) -> float:
        z = self.bias + float(self.contributions(x).sum())
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def score_many(self, xs: np.ndarray) -> np.ndarray:  # (N, F) -> (N,)
        z = self.bias + ((xs - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(
            self.weights
        )
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

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
    return np.append(sig.vector(), math.log(max(1, accounts)))


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
        "content_similarity": f"{'narrow' if high else 'varied'} prompt content "
        f"(similarity {s.content_similarity:.2f})",
        "log_accounts": f"acts with {accounts} linked accounts"
        + (f" (shared {', '.join(kinds)})" if kinds else ""),
    }
    return text[name]


def fit_model(
    xs: np.ndarray, ys: np.ndarray, *, target_fpr: float = 1e-3, c: float = 0.3, fitted_on: str = ""
) -> ScoreModel:
    """Fit the logistic weights on (N, F) features and 0/1 labels; pick the threshold.

    The threshold is the lowest score that keeps the honest false-positive rate on the
    fitting data at or below ``target_fpr``, never below the highest-scoring honest account
    when there are fewer than 1/target_fpr of them (no honest account flagged in tuning).
    """
    from sklearn.linear_model import LogisticRegression

    if xs.ndim != 2 or xs.shape[1] != len(SCORE_FEATURES) or len(xs) != len(ys):
        raise InputError(f"need (N, {len(SCORE_FEATURES)}) features and N labels")
    if len(set(ys.tolist())) != 2:
        raise InputError("fitting needs both honest and campaign accounts")
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale < 1e-6] = 1.0
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    lr.fit((xs - mean) / scale, ys)
    model = ScoreModel(
        tuple(lr.coef_[0].tolist()),
        float(lr.intercept_[0]),
        tuple(mean.tolist()),
        tuple(scale.tolist()),
        0.5,
        fitted_on=fitted_on,
    )
    scores = model.score_many(xs)
    honest = np.sort(scores[ys == 0])
    allowed = math.floor(target_fpr * len(honest))
    bar = honest[len(honest) - 1 - allowed] if len(honest) else 0.5
    # Half-way (in log-odds) between that honest score and the next campaign score above it.
    above = scores[(ys == 1) & (scores > bar)]
    nxt = float(above.min()) if len(above) else min(1.0, bar + 1e-6)
    lo, hi = _logit(bar), _logit(nxt)
    threshold = 1.0 / (1.0 + math.exp(-(lo + hi) / 2))
    return ScoreModel(
        model.weights,
        model.bias,
        model.mean,
        model.scale,
        float(min(1.0, max(threshold, bar + 1e-9))),
        fitted_on=fitted_on,
    )


def _logit(p: float) -> float:
    p = min(1 - 1e-12, max(1e-12, p))
    return math.log(p / (1 - p))
