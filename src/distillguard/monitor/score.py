"""From signals to a p-value against honest accounts, with reasons, and the operating point.

Two kinds of evidence, kept apart so that neither convicts on what legitimate apps do:

- **What is extracted** (``ScoreModel``): each account is described by a few features of the
  content it pulls out of the model, never by how machine-like it is: chain-of-thought
  elicitation (or reasoning models), n>1/logprobs harvesting, the volume of broad content
  (prompts outside the account's main capability domain), topical breadth, drift from the
  account's own history, volume relative to the account's age, the number of languages it
  extracts in, and a move to models it did not use before. Machine timing, templates and
  output/input ratios are *not* inputs: an integration has all of them.

  The model is **not fitted on campaigns**. It is a calibrated combination of per-feature
  tail probabilities against the fitting generator's *honest* accounts: for each feature the
  conformal upper-tail p-value of the account's value among honest values (beyond the largest
  honest value, an exponential tail whose scale is the honest top decile's mean excess,
  never finer than the feature's resolution), then ``T = sum_f w_f * -log p_f`` (Fisher's
  statistic with unit weights), and the account's p-value is T's own conformal/exponential
  upper tail among honest accounts. A campaign of a kind the fitting generator never had is
  caught as soon as it is far out on *any* extraction feature; nothing a campaign of the
  fitting generator happens to do can become a weight. ``score = 1 - p``; the operating point
  is ``p <= target_fpr`` (FPR 1e-3 on honest accounts of the fitting generator, extrapolated
  by the tail when there are fewer than 1,000 of them). A trust tier's ``offset`` (log-odds)
  multiplies the p-value by ``e^offset``.
- **Coordination** (``coordination.py``): a linked cluster's family-wise p-value under a
  permutation null of the population itself (``decide`` in ``offline.py``).

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
from distillguard.monitor.language import language_breadth
from distillguard.monitor.signals import PRIOR, AccountSignals, SignalConfig
from distillguard.monitor.topics import topic_breadth

SCORE_FEATURES = (
    "cot_share",
    "harvest_share",
    "broad_rate",
    "topic_drift",
    "language_breadth",
    "model_jump",
)
# Features that measure a change of the account against its own history (not a level): a
# trust tier vouches for an organization's declared, established use, not for a departure
# from it, so these are judged without the tier's offset too (``change_score``).
CHANGE_FEATURES = ("topic_drift", "model_jump")
# The smallest difference in each feature that means something (its tail is never finer):
# without it a feature on which every honest account of the fitting generator sits at the
# prior would turn the first account a hair above it into a certainty.
RESOLUTION = {
    # People's habits differ: some ask for step-by-step explanations routinely (a quarter of
    # their prompts); a share within 15 points of every honest account is a habit, not a
    # harvest of reasoning traces (campaigns that want them ask in 60-100 % of prompts).
    "cot_share": 0.15,
    # two n>1/logprobs requests in a person's first twenty (someone trying the parameter)
    # are not a harvest: the online monitor scores such prefixes
    "harvest_share": 0.1,
    # log units: an integration serving many customers sweeps broad content at any volume;
    # within e-fold (x2.7) of every honest account, broad volume alone is no evidence
    "broad_rate": 1.0,
    "topic_drift": 0.03,  # Jensen-Shannon divergence
    # effective languages - 1: a bilingual person writes in up to two (breadth up to 1), and
    # a person's few prompts, read 1 in 4, give a noisy mix; a multilingual harvest asks in
    # 2-4 languages, so only breadth beyond every honest account by half a language counts
    "language_breadth": 0.5,
    # log rate ratio: a person's daily volume varies several-fold from day to day, so a move
    # to a new model at up to e^1.5 (4.5) times the old pace is no evidence at all
    "model_jump": 1.5,
    "shape_drift": 0.1,  # one recent request in ten of a shape the history never had
}
MODEL_FILE = "score_model.json"
_P_FLOOR = 1e-300


@dataclass(frozen=True)
class ScoreModel:
    """Honest reference distributions of each feature and of the combined statistic."""

    weights: tuple[float, ...]  # (F,) weight of each feature's -log p in T (>= 0; 1 = Fisher)
    reference: tuple[tuple[float, ...], ...]  # (F, Q) sorted honest values (quantiles if many)
    tails: tuple[float, ...]  # (F,) scale of each feature's exponential tail beyond its max
    stat_reference: tuple[float, ...]  # (Q,) sorted honest values of T
    stat_tail: float  # scale of T's exponential tail beyond its honest max
    honest_accounts: int  # honest rows behind the references (the conformal n)
    threshold: float = 0.999  # flag when score >= threshold, i.e. p <= 1 - threshold
    # The bar for the online monitor: every prefix an online monitor scores (an account's
    # first 20, 40, 80, ... requests) of every honest account of the fitting generator stays
    # below it; young accounts' prefixes are noisier than complete histories.
    online_threshold: float = 0.999
    reason_min: float = 2.0  # a feature is a reason when its -log p adds at least this much
    fitted_on: str = ""  # one-line provenance
    features: tuple[str, ...] = SCORE_FEATURES  # (F,) names, checked against the code's
    provenance: dict = field(default_factory=dict)  # generator, split, date, counts, target

    def __post_init__(self) -> None:
        f = len(SCORE_FEATURES)
        if tuple(self.features) != SCORE_FEATURES:
            raise ConfigError(
                f"score model features {list(self.features)} are not this "
                f"version's {list(SCORE_FEATURES)}: refit it"
            )
        if not (len(self.weights) == len(self.reference) == len(self.tails) == f):
            raise ConfigError(f"score model must have {f} weights, references and tails")
        if any(w < 0 for w in self.weights) or any(t <= 0 for t in self.tails):
            raise ConfigError("score model weights must be >= 0 and tail scales > 0")
        if not self.stat_reference or any(not r for r in self.reference) or self.stat_tail <= 0:
            raise ConfigError("score model needs non-empty honest references")
        if self.honest_accounts < 1:
            raise ConfigError("score model needs at least one honest account")
        for t in (self.threshold, self.online_threshold):
            if not 0.0 <= t <= 1.0:
                raise ConfigError("score model thresholds must be within [0, 1]")

    # ---- the statistic ------------------------------------------------------------------------
    def _tail_p(self, ref: np.ndarray, tail: float, x: np.ndarray) -> np.ndarray:
        """Conformal upper-tail p of (N,) values against sorted ``ref``; exponential beyond."""
        n = self.honest_accounts
        above = (len(ref) - np.searchsorted(ref, x, side="left")) / len(ref)  # (N,)
        p = (above * n + 1.0) / (n + 1.0)
        beyond = x > ref[-1]
        p = np.where(beyond, np.exp(-(x - ref[-1]) / tail) / (n + 1.0), p)
        return np.maximum(p, _P_FLOOR)

    def surprisal(self, xs: np.ndarray) -> np.ndarray:  # (N, F) -> (N, F) -log p per feature
        """-log of each feature's honest tail probability, given the benefit of the doubt of
        one resolution (a value is compared as if it were that much lower): differences
        smaller than what means something (2 % n>1 requests vs 0 %) are not evidence."""
        xs = np.atleast_2d(np.asarray(xs, dtype=np.float64))
        out = np.empty_like(xs)
        for j, name in enumerate(SCORE_FEATURES):
            ref = np.asarray(self.reference[j])
            x = xs[:, j] - RESOLUTION[name]
            out[:, j] = -np.log(self._tail_p(ref, self.tails[j], x))
        return out

    def statistic(self, xs: np.ndarray) -> np.ndarray:  # (N, F) -> (N,) T
        return self.surprisal(xs) @ np.asarray(self.weights)

    def contributions(self, x: np.ndarray) -> np.ndarray:  # (F,) -> (F,) weighted -log p
        return self.surprisal(x)[0] * np.asarray(self.weights)

    def p_values(self, xs: np.ndarray, offset: float = 0.0) -> np.ndarray:  # (N, F) -> (N,)
        ref = np.asarray(self.stat_reference)
        p = self._tail_p(ref, self.stat_tail, self.statistic(xs))
        return np.minimum(1.0, p * math.exp(offset))

    def score(self, x: np.ndarray, offset: float = 0.0) -> float:
        """1 - the account's p-value against honest accounts; ``offset`` log-odds of trust
        multiply the p-value by e^offset (more evidence needed)."""
        return float(1.0 - self.p_values(np.atleast_2d(x), offset)[0])

    def score_many(self, xs: np.ndarray) -> np.ndarray:  # (N, F) -> (N,)
        return 1.0 - self.p_values(xs)

    def p_honest(self, score: float) -> float | None:
        """The p-value against the fitting generator's honest accounts behind ``score``."""
        return max(0.0, 1.0 - score)

    # ---- files --------------------------------------------------------------------------------
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
                k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
                if isinstance(v, list)
                else v
                for k, v in d.items()
            }
            return cls(**fields_)
        except FileNotFoundError as exc:
            raise ConfigError(f"score model not found: {path or MODEL_FILE}") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"score model {path or MODEL_FILE} is not valid: {exc}") from exc


