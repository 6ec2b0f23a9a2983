"""Detection across generators: fit on one traffic generator, report on the other, both ways.

    .venv/bin/python benchmarks/detection_cross.py --gen A=/tmp/dg/A --gen B=/tmp/dg/B \
        [--ship A] [--online] [--speed]

Each generator directory holds ``train.jsonl``/``train.labels.jsonl`` and
``test.jsonl``/``test.labels.jsonl`` (and optionally ``*.accounts.jsonl``, spec 1b), written
by that generator's own CLI (``distillguard simulate`` for A, the second generator's CLI for
B). The generators share nothing with the detector but the traffic format.

1. Fit the content model on each generator's *train* split: the honest accounts' reference
   distributions (own rows plus one merged row per linked cluster no verified org explains,
   and honest accounts' prefixes for the online bar); no campaign row is fitted. Operating
   point: p <= 1e-3 against the honest accounts of that train split.
2. Score every generator's *test* split with every model (offline path: one pass, links,
   coordination test, content score, trust tiers) and evaluate per persona: account AUROC,
   TPR at FPR 1e-3, recall per campaign persona, legitimate apps acted on, cluster ARI.
   The in-generator rows are printed beside the cross-generator ones as the baseline.
3. (--online) Replay each test log in time order through ``OnlineMonitor`` with the other
   generator's model: requests until first action per campaign type, false actions per
   1,000 honest accounts per day.
4. (--speed) Offline scoring exchanges/s and peak memory (fresh process) on one test log.
5. Write ``detection_cross.json`` and the plot ``docs/img/detection_cross.png``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img" / "detection_cross.png"
MODEL_PATH = ROOT / "src" / "distillguard" / "monitor" / "score_model.json"


def _accounts(gen_dir: Path, split: str):
    from distillguard.monitor.trust import read_accounts

    p = gen_dir / f"{split}.accounts.jsonl"
    return read_accounts(p) if p.exists() else None


def collected(gen_dir: Path, split: str, cache: Path):
    """Signals, link keys and (train) honest prefixes of a log (cached: the pass is the slow
    part on 2 shared cores)."""
    from distillguard.monitor.offline import collect_file

    c = cache / f"{gen_dir.name}-{split}.v3.pkl"
    if c.exists():
        return pickle.loads(c.read_bytes())
    t0 = time.perf_counter()
    res = collect_file(gen_dir / f"{split}.jsonl", workers=2, with_prefixes=split == "train")
    dt = time.perf_counter() - t0
    print(
        f"[{gen_dir.name}/{split}] {res.exchanges:,} exchanges, {len(res.signals):,} accounts "
        f"collected in {dt:.0f} s"
    )
    out = (res.signals, res.keys, res.exchanges, res.prefixes)
    c.write_bytes(pickle.dumps(out))
    return out


def fit(name: str, gen_dir: Path, cache: Path):
    from distillguard.monitor.offline import fit_on_signals
    from distillguard.monitor.score import SCORE_FEATURES
    from distillguard.traffic import read_labels

    signals, keys, exchanges, prefixes = collected(gen_dir, "train", cache)
    labels = {lab.account_id: lab.label for lab in read_labels(gen_dir / "train.labels.jsonl")}
    model = fit_on_signals(
        signals,
        keys,
        labels,
        exchanges=exchanges,
        generator=name,
        split="train",
        prefixes=prefixes,
        accounts=_accounts(gen_dir, "train"),
    )
    tops = ", ".join(
        f"{f} max {r[-1]:.2f} tail {t:.2f}"
        for f, r, t in zip(SCORE_FEATURES, model.reference, model.tails, strict=True)
    )
    print(
        f"[fit on {name}] {model.honest_accounts} honest rows; offline bar p <= "
        f"{1 - model.threshold:.1e}, online bar p <= {1 - model.online_threshold:.1e}; "
        f"honest references: {tops}"
    )
    return model


def report(model, fit_name: str, name: str, gen_dir: Path, cache: Path, app_persona: str):
    from distillguard.monitor.evaluate import evaluate
    from distillguard.monitor.offline import (
        account_views,
        context_for,
        score_views,
        with_creation_keys,
    )
    from distillguard.monitor.trust import TrustPolicy
    from distillguard.traffic import read_labels

    signals, keys, exchanges, _ = collected(gen_dir, "test", cache)
    accounts = _accounts(gen_dir, "test")
    keys = with_creation_keys(keys, signals, accounts, TrustPolicy().young_days)
    views = account_views(signals, keys)
    ctx = context_for(views, keys, accounts=accounts)
    verdicts, _ = score_views(views, model, ctx)
    labels = list(read_labels(gen_dir / "test.labels.jsonl"))
    rep = evaluate(labels, verdicts, app_persona=app_persona)
    print(
        f"\n=== fit on {fit_name}, report on {name} (test split: {rep.accounts:,} accounts, "
        f"{rep.campaign_accounts:,} campaign, {exchanges:,} exchanges) ==="
    )
    print(
        f"AUROC {rep.auroc:.4f}  TPR@FPR1e-3 {rep.tpr_at_fpr_1e3:.3f}  "
        f"TPR@FPR1e-2 {rep.tpr_at_fpr_1e2:.3f}  operating point: TPR {rep.flagged_tpr:.3f} "
        f"FPR {rep.flagged_fpr:.4f}"
    )
    hydra = "n/a" if rep.ari_hydra is None else f"{rep.ari_hydra:.3f}"
    print(
        f"legit apps acted on {rep.legit_apps_flagged}/{rep.legit_apps}; ARI all "
        f"{rep.ari_all:.3f}, multi-account campaigns {hydra}"
    )
    print(f"{'persona':28s} {'label':8s} {'accts':>6s} {'acted':>6s}  p = 1 - score: min/med/max")
    for p in rep.personas:
        print(
            f"{p.persona:28s} {p.label:8s} {p.accounts:6d} {p.flagged:6d}  "
            f"{1 - p.score_max:.1e}/{1 - p.score_median:.1e}/{1 - p.score_min:.1e}"
        )
    lab = {x.account_id: x for x in labels}
    fps = [v for v in verdicts if lab[v.account_id].label == "honest" and v.flagged]
    for v in fps[:6]:
        print(f"  false positive {lab[v.account_id].persona}: {v.score:.6f} {list(v.reasons)}")
    miss = defaultdict(list)
    for v in verdicts:
        if lab[v.account_id].label == "campaign" and not v.flagged:
            miss[lab[v.account_id].persona].append(v)
    for p, vs in miss.items():
        v = max(vs, key=lambda v: v.score)
        print(f"  missed {len(vs)} {p}; best score {v.score:.6f} {list(v.reasons)}")
    return rep


def online(model, gen_dir: Path, labels_path: Path):
    from distillguard.monitor.evaluate import online_replay
    from distillguard.monitor.online import OnlineMonitor
    from distillguard.monitor.policy import load_policy
    from distillguard.traffic import read_labels, read_traffic

    labels = list(read_labels(labels_path))
    t0 = time.perf_counter()
    monitor = OnlineMonitor(load_policy(), model=model, accounts=_accounts(gen_dir, "test"))
    rep = online_replay(read_traffic(gen_dir / "test.jsonl"), labels, monitor)
    dt = time.perf_counter() - t0
    by = defaultdict(list)
    for t in rep.time_to_flag:
        by[t.persona].append(t.requests_until_flagged)
    print(
        f"[online replay {gen_dir.name}] {dt:.0f} s; honest accounts acted on "
        f"{len(rep.honest_acted_on)}/{rep.honest_accounts} over {rep.days:.1f} days = "
        f"{rep.false_actions_per_1000_per_day:.2f} per 1,000 honest accounts per day"
    )
    for p, v in sorted(by.items()):
        print(f"  {p:28s} requests until first action: {v}")
    persona = {x.account_id: x.persona for x in labels}
    acted = sorted(persona.get(a, "?") for a in rep.honest_acted_on)
    print(f"  honest accounts acted on, by persona: {acted}")
    return rep, dict(by)


def score_only(path: str, workers: int) -> None:
    """Child process: score one log, print timing and this process tree's peak memory."""
    from distillguard.monitor.offline import score_traffic

    rep = score_traffic(
        Path(path), Path(path).with_suffix(f".verdicts{workers}.jsonl"), workers=workers
    )
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "exchanges": rep.exchanges,
                "seconds": rep.seconds,
                "parent_rss_mb": me / 1024,
                "worker_rss_mb": kids / 1024,
            }
        )
    )


