"""Metrics against independent implementations and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from distillguard.errors import InputError
from distillguard.monitor.evaluate import (
    TimeToFlag,
    adjusted_rand_index,
    auroc,
    evaluate,
    tpr_at_fpr,
    with_time_to_flag,
)
from distillguard.traffic import LabelRecord, Verdict


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.2
    s = np.round(rng.random(500) + y * 0.3, 1)  # many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    with pytest.raises(InputError):
        auroc(np.zeros(3, bool), np.zeros(3))


def test_ari_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    a = [str(x) for x in rng.integers(0, 5, 200)]
    b = [str(x) for x in rng.integers(0, 7, 200)]
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)


def test_tpr_at_fpr_counts_ties_with_honest_as_misses() -> None:
    y = np.array([0] * 1000 + [1] * 4, bool)
    honest = np.linspace(0, 0.5, 1000)
    s = np.concatenate([honest, [0.9, honest[-2], 0.6, 0.4]])
    tpr, bar = tpr_at_fpr(y, s, 1e-3)  # one honest account may stand above the bar
    assert bar == honest[-2]
    assert tpr == 0.5  # 0.9 and 0.6 are above; the tie with the bar and 0.4 are not


def test_evaluate_per_persona_apps_and_missing_verdicts() -> None:
    labels = [
        LabelRecord("h1", "honest", None, "casual"),
        LabelRecord("h2", "honest", None, "app_support_bot"),
        LabelRecord("c1", "campaign", "k", "campaign_hydra"),
        LabelRecord("c2", "campaign", "k", "campaign_hydra"),
    ]
    verdicts = [
        Verdict("h1", 0.1, False),
        Verdict("h2", 0.7, True),
        Verdict("c1", 0.9, True, "x"),
        Verdict("c2", 0.95, True, "x"),
    ]
    r = evaluate(labels, [*verdicts[:-1], verdicts[-1]])
    assert r.legit_apps == 1 and r.legit_apps_flagged == 1
    assert r.ari_hydra == pytest.approx(1.0) and r.auroc == 1.0
    r2 = evaluate(labels, verdicts[:3])
    assert r2.missing_verdicts == 1
    hydra = next(p for p in r2.personas if p.persona == "campaign_hydra")
    assert hydra.accounts == 2 and hydra.flagged == 1


def test_time_to_flag_percentiles_count_misses_as_never() -> None:
    labels = [LabelRecord("h", "honest"), LabelRecord("c", "campaign", "k", "x")]
    base = evaluate(labels, [Verdict("h", 0.0, False), Verdict("c", 1.0, True)])
    ttf = (
        TimeToFlag("a", "x", 100, 10),
        TimeToFlag("b", "x", 100, 30),
        TimeToFlag("c", "x", 100, None),
    )
    r = with_time_to_flag(base, ttf)
    assert r.ttf_median == 30 and r.ttf_p90 == float("inf") and r.ttf_missed == 1