def feature_vector(
    sig: AccountSignals, accounts: int = 1, created_ts: float | None = None
) -> np.ndarray:  # (F,)
    """The model's inputs. Broad content is counted per day of the span the account's traffic
    covers (at least a day): the same for every source, online and offline. ``created_ts``
    (the accounts file's account age) is accepted but not used: a model fitted where ages
    are unknown would read every account of a log that has them as old, and one fitted where
    they are known would read every account of a log without them as new (both measured).
    ``accounts`` is accepted for callers scoring clusters: a cluster's size is judged by the
    coordination test, not by the content model."""
    del accounts, created_ts
    counts = np.asarray(sig.topic_counts, dtype=np.float64)
    off_domain = float(counts.sum() - counts.max()) if counts.size else 0.0
    if math.isfinite(sig.first_ts) and math.isfinite(sig.last_ts):
        age_days = max(1.0, (sig.last_ts - sig.first_ts) / 86_400.0)
    else:
        age_days = 1.0
    # Broad content per day over the whole span the account's traffic covers. The last day's
    # window (``recent_off_rate``) is extracted but not an input: read mid-burst online, a
    # honest batch app's pace (A's summarizer: 1,400 a day) passes any harvest's.
    broad = off_domain / age_days
    return np.array(
        [
            sig.cot_share,
            sig.harvest_share,
            math.log1p(broad),
            sig.topic_drift,
            sig.language_breadth,
            sig.model_jump,
        ]
    )


