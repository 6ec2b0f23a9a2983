"""Watermark-free teacher attribution on real LLM outputs (alpaca_eval, 13 models x 805 prompts).

Ground truth (`taught_by`): alpaca-7b <- text_davinci_003, claude2-alpaca-13b <- claude-2,
vicuna-13b-v1.3 <- ChatGPT (ShareGPT: 2023 ChatGPT conversations, gpt-3.5 and gpt-4 mixed;
gpt-3.5-turbo-0613 and gpt4 stand in, the OpenAI family verdict is counted apart).
Leave-one-model-out: every model in turn is the suspect, the 12 others the candidates; the
suspect's outputs are never in the supervised training.

Prompts are split once (seeded permutation) into quarters. The candidates learn from their
answers to Q0+Q1; the suspect is tested on its answers to Q3 (the report split), prompts
that no classifier saw. Q2 is the tuning split (the settings were chosen there, ``--split
2``). ``--same-prompts`` tests the suspect on Q0 instead: prompts whose answers the
candidates learned from (the setting where candidates answered the suspect's own prompts).

Two methods run on the same splits in one run: the **peer** (TF-IDF n-grams, nearest
centroid, vote share; refitted for every leave-one-out subset) and the **new** one (TF-IDF
n-grams + stylometry, one logistic regression per pair of models, coupled; mean
probability). The new one is fitted once: a classifier over a subset of the models reads only
the pairs inside the subset, whose fits never saw the others' answers. Both share the
statistics (leave-one-out null, predictive t, Holm over 12 candidates + 2 families, sibling
sign test).

Families (vendors) are declared: openai = gpt4, gpt4_1106_preview, gpt-3.5-turbo-0613,
text_davinci_003; meta = llama-2-7b-chat-hf, Meta-Llama-3-8B-Instruct.

Reported: documented pairs named; untaught suspects attributed (strictly: any verdict naming
another family; split into "reversed" = a teacher attributed to its own documented student,
which is the same relation seen from the other side, and unrelated); own held-out answers
named with all 13 as classes (per answer, per set of 50 answers, per model from all its
test answers: the summed pairwise log-likelihood); p-value calibration of unrelated
(suspect, candidate) pairs; a direction probe (is the student's text inside the teacher's
more than the reverse?); the confusion matrix plot.

Run: PYTHONPATH=src .venv/bin/python benchmarks/attribution.py [--data ../shared/data/outputs]
[--split 3] [--same-prompts] [--plot docs/img/attribution_confusion.png] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from scipy import sparse, stats

from distillguard.forensics.attribution import (
    AttributionConfig,
    AttributionResult,
    attribute_shares,
    read_answers,
)
from distillguard.forensics.attribution_features import (
    AnswerFeatures,
    PairDecisions,
    answer_features,
    fit_pairwise,
    fit_representation,
)

PAIRS = {
    "alpaca-7b": "text_davinci_003",
    "claude2-alpaca-13b": "claude-2",
    "vicuna-13b-v1.3": "gpt-3.5-turbo-0613",
}
# ShareGPT mixed gpt-3.5 and gpt-4 conversations: either names vicuna's teacher.
ALSO_TEACHER = {"vicuna-13b-v1.3": ("gpt4",)}
FAMILIES = {
    "gpt4": "openai",
    "gpt4_1106_preview": "openai",
    "gpt-3.5-turbo-0613": "openai",
    "text_davinci_003": "openai",
    "llama-2-7b-chat-hf": "meta",
    "Meta-Llama-3-8B-Instruct": "meta",
}
STUDENT_OF = {t: s for s, t in PAIRS.items()}

Shares = dict[str, float]
Scorer = Callable[[list[str]], Callable[[AnswerFeatures], Shares]]


def centroid_scorer(
    train: Mapping[str, AnswerFeatures],
) -> Callable[[list[str]], Callable[[AnswerFeatures], Shares]]:
    """The peer: TF-IDF n-grams, nearest centroid, vote share (the method before #17)."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import normalize

    def fit(names: list[str]) -> Callable[[AnswerFeatures], Shares]:
        feats = sparse.vstack([train[n].ngrams for n in names]).tocsr()
        labels = np.repeat(np.arange(len(names)), [train[n].num_answers for n in names])
        tfidf = TfidfTransformer(sublinear_tf=True).fit(feats)
        weighted = tfidf.transform(feats)
        centroids = normalize(
            np.vstack([np.asarray(weighted[labels == k].mean(axis=0)) for k in range(len(names))])
        )  # (K, F)

        def shares(f: AnswerFeatures) -> Shares:
            scores = np.asarray(tfidf.transform(f.ngrams) @ centroids.T)  # (N, K)
            counts = np.bincount(scores.argmax(axis=1), minlength=len(names))
            return dict(zip(names, (counts / f.num_answers).tolist(), strict=True))

        shares.predict = lambda f: np.asarray(tfidf.transform(f.ngrams) @ centroids.T).argmax(1)  # type: ignore[attr-defined]
        return shares

    return fit


def evaluate_new(
    train: Mapping[str, AnswerFeatures],
    test: Mapping[str, AnswerFeatures],
    names: list[str],
    config: AttributionConfig,
    seed: int,
) -> dict:
    """The new method: one pairwise fit over all models (K(K-1)/2 two-class regressions),
    then every suspect's test and null read from it. The representation (TF-IDF, scaling) is
    fitted on all models' training answers (unsupervised)."""
    rep = fit_representation([train[n] for n in names], config)
    clf = fit_pairwise(train, config, rep)
    decisions: dict[str, PairDecisions] = {n: clf.decisions(test[n]) for n in names}
    results = {}
    for s in names:
        cands = [n for n in names if n != s]
        loo = {
            j: decisions[j].shares([n for n in cands if n != j], config.statistic) for j in cands
        }
        results[s] = attribute_shares(
            s,
            decisions[s].shares(cands, config.statistic),
            loo,
            num_answers=test[s].num_answers,
            config=config,
            votes=decisions[s].shares(cands, "vote"),
        )
    # Own answers with all models as classes: per answer, per 50 answers, per model.
    confusion = np.zeros((len(names), len(names)), dtype=int)  # (true, predicted)
    rng = np.random.default_rng(seed)
    set50, whole = [], []
    for k, n in enumerate(names):
        scores = decisions[n].log_scores(names)  # (N, K)
        confusion[k] = np.bincount(scores.argmax(axis=1), minlength=len(names))
        whole.append(int(scores.sum(axis=0).argmax()))
        for _ in range(50):
            rows = rng.choice(len(scores), size=min(50, len(scores)), replace=False)
            set50.append(scores[rows].sum(axis=0).argmax() == k)
    return {
        "results": results,
        "confusion": confusion,
        "own_set50": float(np.mean(set50)),
        "own_whole": {n: names[w] for n, w in zip(names, whole, strict=True)},
    }


def subset(f: AnswerFeatures, rows: np.ndarray) -> AnswerFeatures:
    return AnswerFeatures(f.ngrams[rows], f.style[rows])


def evaluate(
    label: str,
    fit: Callable[[list[str]], Callable[[AnswerFeatures], Shares]],
    names: list[str],
    test: Mapping[str, AnswerFeatures],
    config: AttributionConfig,
    bar: Progress,
) -> dict:
    """Leave-one-model-out over all names: 1 + N + N(N-1)/2 classifier fits."""
    task = bar.add_task(
        f"{label}: fitting", total=1 + len(names) + len(names) * (len(names) - 1) // 2
    )
    full = fit(names)
    predict = full.predict  # type: ignore[attr-defined]
    confusion = np.zeros((len(names), len(names)), dtype=int)  # (true, predicted)
    for k, n in enumerate(names):
        confusion[k] = np.bincount(predict(test[n]), minlength=len(names))
    bar.advance(task)
    shares, votes, pair = {}, {}, {}
    for s in names:
        fitted = fit([n for n in names if n != s])
        shares[s] = fitted(test[s])
        votes[s] = getattr(fitted, "votes", fitted)(test[s])
        bar.advance(task)
    for a, b in itertools.combinations(names, 2):
        fitted = fit([n for n in names if n not in (a, b)])
        pair[(a, b)], pair[(b, a)] = fitted(test[b]), fitted(test[a])
        bar.advance(task)
    results = {}
    for s in names:
        loo = {j: pair[(s, j)] for j in names if j != s}
        num = test[s].num_answers
        results[s] = attribute_shares(
            s, shares[s], loo, num_answers=num, config=config, votes=votes[s]
        )
    return {"results": results, "confusion": confusion}


def outcome(suspect: str, result: AttributionResult) -> str:
    teacher, verdict = PAIRS.get(suspect), result.verdict
    if teacher is not None:
        if verdict == teacher or verdict in ALSO_TEACHER.get(suspect, ()):
            return "named"
        if verdict is not None and verdict == f"family:{FAMILIES.get(teacher, teacher)}":
            return "family named"
        return "missed" if verdict is None else "WRONG"
    if verdict is None:
        return "none (correct)"
    if verdict == f"family:{FAMILIES.get(suspect, suspect)}":
        return "own family"
    if verdict == STUDENT_OF.get(suspect):
        return "reversed (own student)"
    return "FALSE"


def calibration(results: Mapping[str, AttributionResult]) -> np.ndarray:
    """Uncorrected p-values of (untaught suspect, unrelated candidate) pairs: should be
    uniform. Unrelated: not the suspect's family, not its documented teacher or student."""
    out = []
    for s, r in results.items():
        related = {PAIRS.get(s), STUDENT_OF.get(s), f"family:{FAMILIES.get(s, s)}"}
        for c in r.candidates:
            fam = FAMILIES.get(c.name, c.name)
            if c.name in related or c.name.startswith("family:") or fam == FAMILIES.get(s, s):
                continue
            if s in PAIRS or s in STUDENT_OF or c.name in PAIRS or c.name in STUDENT_OF:
                continue
            out.append(c.p)
    return np.array(out)


def summarize(label: str, run: dict, names: list[str]) -> dict:
    results, confusion = run["results"], run["confusion"]
    rows = {s: outcome(s, r) for s, r in results.items()}
    per_answer = float(np.trace(confusion) / confusion.sum())
    majority = int(sum(confusion[k].argmax() == k for k in range(len(names))))
    ps = calibration(results)
    ks = stats.kstest(ps, "uniform") if ps.size else None
    # Direction probe: a student's answers mistaken for its teacher's vs the reverse, set
    # against the same asymmetry for all other model pairs.
    rate = confusion / confusion.sum(axis=1, keepdims=True)  # (true, predicted)
    idx = {n: k for k, n in enumerate(names)}
    asym = {(s, t): float(rate[idx[s], idx[t]] - rate[idx[t], idx[s]]) for s, t in PAIRS.items()}
    others = [
        abs(rate[i, j] - rate[j, i])
        for i, j in itertools.combinations(range(len(names)), 2)
        if {names[i], names[j]} not in [set(p) for p in PAIRS.items()]
    ]
    return {
        "label": label,
        "rows": rows,
        "named": sum(v == "named" for v in rows.values()),
        "family": sum(v == "family named" for v in rows.values()),
        "reversed": sum(v == "reversed (own student)" for v in rows.values()),
        "false": sum(v == "FALSE" for v in rows.values()),
        "per_answer": per_answer,
        "majority": majority,
        "calibration_n": int(ps.size),
        "calibration_ks_p": float(ks.pvalue) if ks else None,
        "calibration_below_05": float((ps <= 0.05).mean()) if ps.size else None,
        "calibration_below_01": float((ps <= 0.01).mean()) if ps.size else None,
        "direction": {f"{s}->{t}": round(v, 3) for (s, t), v in asym.items()},
        "direction_others_abs_q90": float(np.quantile(others, 0.9)),
    }


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = confusion / confusion.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i, j in itertools.product(range(len(names)), repeat=2):
        ax.text(
            j,
            i,
            f"{rate[i, j]:.2f}"[1:] if rate[i, j] < 1 else "1",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if rate[i, j] > 0.5 else "black",
        )
    ax.set_xlabel("predicted model")
    ax.set_ylabel("true model (held-out answers)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/outputs"))
    parser.add_argument("--split", type=int, default=3, choices=(2, 3), help="suspect quarter")
    parser.add_argument("--same-prompts", action="store_true", help="suspect tested on Q0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--statistic", default="mean_probability", choices=("mean_probability", "vote")
    )
    parser.add_argument("--regularization", type=float, default=None)
    parser.add_argument("--skip-peer", action="store_true", help="only the new method")
    parser.add_argument("--plot", type=Path, default=None, help="confusion matrix PNG")
    parser.add_argument("--out", type=Path, default=None, help="write all rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.data.is_dir():
        print(f"outputs not found at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    config = AttributionConfig(families=FAMILIES, statistic=args.statistic)
    if args.regularization is not None:
        from dataclasses import replace

        config = replace(config, regularization=args.regularization)
    sets = {p.stem: read_answers(p) for p in sorted(args.data.glob("*.jsonl"))}
    names = sorted(sets)
    prompts = sorted(set.intersection(*[set(s.answers) for s in sets.values()]))
    perm = np.random.default_rng(args.seed).permutation(len(prompts))
    train_idx = np.sort(np.concatenate([perm[0::4], perm[1::4]]))
    test_idx = np.sort(perm[0::4] if args.same_prompts else perm[args.split :: 4])
    started = time.time()
    with Progress() as bar:
        task = bar.add_task("featurizing", total=len(names))
        every, train, test = {}, {}, {}
        for n in names:
            every[n] = answer_features([sets[n].answers[p] for p in prompts], config)
            train[n], test[n] = subset(every[n], train_idx), subset(every[n], test_idx)
            bar.advance(task)
        bar.console.print(f"features done at {time.time() - started:.0f} s")
        runs = {"new": evaluate_new(train, test, names, config, args.seed)}
        early = summarize("new", runs["new"], names)
        bar.console.print(f"new method done at {time.time() - started:.0f} s: {early}")
        if not args.skip_peer:
            runs["peer"] = evaluate("peer", centroid_scorer(train), names, test, config, bar)
    mode = (
        "Q0 (same prompts as the candidates' training)" if args.same_prompts else f"Q{args.split}"
    )
    print(
        f"\nattribution, leave-one-model-out over {len(names)} models; candidates trained on "
        f"Q0+Q1 ({len(train_idx)} prompts), suspects tested on {mode} ({len(test_idx)} "
        f"prompts); alpha {config.alpha} Holm; {time.time() - started:.0f} s"
    )
    summaries = {}
    for label, run in runs.items():
        summary = summarize(label, run, names)
        summaries[label] = summary
        print(f"\n--- {label} ---")
        for s, r in run["results"].items():
            top = [
                (c.name, round(c.share, 3), round(c.null_mean, 3), f"{c.p_holm:.2g}")
                for c in r.candidates[:2]
            ]
            print(f"{s:26s} verdict={r.verdict!s:24s} {summary['rows'][s]:24s} top={top}")
    print(
        "\nmethod  pairs named  +family  reversed  false(unrelated)  own/answer  own/majority  "
        "calib KS p  p<=.05  p<=.01 (n)"
    )
    for label, sm in summaries.items():
        print(
            f"{label:7s} {sm['named']}/3{'':9s}{sm['family']}/3{'':4s}{sm['reversed']}/10{'':6s}"
            f"{sm['false']}/10{'':13s}{sm['per_answer']:.1%}{'':6s}{sm['majority']}/13{'':9s}"
            f"{sm['calibration_ks_p']:.3g}{'':6s}{sm['calibration_below_05']:.3f}  "
            f"{sm['calibration_below_01']:.3f} ({sm['calibration_n']})"
        )
    for label, run in runs.items():
        if "own_whole" in run:
            whole = run["own_whole"]
            print(
                f"{label}: own answers named from 50 answers {run['own_set50']:.1%} (50 draws "
                f"per model); from all {len(test_idx)}: "
                f"{sum(k == v for k, v in whole.items())}/{len(names)} "
                f"{ {k: v for k, v in whole.items() if k != v} }"
            )
    for label, sm in summaries.items():
        print(
            f"{label} direction probe (rate student->teacher minus teacher->student; other "
            f"pairs' |asymmetry| q90 {sm['direction_others_abs_q90']:.3f}): {sm['direction']}"
        )
    strict = {k: v["reversed"] + v["false"] for k, v in summaries.items()}
    print(f"strict false count (reversed + unrelated): {strict}")
    if args.plot:
        plot_confusion(
            runs["new"]["confusion"],
            names,
            args.plot,
            f"attribution classifier (new), 13 classes, held-out answers ({mode}); "
            f"{summaries['new']['per_answer']:.1%} per answer",
        )
    if args.out:
        dump = {
            label: {
                **sm,
                "verdicts": {s: r.to_dict() for s, r in runs[label]["results"].items()},
                "confusion": runs[label]["confusion"].tolist(),
                "own_set50": runs[label].get("own_set50"),
                "own_whole": runs[label].get("own_whole"),
            }
            for label, sm in summaries.items()
        }
        args.out.write_text(json.dumps(dump, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
