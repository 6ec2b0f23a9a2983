"""Prevention trade-off: honest users' accuracy vs what a distilled student keeps (issue 13).

    .venv/bin/python benchmarks/prevention.py [--curve 250,500,1000,2000] [--harvest 1000]
        [--held-out 200] [--steps 300] [--lambdas 1,3] [--vote 3] [--teacher DIR]
        [--base DIR] [--json out.json] [--plots docs/img]

1. The arithmetic teacher (``prevent build-teacher``, cached under DISTILLGUARD_HOME) is graded
   on held-out problems with its reasoning, answer only, and with a summary.
2. The attacker's base student (``tradeoff.pretrain_student``: knows single arithmetic facts,
   never saw a chain; cached beside the teacher) is graded as it is: the no-teacher baseline.
3. Learning curve: the base student distilled (sft and topk-kd, the distill room's trainers,
   ``--steps`` steps whatever N) on the first N undefended answers, N in ``--curve``.
4. Per defence (cap_logprobs k=0, withhold drop / summary, perturb_reasoning in its first
   (result) and its carry mode, antidistill at each lambda) the teacher answers the
   attacker's ``--harvest`` train-split problems the way the gateway serves them under the
   action (prevent-serve's functions over the engine's output, no HTTP), and honest users'
   held-out problems the same way: "honest acc" is the accuracy of what they are served.
   Students as in 3; gain lost = 1 - (acc_def - acc_base) / (acc_undef - acc_base).
5. Adaptive attackers: perturbed steps repaired from the chain; antidistill answered
   ``--vote`` times at temperature 1 and majority-voted.
Results go to ``--json`` as they arrive (a killed run keeps what it measured) and to plots:
docs/img/prevention_curve.png, prevention_tradeoff.png, prevention_antidistill.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from distillguard.config import get_settings
from distillguard.models.engine import GenerationEngine
from distillguard.models.tokenizer import format_chat_pair
from distillguard.prevent.task import STYLES, generate, prompt_for, solution
from distillguard.prevent.teacher import arith_teacher_dir, grade
from distillguard.prevent.tradeoff import (
    Defence,
    StudentSpec,
    antidistill_hook,
    apply_defence,
    base_accuracy,
    base_student_dir,
    distill_and_grade,
    draft_key,
    gain_lost,
    generate_drafts,
    harvest_rows,
    served_accuracy,
)

REPO = Path(__file__).resolve().parents[1]


def conditions(lambdas: list[float], votes: int) -> list[Defence]:
    out = [
        Defence("none"),
        Defence("cap_logprobs", top_logprobs=0),
        Defence("drop"),
        Defence("summary"),
        Defence("perturb_result"),
        Defence("perturb_result", adaptive="repair"),
        Defence("perturb"),
        Defence("perturb", adaptive="repair"),
    ]
    out += [Defence("antidistill", lam=lam) for lam in lambdas]
    if lambdas and votes > 1:
        out.append(Defence("antidistill", lam=max(lambdas), adaptive="vote", samples=votes))
    return out


def modes_for(defence: Defence) -> list[str]:
    if defence.name == "none":
        return ["sft", "topk-kd"]
    if defence.name == "cap_logprobs":
        return ["topk-kd"]  # its text is the undefended text: sft is the "none" row
    return ["sft"]  # no logprobs served: a gray-box attacker falls back to sft


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=None)
    ap.add_argument("--base", type=Path, default=None, help="attacker's base student dir")
    ap.add_argument("--curve", default="250,500,1000,2000", help="harvest sizes, undefended")
    ap.add_argument("--harvest", type=int, default=1000, help="answers per defended harvest")
    ap.add_argument("--held-out", type=int, default=200, help="held-out problems graded")
    ap.add_argument("--steps", type=int, default=300, help="student optimizer steps")
    ap.add_argument("--lambdas", default="1,3", help="antidistill lambdas, comma-separated")
    ap.add_argument("--vote", type=int, default=3, help="adaptive attacker's samples (1: off)")
    ap.add_argument(
        "--no-teacher-grade", action="store_true", help="split runs: one run grades the teacher"
    )
    ap.add_argument("--curve-modes", default="sft,topk-kd", help="modes of the curve")
    ap.add_argument("--only", default="", help="comma-separated defence titles to run")
    ap.add_argument("--json", type=Path, default=Path("/tmp/prevention_results.json"))
    ap.add_argument("--plots", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--watermark",
        type=int,
        default=0,
        help="only the watermark section: TPR at FPR 1e-3 per defence on this many problems",
    )
    ap.add_argument("--merge", type=Path, nargs="*", help="JSON results of split runs to merge")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.harvest, args.json, args.plots)
        return
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()

    settings = get_settings()
    teacher_dir = args.teacher or arith_teacher_dir(settings)
    if args.watermark:
        watermark_section(teacher_dir, args)
        return
    spec = StudentSpec(steps=args.steps, seed=args.seed)
    base_dir = args.base or base_student_dir(settings, teacher_dir, spec)
    engine = GenerationEngine.from_dir(teacher_dir, num_threads=1, max_batch_size=32)
    curve = sorted(int(x) for x in args.curve.split(",") if x.strip())
    attack = generate(max([args.harvest, *curve]), split="train", seed=args.seed + 1)
    held = generate(args.held_out, split="held_out", seed=args.seed + 1)
    defender_val = generate(64, split="train", seed=args.seed + 99)  # the proxy's loss data
    lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    results: dict = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "load_at_start": _load(),
        "teacher": {},
        "curve": {},
        "rows": [],
    }

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        results["load_at_end"] = _load()
        args.json.write_text(json.dumps(results, indent=2))

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s, load {_load()}] {text}", flush=True)

    for style in () if args.no_teacher_grade else STYLES:
        results["teacher"][style] = grade(engine, held, style).accuracy
    results["base"] = base_accuracy(base_dir, held)
    save()
    say(f"teacher on {len(held)} held-out problems: {results['teacher']}")
    say(f"baseline (base student, no teacher): {results['base']:.3f}")

    # Learning curve: the undefended harvest, first N answers.
    none = Defence("none")
    drafts: dict = {("attack", draft_key(none)): generate_drafts(engine, attack, none)}
    undefended_served = apply_defence(
        engine, drafts[("attack", draft_key(none))], none, account="attacker"
    )
    full = harvest_rows(attack, undefended_served)
    results["harvest_final_acc_undefended"] = served_accuracy(attack, undefended_served)
    for n in curve:
        for mode in [m.strip() for m in args.curve_modes.split(",") if m.strip()]:
            acc = distill_and_grade(full[:n], mode, base_dir, held, spec)
            results["curve"].setdefault(mode, {})[str(n)] = acc
            save()
            say(f"curve N={n} {mode}: {acc:.3f}")

    texts = [format_chat_pair(prompt_for(p), solution(p)) for p in defender_val]
    hooks = {lam: antidistill_hook(engine, texts, lam) for lam in lambdas}
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    plan = [d for d in conditions(lambdas, args.vote) if not only or d.title in only]
    problems = attack[: args.harvest]
    undefended_rows = full[: args.harvest]
    trained: dict = {}  # (mode, harvest as JSON) -> accuracy: identical harvests train once
    for defence in plan:
        hook = hooks.get(defence.lam)
        t0 = time.perf_counter()
        honest_defence = Defence(defence.name, defence.top_logprobs, defence.lam)
        served = {}
        for split, probs, d, account in (
            ("held", held, honest_defence, "honest"),
            ("attack", problems, defence, "attacker"),
        ):
            key = (split, draft_key(d))
            if key not in drafts:
                drafts[key] = generate_drafts(engine, probs, d, hook=hook, seed=args.seed)
            raw = drafts[key][: len(probs)]
            served[split] = apply_defence(engine, raw, d, account=account)
        honest, harvested = served["held"], served["attack"]
        rows = harvest_rows(problems, harvested)
        row = {
            "defence": defence.title,
            "name": defence.name,
            "lam": defence.lam,
            "adaptive": defence.adaptive,
            "honest_acc": served_accuracy(held, honest),
            "harvest_final_acc": served_accuracy(problems, harvested),
            "honest_steps_match_problem": _steps_match(held, honest.texts),
            "example": harvested.texts[0],
            "serve_seconds": time.perf_counter() - t0,
            "student": {},
        }
        same_as_none = {
            "sft": [r["answer"] for r in rows] == [r["answer"] for r in undefended_rows],
            "topk-kd": rows == undefended_rows,
        }
        for mode in modes_for(defence):
            if same_as_none[mode]:
                # Byte-identical to the undefended harvest (the repair undid the defence,
                # or the row is the undefended one): the same student, not trained twice
                # (filled from the curve here or when split runs are merged).
                row["student"][mode] = results["curve"].get(mode, {}).get(str(args.harvest))
                row["identical_to_undefended"] = True
            else:
                key = (mode, json.dumps(rows if mode == "topk-kd" else [r["answer"] for r in rows]))
                if key not in trained:
                    trained[key] = distill_and_grade(rows, mode, base_dir, held, spec)
                row["student"][mode] = trained[key]
        results["rows"].append(row)
        save()
        say(
            f"{defence.title:34s} honest {row['honest_acc']:.3f}  "
            + "  ".join(f"{m} {a:.3f}" for m, a in row["student"].items())
        )

    finish(results, args.harvest)
    save()
    print_table(results)
    plot(results, args.plots)


def finish(results: dict, harvest: int) -> None:
    """gain lost per row and mode, against the undefended student of the same N and mode."""
    for r in results["rows"]:
        r["gain_lost"] = {}
        for mode, acc in list(r["student"].items()):
            ref = results["curve"].get(mode, {}).get(str(harvest))
            if acc is None and r.get("identical_to_undefended"):
                acc = r["student"][mode] = ref
            try:
                r["gain_lost"][mode] = gain_lost(acc, ref, results["base"])
            except Exception as exc:  # undefined when the undefended student gained nothing
                r["gain_lost"][mode] = None
                results.setdefault("notes", []).append(str(exc))


def merge(paths: list[Path], harvest: int, out: Path, plots: Path) -> None:
    """One table and the plots from runs split over processes (--only, --curve '')."""
    parts = [json.loads(p.read_text()) for p in paths]
    results = {**parts[0], "curve": {}, "rows": [], "merged_from": [str(p) for p in paths]}
    for part in parts:
        for mode, points in part.get("curve", {}).items():
            results["curve"].setdefault(mode, {}).update(points)
        results["rows"] += [r for r in part["rows"] if r not in results["rows"]]
    results["teacher"] = next((p["teacher"] for p in parts if p.get("teacher")), {})
    results["load"] = [(p.get("load_at_start"), p.get("load_at_end")) for p in parts]
    results["seconds"] = max(p.get("seconds", 0) for p in parts)
    results["load_at_start"] = results["load"][0][0]
    results["load_at_end"] = results["load"][-1][1]
    finish(results, harvest)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    plot(results, plots)


WATERMARK_SECRET = b"prevention-benchmark-watermark-secret-0123"


def watermark_section(teacher_dir: Path, args: argparse.Namespace) -> None:
    """TPR at FPR 1e-3 (chunks of 200 tokens of one account's served answers) per defence:
    the teacher served with the gateway's default KGW mark, the null the same problems from
    the unmarked teacher through the same defence."""
    from distillguard.prevent.marking import mark_rates
    from distillguard.watermark import build_scheme
    from distillguard.watermark.detect import TextDetector
    from distillguard.watermark.keys import KeyRing

    started = time.perf_counter()
    marked = GenerationEngine.from_dir(teacher_dir, num_threads=1, max_batch_size=32)
    marked.sampler = build_scheme(
        "kgw", secret=WATERMARK_SECRET, key_id=1, vocab_size=marked.vocab_size
    )
    clean = GenerationEngine.from_dir(teacher_dir, num_threads=1, max_batch_size=32)
    detector = TextDetector(
        tokenizer=marked.tokenizer, keyring=KeyRing(WATERMARK_SECRET), scheme="kgw"
    )
    problems = generate(args.watermark, split="train", seed=args.seed + 5)
    lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    defender_val = generate(64, split="train", seed=args.seed + 99)
    texts = [format_chat_pair(prompt_for(p), solution(p)) for p in defender_val]
    lam = max(lambdas) if lambdas else 0.0
    hook = antidistill_hook(clean, texts, lam) if lam else None
    plan = [Defence(n) for n in ("none", "drop", "summary", "perturb_result", "perturb")]
    plan += [Defence("antidistill", lam=lam)] if lam else []
    out: dict = {"load_at_start": _load(), "problems": len(problems), "rows": []}
    drafts: dict = {}
    for d in plan:
        served = {}
        for name, engine in (("marked", marked), ("clean", clean)):
            key = (name, draft_key(d))
            if key not in drafts:
                drafts[key] = generate_drafts(engine, problems, d, hook=hook, tag="attacker")
            served[name] = apply_defence(engine, drafts[key], d, account="attacker")
        rates = mark_rates(detector, served["marked"].texts, served["clean"].texts, tokens=200)
        row = {
            "defence": d.title,
            "tpr": rates.tpr,
            "fpr": rates.fpr,
            "chunks": rates.chunks,
            "median_log10_p": rates.median_log10_p,
            "served_acc_marked": served_accuracy(problems, served["marked"]),
            "served_acc_clean": served_accuracy(problems, served["clean"]),
        }
        out["rows"].append(row)
        out["seconds"] = time.perf_counter() - started
        out["load_at_end"] = _load()
        args.json.write_text(json.dumps(out, indent=2))
        print(
            f"{d.title:28s} TPR {rates.tpr:.3f} FPR {rates.fpr:.3f} ({rates.chunks} chunks, "
            f"median log10 p {rates.median_log10_p:.1f}); served acc marked "
            f"{row['served_acc_marked']:.3f} / clean {row['served_acc_clean']:.3f}",
            flush=True,
        )


def _steps_match(problems: list, texts: list[str]) -> float:
    """Share of answers whose step lines are exactly the problem's true steps (what an honest
    user who reads the reasoning sees): the cost of a defence beyond the final answer."""
    return sum(
        all(line in t.split("\n") for line in solution(p).split("\n")[:-1])
        for p, t in zip(problems, texts, strict=True)
    ) / max(1, len(problems))


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = results["teacher"]
    table = Table(
        title=(
            f"teacher: reasoning {t['reasoning']:.3f} / answer only {t['answer_only']:.3f} / "
            f"summary {t['summary']:.3f}; base student (no teacher) {results['base']:.3f}"
        )
    )
    for col in (
        "defence",
        "honest acc",
        "sft student",
        "topk-kd student",
        "gain lost sft",
        "gain lost topk",
    ):
        table.add_column(col)

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for r in results["rows"]:
        s, g = r["student"], r["gain_lost"]
        table.add_row(
            r["defence"],
            fmt(r["honest_acc"]),
            fmt(s.get("sft")),
            fmt(s.get("topk-kd")),
            fmt(g.get("sft")),
            fmt(g.get("topk-kd")),
        )
    Console(width=160).print(table)
    print(
        f"load at start {results['load_at_start']}, at end {results['load_at_end']}, "
        f"{results['seconds']:.0f} s"
    )


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    if results["curve"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for mode, points in results["curve"].items():
            ns = sorted(int(n) for n in points)
            ax.plot(ns, [points[str(n)] for n in ns], "o-", label=f"{mode} student")
        ax.axhline(results["base"], color="gray", ls="--", label="base student (no teacher)")
        ax.axhline(results["teacher"]["reasoning"], color="k", ls=":", label="teacher")
        ax.set_xscale("log")
        ax.set_xlabel("undefended answers harvested (N)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("Students distilled from the arithmetic teacher")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "prevention_curve.png", dpi=110)
        plt.close(fig)
    rows = results["rows"]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["honest_acc"] for r in rows], 0.27, label="honest users")
    ax.bar(
        [i for i in x], [(r["student"].get("sft") or 0) for r in rows], 0.27, label="sft student"
    )
    ax.bar(
        [i + 0.27 for i in x],
        [(r["student"].get("topk-kd") or 0) for r in rows],
        0.27,
        label="topk-kd student",
    )
    ax.axhline(results["base"], color="gray", ls="--", label="base student (no teacher)")
    ax.set_xticks(list(x), [r["defence"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("What each defence costs honest users and a distilled student")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prevention_tradeoff.png", dpi=110)
    plt.close(fig)

    ad = sorted(
        (r for r in rows if r["name"] in ("none", "antidistill") and not r["adaptive"]),
        key=lambda r: r["lam"],
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lams = [r["lam"] for r in ad]
    ax.plot(lams, [r["honest_acc"] for r in ad], "o-", label="honest users")
    ax.plot(lams, [(r["student"].get("sft") or 0) for r in ad], "s-", label="sft student")
    ax.set_xlabel("antidistill lambda")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Antidistillation sampling")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prevention_antidistill.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