def joint_p(p1: float, p2: float) -> float:
    """Fisher's combination of two independent p-values (chi-square, 4 degrees of freedom):
    ``q (1 - ln q)`` with ``q = p1 p2``. A linked cluster's chance-coordination p-value and
    its pooled content's p-value against honest accounts are different evidence (who the
    accounts share infrastructure with; what they extract)."""
    q = max(_P_FLOOR, min(1.0, p1) * min(1.0, p2))
    return float(min(1.0, q * (1.0 - math.log(q))))


def change_only(x: np.ndarray) -> np.ndarray:  # (F,) -> (F,)
    """The features with every level (not change) feature set to an ordinary value."""
    return without(x, [f for f in SCORE_FEATURES if f not in CHANGE_FEATURES])


def tiered_score(model: ScoreModel, x: np.ndarray, offset: float) -> float:
    """The score of features ``x`` for an account whose tier asks ``offset`` more log-odds:
    the tier raises the bar on everything, except that a change against the account's own
    history alone is judged without it."""
    s = model.score(x, offset)
    if offset > 0:
        s = max(s, model.score(change_only(x)))
    return s


def best_end_user(
    model: ScoreModel,
    sig: AccountSignals,
    granted: Sequence[str] = (),
    offset: float = 0.0,
) -> tuple[float, str, np.ndarray, AccountSignals] | None:
    """The most surprising of an account's heaviest end users (``user`` field), each judged
    like an account of its own with the account's grants and trust offset: a router whose
    end users are people passes, one end user sweeping the capability space does not.
    Returns (score, user, features, signals), or None without end users."""
    best = None
    for user, usig in sig.end_users:
        xu = without(feature_vector(usig), granted)  # (F,)
        su = tiered_score(model, xu, offset)
        if best is None or su > best[0]:
            best = (su, user, xu, usig)
    return best


