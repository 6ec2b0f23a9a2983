"""Detection metrics: ranking quality, the operating point, clusters, and time to flag.

Only this module reads labels. Metrics are account-level: AUROC (scikit-learn, ties counted
half), TPR at a fixed honest false-positive rate (ties with an honest score count as misses),
flags among legitimate templated applications, per-persona flag counts, adjusted Rand index of
the detector's clusters against the true campaigns, and how many requests each campaign sends
before the online monitor, replaying the traffic in time order, first acts on it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.errors import InputError
from distillguard.traffic import LabelRecord, TrafficRecord, Verdict

LEGIT_APP_PREFIX = "app_"  # personas of legitimate templated applications


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn; ties count half)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=bool)  # (N,)
    if y.all() or not y.any():
        raise InputError("AUROC needs both honest and campaign accounts")
    return float(roc_auc_score(y, np.asarray(s, dtype=np.float64)))


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> tuple[float, float]:
    """(TPR, threshold) at the strictest threshold keeping honest FPR <= ``fpr``.

    A campaign account counts as detected only when its score is strictly above the
    ``floor(fpr * n_honest) + 1``-th highest honest score.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    honest = np.sort(s[~y])[::-1]
    if len(honest) == 0 or y.sum() == 0:
        raise InputError("TPR at FPR needs both honest and campaign accounts")
    allowed = math.floor(fpr * len(honest))
    bar = honest[allowed] if allowed < len(honest) else -np.inf
    return float((s[y] > bar).mean()), float(bar)