def speed(path: Path) -> dict:
    out = {}
    for w in (1, 2):
        r = subprocess.run(
            [sys.executable, __file__, "--score-only", str(path), "--workers", str(w)],
            check=True,
            capture_output=True,
            text=True,
        )
        s = json.loads(r.stdout.strip().splitlines()[-1])
        out[w] = s
        print(
            f"[offline speed] {w} worker(s): {s['exchanges']:,} exchanges in "
            f"{s['seconds']:.1f} s = {s['exchanges'] / s['seconds']:,.0f}/s; peak RSS parent "
            f"{s['parent_rss_mb']:.0f} MB, worker {s['worker_rss_mb']:.0f} MB"
        )
    return out


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(results)
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 5), squeeze=False)
    for ax, key in zip(axes[0], pairs, strict=True):
        rep = results[key]["report"]
        names = [p["persona"] for p in rep["personas"]]
        share = [p["flagged"] / p["accounts"] for p in rep["personas"]]
        colors = ["tab:red" if p["label"] == "campaign" else "tab:blue" for p in rep["personas"]]
        ax.barh(names, share, color=colors)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of accounts acted on (red: campaign, blue: honest)")
        ax.set_title(
            f"{key}\nAUROC {rep['auroc']:.3f}, TPR@1e-3 {rep['tpr_at_fpr_1e3']:.2f}", fontsize=10
        )
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG, dpi=110)
    print(f"plot -> {IMG.relative_to(ROOT)}")