def without(x: np.ndarray, names: Sequence[str]) -> np.ndarray:  # (F,) -> (F,)
    """The features with the named ones set to an ordinary account's value: what an account
    whose tier grants that access (reasoning, n>1/logprobs) is scored on."""
    y = np.array(x, dtype=np.float64)
    ordinary = {"cot_share": PRIOR["cot"], "harvest_share": PRIOR["harvest"]}
    for name in names:
        y[SCORE_FEATURES.index(name)] = ordinary.get(name, 0.0)
    return y


def without_cot(x: np.ndarray) -> np.ndarray:  # (F,) -> (F,)
    """The features with chain-of-thought elicitation set to an ordinary user's share."""
    return without(x, ("cot_share",))


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
    # sweep 30 topics together; the same for languages.
    counts = None
    if all(m.topic_counts for m in members):
        counts = np.sum([np.asarray(m.topic_counts) for m in members], axis=0)  # (T,)
    langs = None
    if all(m.language_counts for m in members):
        langs = np.sum([np.asarray(m.language_counts) for m in members], axis=0)  # (L,)

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
        last_ts=max(m.last_ts for m in members),
        language_breadth=(
            language_breadth(langs, k) if langs is not None else avg("language_breadth")
        ),
        language_counts=tuple(langs.tolist()) if langs is not None else (),
        model_drift=avg("model_drift"),
        samples_per_request=avg("samples_per_request"),
        # the cluster's current pace is its members' paces added; a switch of many accounts
        # at once shows as their request-weighted jump
        recent_off_rate=sum(m.recent_off_rate for m in members),
        model_jump=avg("model_jump"),
        shape_drift=avg("shape_drift"),
    )


def reasons(
    model: ScoreModel,
    x: np.ndarray,
    sig: AccountSignals,
    accounts: int = 1,
    link_kinds: Sequence[str] = (),
) -> tuple[str, ...]:
    """Features whose honest tail probability is small (-log p >= ``reason_min``), largest
    first, each with that probability."""
    contrib = model.contributions(x)
    order = np.argsort(-contrib)
    out = []
    for i in order:
        if contrib[i] < model.reason_min:
            break
        p = math.exp(-contrib[i] / max(model.weights[i], 1e-12))
        out.append(f"{_describe(SCORE_FEATURES[i], sig, x[i])} (honest p {p:.1e})")
    return tuple(out)


def _describe(name: str, s: AccountSignals, value: float) -> str:
    text = {
        "cot_share": f"{s.cot_share:.0%} of prompts ask for step-by-step reasoning "
        "(or a reasoning model)",
        "harvest_share": f"{s.harvest_share:.0%} of requests ask for n>1 or logprobs "
        f"({s.samples_per_request:.1f} completions per request)",
        "broad_rate": f"{math.expm1(value):,.0f} prompts a day outside its main capability "
        f"domain (breadth {s.topic_breadth:.2f})",
        "topic_drift": f"content drifted from the account's own history "
        f"(divergence {s.topic_drift:.2f})",
        "language_breadth": f"extracts in {1 + s.language_breadth:.1f} languages (effective)",
        "model_jump": f"moved to a new model at {math.exp(s.model_jump):.0f}x its old pace",
        "shape_drift": f"{s.shape_drift:.0%} of recent requests are of kinds its history "
        "never sent",
    }
    return text[name]