def adjusted_rand_index(truth: list[str], pred: list[str]) -> float:
    """Adjusted Rand index of two partitions of the same items (scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score

    if len(truth) != len(pred) or not truth:
        raise InputError("ARI needs two labelings of the same, non-empty set of items")
    return float(adjusted_rand_score(truth, pred))


@dataclass(frozen=True)
class PersonaResult:
    persona: str
    label: str
    accounts: int
    flagged: int
    score_min: float
    score_median: float
    score_max: float


@dataclass(frozen=True)
class TimeToFlag:
    campaign_id: str
    persona: str
    requests_sent: int  # the campaign's requests in the log
    requests_until_flagged: int | None  # None: never acted on


@dataclass(frozen=True)
class OnlineReplay:
    """What the online monitor did over a replayed log."""

    time_to_flag: tuple[TimeToFlag, ...]
    honest_accounts: int  # honest accounts seen in the replay
    honest_acted_on: tuple[str, ...]  # honest accounts given any action other than allow
    days: float  # span of the replayed log

    @property
    def false_actions_per_1000_per_day(self) -> float:
        if not self.honest_accounts or self.days <= 0:
            return 0.0
        return 1000.0 * len(self.honest_acted_on) / self.honest_accounts / self.days


@dataclass(frozen=True)
class DetectionReport:
    accounts: int
    honest: int
    campaign_accounts: int
    auroc: float
    tpr_at_fpr_1e3: float
    tpr_at_fpr_1e2: float
    flagged_tpr: float  # at the detector's own operating point
    flagged_fpr: float
    legit_apps: int
    legit_apps_flagged: int
    ari_all: float  # all accounts; honest accounts are singletons in the truth
    ari_hydra: float | None  # accounts of multi-account campaigns only
    personas: tuple[PersonaResult, ...]
    missing_verdicts: int  # labelled accounts without a verdict (scored as 0, not flagged)
    time_to_flag: tuple[TimeToFlag, ...] = ()
    ttf_median: float | None = None
    ttf_p90: float | None = None
    ttf_missed: int = 0
    recall_by_persona: dict[str, float] | None = None  # campaign persona -> share flagged


def evaluate(
    labels: Iterable[LabelRecord], verdicts: Iterable[Verdict], app_persona: str = LEGIT_APP_PREFIX
) -> DetectionReport:
    """Account-level metrics; honest personas matching the regular expression ``app_persona``
    (from the start) are the legitimate applications."""
    labs = {lab.account_id: lab for lab in labels}
    if not labs:
        raise InputError("no labels to evaluate against")
    ver = {v.account_id: v for v in verdicts}
    missing = [a for a in labs if a not in ver]
    ids = list(labs)
    y = np.array([labs[a].label == "campaign" for a in ids])
    s = np.array([ver[a].score if a in ver else 0.0 for a in ids])
    f = np.array([ver[a].flagged if a in ver else False for a in ids])
    auc = auroc(y, s)
    tpr3, _ = tpr_at_fpr(y, s, 1e-3)
    tpr2, _ = tpr_at_fpr(y, s, 1e-2)

    by: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, a in enumerate(ids):
        by[(labs[a].persona or "unknown", labs[a].label)].append(i)
    personas = []
    for (p, lab), idx in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sc = s[idx]
        personas.append(
            PersonaResult(
                p,
                lab,
                len(idx),
                int(f[idx].sum()),
                float(sc.min()),
                float(np.median(sc)),
                float(sc.max()),
            )
        )
    app_re = re.compile(app_persona)
    apps = [
        i
        for i, a in enumerate(ids)
        if labs[a].label == "honest" and app_re.match(labs[a].persona or "")
    ]

    def pred_of(a: str) -> str:
        v = ver.get(a)
        return v.cluster_id if v is not None and v.cluster_id else f"self:{a}"

    truth_all = [labs[a].campaign_id or f"self:{a}" for a in ids]
    ari_all = adjusted_rand_index(truth_all, [pred_of(a) for a in ids])
    sizes = Counter(labs[a].campaign_id for a in ids if labs[a].campaign_id)
    multi = [a for a in ids if labs[a].campaign_id and sizes[labs[a].campaign_id] > 1]
    ari_hydra = None
    if multi:
        ari_hydra = adjusted_rand_index(
            [labs[a].campaign_id or "" for a in multi], [pred_of(a) for a in multi]
        )
    return DetectionReport(
        accounts=len(ids),
        honest=int((~y).sum()),
        campaign_accounts=int(y.sum()),
        auroc=auc,
        tpr_at_fpr_1e3=tpr3,
        tpr_at_fpr_1e2=tpr2,
        flagged_tpr=float(f[y].mean()) if y.any() else 0.0,
        flagged_fpr=float(f[~y].mean()) if (~y).any() else 0.0,
        legit_apps=len(apps),
        legit_apps_flagged=int(f[apps].sum()) if apps else 0,
        ari_all=ari_all,
        ari_hydra=ari_hydra,
        personas=tuple(personas),
        missing_verdicts=len(missing),
        recall_by_persona={
            p.persona: p.flagged / p.accounts for p in personas if p.label == "campaign"
        },
    )


def time_to_flag(
    records: Iterable[TrafficRecord],
    labels: Iterable[LabelRecord],
    monitor: Any,
    progress: Callable[[int], None] | None = None,
) -> tuple[TimeToFlag, ...]:
    """Replay ``records`` (in the order given: a log in time order) through ``monitor`` (an
    ``OnlineMonitor``) and count each campaign's requests until any of its accounts is first
    given an action other than allow."""
    return online_replay(records, labels, monitor, progress).time_to_flag


def online_replay(
    records: Iterable[TrafficRecord],
    labels: Iterable[LabelRecord],
    monitor: Any,
    progress: Callable[[int], None] | None = None,
) -> OnlineReplay:
    """Replay a log through the online monitor: requests until each campaign is first acted
    on, and which honest accounts were acted on (false actions) over the log's span."""
    labs = {lab.account_id: lab for lab in labels}
    sent: Counter[str] = Counter()
    flagged_at: dict[str, int] = {}
    honest_seen: set[str] = set()
    honest_acted: set[str] = set()
    first, last = math.inf, -math.inf
    for n, rec in enumerate(records, 1):
        d = monitor.replay(rec)
        first, last = min(first, rec.ts), max(last, rec.ts)
        lab = labs.get(rec.account_id)
        if lab is not None and lab.campaign_id:
            sent[lab.campaign_id] += 1
            if d.action != "allow" and lab.campaign_id not in flagged_at:
                flagged_at[lab.campaign_id] = sent[lab.campaign_id]
        elif lab is not None and lab.label == "honest":
            honest_seen.add(rec.account_id)
            if d.action != "allow":
                honest_acted.add(rec.account_id)
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    persona = {lab.campaign_id: lab.persona or "" for lab in labs.values() if lab.campaign_id}
    ttf = tuple(TimeToFlag(c, persona[c], sent[c], flagged_at.get(c)) for c in sorted(sent))
    days = (last - first) / 86_400.0 if last > first else 0.0
    return OnlineReplay(ttf, len(honest_seen), tuple(sorted(honest_acted)), days)


def with_time_to_flag(report: DetectionReport, ttf: tuple[TimeToFlag, ...]) -> DetectionReport:
    caught = [t.requests_until_flagged for t in ttf if t.requests_until_flagged is not None]
    missed = sum(t.requests_until_flagged is None for t in ttf)
    # Missed campaigns count as never flagged (infinite) in the percentiles: no flattering.
    values = np.array(caught + [math.inf] * missed, dtype=np.float64)
    median = float(np.percentile(values, 50, method="higher")) if len(values) else None
    p90 = float(np.percentile(values, 90, method="higher")) if len(values) else None
    return DetectionReport(
        **{
            **report.__dict__,
            "time_to_flag": ttf,
            "ttf_median": median,
            "ttf_p90": p90,
            "ttf_missed": missed,
        }
    )