def main() -> None:
    import dataclasses

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen", action="append", default=[], help="NAME=DIR (repeat)")
    ap.add_argument("--ship", help="write this generator's fitted model to score_model.json")
    ap.add_argument("--online", action="store_true", help="replay cross pairs online")
    ap.add_argument("--speed", action="store_true", help="time offline scoring")
    ap.add_argument(
        "--app-persona",
        default=r"app_|legit_app|app-",
        help="regex of legitimate-app personas (from the start)",
    )
    ap.add_argument("--cache", type=Path, default=Path("/tmp/distillguard-detection-cross"))
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: cache dir)")
    ap.add_argument("--score-only", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score_only:
        score_only(args.score_only, args.workers)
        return
    gens = dict(g.split("=", 1) for g in args.gen)
    gens = {k: Path(v) for k, v in gens.items()}
    for k, d in gens.items():
        for f in ("train.jsonl", "train.labels.jsonl", "test.jsonl", "test.labels.jsonl"):
            if not (d / f).exists():
                sys.exit(f"generator {k}: {d / f} is missing")
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")
    models = {k: fit(k, d, args.cache) for k, d in gens.items()}
    for k, m in models.items():
        m.save(args.cache / f"model-{k}.json")
    if args.ship:
        models[args.ship].save(MODEL_PATH)
        print(f"shipped the model fitted on {args.ship} -> {MODEL_PATH.relative_to(ROOT)}")
    results = {}
    for fk, m in models.items():
        for rk, d in gens.items():
            key = f"fit {fk} -> report {rk}"
            rep = report(m, fk, rk, d, args.cache, args.app_persona)
            entry = {"report": dataclasses.asdict(rep)}
            if args.online and fk != rk:
                orep, ttf = online(m, d, d / "test.labels.jsonl")
                entry["online"] = {
                    "false_actions_per_1000_per_day": orep.false_actions_per_1000_per_day,
                    "honest_acted_on": len(orep.honest_acted_on),
                    "honest_accounts": orep.honest_accounts,
                    "days": orep.days,
                    "requests_until_first_action": ttf,
                }
            results[key] = entry
    if args.speed:
        first = next(iter(gens.values()))
        results["offline_speed"] = speed(first / "test.jsonl")
    out = args.out or args.cache / "detection_cross.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    plot({k: v for k, v in results.items() if k.startswith("fit ")})
    print(f"results -> {out}")
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