def _exp_tail(values: np.ndarray, floor: float) -> float:
    """Scale of an exponential upper tail: the mean excess of the top decile over the 90th
    percentile (the exponential MLE), never below ``floor``."""
    if len(values) < 2:
        return floor
    q = float(np.quantile(values, 0.9))
    top = values[values > q]
    return max(floor, float((top - q).mean()) if len(top) else 0.0)


def _compact(values: np.ndarray, keep: int = 2000) -> tuple[float, ...]:
    v = np.sort(values)
    if len(v) > keep:  # quantiles keep the file small; the conformal n stays the true count
        v = np.quantile(v, np.linspace(0, 1, keep))
    return tuple(float(a) for a in v)


def fit_model(
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    target_fpr: float = 1e-3,
    fitted_on: str = "",
    provenance: dict | None = None,
    honest_rows: np.ndarray | None = None,
    prefix_rows: np.ndarray | None = None,
    weights: Sequence[float] | None = None,
) -> ScoreModel:
    """The honest reference of (N, F) features; labels (0 honest, 1 campaign) pick the rows.

    Only honest rows shape the model (``honest_rows``, default ``ys == 0``): campaign rows are
    checked to exist (so the fitting data is a labelled population) and counted in the
    provenance, never fitted. The operating point is p <= ``target_fpr``. ``prefix_rows``
    (M, F) are features of honest accounts' prefixes (what the online monitor scores as they
    grow): the online threshold keeps every one of them below it, and at least as strict as
    the offline one.
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys)
    if xs.ndim != 2 or xs.shape[1] != len(SCORE_FEATURES) or len(xs) != len(ys):
        raise InputError(f"need (N, {len(SCORE_FEATURES)}) features and N labels")
    if len(set(ys.tolist())) != 2:
        raise InputError("fitting needs both honest and campaign accounts")
    if not 0 < target_fpr < 1:
        raise InputError("fit_model needs target_fpr within (0, 1)")
    if not np.isfinite(xs).all():
        raise InputError("features must be finite")
    mask = (ys == 0) if honest_rows is None else np.asarray(honest_rows, dtype=bool)
    honest = xs[mask]  # (H, F)
    if len(honest) < 10:
        raise InputError("fitting needs at least 10 honest rows")
    w = tuple(1.0 for _ in SCORE_FEATURES) if weights is None else tuple(map(float, weights))
    reference = tuple(_compact(honest[:, j]) for j in range(honest.shape[1]))
    tails = tuple(
        _exp_tail(honest[:, j], RESOLUTION[name]) for j, name in enumerate(SCORE_FEATURES)
    )
    base = ScoreModel(w, reference, tails, (0.0,), 1.0, len(honest))
    t_honest = base.statistic(honest)  # (H,)
    # T's tail is never finer than one feature moving by its resolution's worth of surprisal.
    model = ScoreModel(
        w,
        reference,
        tails,
        _compact(t_honest),
        _exp_tail(t_honest, 1.0),
        len(honest),
        threshold=1.0 - target_fpr,
    )
    online = model.threshold
    if prefix_rows is not None and len(prefix_rows):
        p_worst = float(model.p_values(np.asarray(prefix_rows, dtype=np.float64)).min())
        # Half the p-value of the most surprising honest prefix: none of them is acted on.
        online = max(online, 1.0 - p_worst / 2.0)
    campaigns = xs[ys == 1]
    caught = float((model.score_many(campaigns) >= model.threshold).mean()) if len(campaigns) else 0
    return ScoreModel(
        w,
        reference,
        tails,
        model.stat_reference,
        model.stat_tail,
        len(honest),
        threshold=model.threshold,
        online_threshold=online,
        fitted_on=fitted_on,
        provenance=dict(
            provenance or {},
            target_fpr=target_fpr,
            features=list(SCORE_FEATURES),
            honest_rows=len(honest),
            prefix_rows=0 if prefix_rows is None else len(prefix_rows),
            campaign_rows_flagged_in_fit=round(caught, 4),
        ),
    )
