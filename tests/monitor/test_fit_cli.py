"""The monitor CLI: fit a model with its provenance, score with accounts file and trust tiers,
and the calibration properties of the fitted content model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distillguard.cli import app, main
from distillguard.monitor.score import SCORE_FEATURES, ScoreModel, fit_model
from distillguard.traffic import read_labels, read_verdicts

runner = CliRunner()


def test_fit_then_score_with_accounts_and_trust(
    small_traffic: tuple[Path, Path], tmp_path: Path
) -> None:
    traffic, labels = small_traffic
    model = tmp_path / "model.json"
    r = runner.invoke(
        app,
        [
            "monitor",
            "fit",
            str(traffic),
            str(labels),
            "--out",
            str(model),
            "--generator",
            "first-sim",
            "--split",
            "test",
        ],
    )
    assert r.exit_code == 0, r.output
    m = ScoreModel.load(model)
    assert m.provenance["generator"] == "first-sim" and m.provenance["split"] == "test"
    assert m.provenance["features"] == list(SCORE_FEATURES) and m.stat_reference
    assert all(w >= 0 for w in m.weights) and m.honest_accounts == m.provenance["honest_rows"]
    # the online bar clears every honest prefix, so it is never below the offline one
    assert m.online_threshold >= m.threshold

    labs = {x.account_id: x for x in read_labels(labels)}
    honest = sorted(a for a, x in labs.items() if x.label == "honest")
    accounts = tmp_path / "accounts.jsonl"
    accounts.write_text(
        "".join(
            json.dumps({"account_id": a, "created_ts": 0.0, "verification": "enterprise"}) + "\n"
            for a in honest
        )
    )
    trust = tmp_path / "trust.yaml"
    trust.write_text("young_days: 7\n")
    out = tmp_path / "v.jsonl"
    r = runner.invoke(
        app,
        [
            "monitor",
            "score",
            str(traffic),
            "--out",
            str(out),
            "--model",
            str(model),
            "--accounts",
            str(accounts),
            "--trust",
            str(trust),
        ],
    )
    assert r.exit_code == 0, r.output
    verdicts = {v.account_id: v for v in read_verdicts(out)}
    assert set(verdicts) == set(labs)
    assert not any(verdicts[a].flagged for a in honest)
    caught = [verdicts[a].flagged for a, x in labs.items() if x.label == "campaign"]
    assert sum(caught) >= 0.8 * len(caught)


def test_bad_trust_and_accounts_files_are_clear_errors(
    small_traffic: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    traffic, _ = small_traffic
    bad = tmp_path / "trust.yaml"
    bad.write_text("accounts: {a: gold}\n")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "distillguard",
            "monitor",
            "score",
            str(traffic),
            "--out",
            str(tmp_path / "v.jsonl"),
            "--trust",
            str(bad),
        ],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code != 0 and "unknown trust tier" in capsys.readouterr().err
    acc = tmp_path / "accounts.jsonl"
    acc.write_text('{"account_id": "a"}\n{not json\n')
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "distillguard",
            "monitor",
            "score",
            str(traffic),
            "--out",
            str(tmp_path / "v.jsonl"),
            "--accounts",
            str(acc),
        ],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code != 0 and "line 2" in capsys.readouterr().err
    assert not (tmp_path / "v.jsonl").exists()


def test_p_values_are_calibrated_on_honest_accounts_and_campaigns_are_not_fitted() -> None:
    rng = np.random.default_rng(3)
    f = len(SCORE_FEATURES)
    honest = rng.normal(0, 1, (2000, f))
    campaign = rng.normal(1.5, 1, (200, f))
    xs = np.vstack([honest, campaign])
    ys = np.array([0] * 2000 + [1] * 200)
    m = fit_model(xs, ys, target_fpr=1e-3)
    p = m.score_many(xs)
    assert (p[:2000] >= m.threshold).sum() <= 2  # honest FPR <= 1e-3 on the fitting data
    # p-values against the fitting honest accounts: about uniform on fresh honest accounts
    fresh = m.score_many(rng.normal(0, 1, (2000, f)))
    pv = np.array([m.p_honest(float(s)) for s in fresh])
    assert 0.4 < np.median(pv) < 0.6 and (pv <= 0.05).mean() < 0.08
    # Campaign rows are never fitted: whatever the fitting campaigns look like, the model
    # is the same, so a kind of campaign the fitting data lacks is judged the same way.
    other = fit_model(np.vstack([honest, -campaign]), ys, target_fpr=1e-3)
    assert other.stat_reference == m.stat_reference and other.reference == m.reference
    novel = np.zeros((1, f))
    novel[0, 2] = 8.0  # far out on one feature alone (8 SD), ordinary on the rest
    assert m.score_many(novel)[0] >= m.threshold
