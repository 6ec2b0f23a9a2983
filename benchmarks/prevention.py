"""Prevention trade-off: honest users' accuracy vs what a distilled student keeps (issue 13).

    nice -n 10 .venv/bin/python benchmarks/prevention.py [--harvest 500] [--held-out 100]
        [--steps 250] [--lambdas 0.3,3] [--teacher DIR] [--json out.json] [--plots docs/img]

1. The arithmetic teacher (``prevent build-teacher``, cached under DISTILLGUARD_HOME) is graded
   on held-out problems with its reasoning, answer only, and with a summary.
2. Per defence (none, cap_logprobs k=0, withhold drop / summary, perturb_reasoning,
   antidistill at each lambda) the teacher answers the attacker's ``--harvest`` train-split
   problems the way the gateway serves them under the action (prevent-serve's functions
   applied to the engine's output, no HTTP), and honest users' held-out problems the same
   way: "honest acc" is the accuracy of what they are served.
3. A fresh ``tiny`` student per (defence, mode) is distilled with distill.trainers (sft, and
   topk-kd where logprobs are served) for ``--steps`` steps and graded greedily on the
   held-out problems (disjoint by construction). Baseline: the same student untrained.
   gain lost = 1 - (acc_def - acc_base) / (acc_undef - acc_base), per mode.
4. Adaptive attackers: summary stripped to the final line; perturbed steps repaired from the
   chain; antidistill answered ``--vote`` times at temperature 1 and majority-voted.
Results go to ``--json`` as they arrive (a killed run keeps what it measured) and to two
plots: docs/img/prevention_tradeoff.png and docs/img/prevention_antidistill.png.
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
    distill_and_grade,
    draft_key,
    gain_lost,
    generate_drafts,
    harvest_rows,
    served_accuracy,
    untrained_accuracy,
)
from distillguard.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]


def conditions(lambdas: list[float], votes: int) -> list[Defence]:
    out = [
        Defence("none"),
        Defence("cap_logprobs", top_logprobs=0),
        Defence("drop"),
        Defence("summary"),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=None)
    ap.add_argument("--harvest", type=int, default=500, help="attacker's problems")
    ap.add_argument("--held-out", type=int, default=100, help="held-out problems graded")
    ap.add_argument("--steps", type=int, default=250, help="student optimizer steps")
    ap.add_argument("--lambdas", default="0.3,3", help="antidistill lambdas, comma-separated")
    ap.add_argument("--vote", type=int, default=3, help="adaptive attacker's samples (1: off)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/prevention_results.json"))
    ap.add_argument("--plots", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()

    teacher_dir = args.teacher or arith_teacher_dir(get_settings())
    engine = GenerationEngine.from_dir(teacher_dir, num_threads=1, max_batch_size=32)
    attack = generate(args.harvest, split="train", seed=args.seed + 1)
    held = generate(args.held_out, split="held_out", seed=args.seed + 1)
    defender_val = generate(64, split="train", seed=args.seed + 99)  # the proxy's loss data
    lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    spec = StudentSpec(steps=args.steps, seed=args.seed)
    results: dict = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "load_at_start": os.getloadavg(),
        "teacher": {},
        "rows": [],
    }

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        results["load_at_end"] = os.getloadavg()
        args.json.write_text(json.dumps(results, indent=2))

    for style in STYLES:
        results["teacher"][style] = grade(engine, held, style).accuracy
    results["base"] = untrained_accuracy(teacher_dir, held, spec)
    save()
    print(f"teacher on {len(held)} held-out problems: {results['teacher']}")
    print(f"baseline (untrained student): {results['base']:.3f}")

    texts = [format_chat_pair(prompt_for(p), solution(p)) for p in defender_val]
    hooks = {lam: antidistill_hook(engine, texts, lam) for lam in lambdas}
    plan = conditions(lambdas, args.vote)
    total = sum(len(modes_for(d)) + 2 for d in plan)
    with progress_bar() as bar:
        task = bar.add_task("prevention", total=total)
        undefended_rows: list = []
        drafts: dict = {}  # (split, draft key) -> raw completions, shared across defences
        for defence in plan:
            hook = hooks.get(defence.lam)
            t0 = time.perf_counter()
            honest_defence = Defence(defence.name, defence.top_logprobs, defence.lam)
            served = {}
            for split, problems, d, account in (
                ("held", held, honest_defence, "honest"),
                ("attack", attack, defence, "attacker"),
            ):
                key = (split, draft_key(d))
                if key not in drafts:
                    drafts[key] = generate_drafts(engine, problems, d, hook=hook, seed=args.seed)
                served[split] = apply_defence(engine, drafts[key], d, account=account)
                bar.update(task, advance=1)
            honest, harvested = served["held"], served["attack"]
            serve_s = time.perf_counter() - t0
            rows = harvest_rows(attack, harvested)
            row = {
                "defence": defence.title,
                "name": defence.name,
                "lam": defence.lam,
                "adaptive": defence.adaptive,
                "honest_acc": served_accuracy(held, honest),
                "harvest_final_acc": served_accuracy(attack, harvested),
                "example": harvested.texts[0],
                "serve_seconds": serve_s,
                "student": {},
            }
            undefended = next((r for r in results["rows"] if r["name"] == "none"), None)
            # sft reads the text only; topk-kd also the logprobs (a cap changes only those).
            same_as_none = {
                "sft": [r["answer"] for r in rows] == [r["answer"] for r in undefended_rows],
                "topk-kd": rows == undefended_rows,
            }
            for mode in modes_for(defence):
                if undefended is not None and same_as_none[mode] and mode in undefended["student"]:
                    # The attacker's data is byte-identical to the undefended harvest (the
                    # repair undid the defence): the same student, not trained twice.
                    row["student"][mode] = undefended["student"][mode]
                    row["identical_to_undefended"] = True
                else:
                    row["student"][mode] = distill_and_grade(rows, mode, teacher_dir, held, spec)
                bar.update(task, advance=1)
            if defence.name == "none":
                undefended_rows = rows
            results["rows"].append(row)
            save()
            bar.console.print(
                f"{defence.title:34s} honest {row['honest_acc']:.3f}  "
                + "  ".join(f"{m} {a:.3f}" for m, a in row["student"].items())
            )

    undefended = next(r for r in results["rows"] if r["name"] == "none")
    for r in results["rows"]:
        r["gain_lost"] = {}
        for mode, acc in r["student"].items():
            ref = undefended["student"].get(mode, undefended["student"]["sft"])
            try:
                r["gain_lost"][mode] = gain_lost(acc, ref, results["base"])
            except Exception as exc:  # undefined when the undefended student gained nothing
                r["gain_lost"][mode] = None
                results.setdefault("notes", []).append(str(exc))
    save()
    print_table(results)
    plot(results, args.plots)


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = results["teacher"]
    table = Table(
        title=(
            f"teacher: reasoning {t['reasoning']:.3f} / answer only {t['answer_only']:.3f} / "
            f"summary {t['summary']:.3f}; untrained student {results['base']:.3f}"
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
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["honest_acc"] for r in rows], 0.27, label="honest users")
    ax.bar([i for i in x], [r["student"].get("sft", 0) for r in rows], 0.27, label="sft student")
    ax.bar(
        [i + 0.27 for i in x],
        [r["student"].get("topk-kd", 0) for r in rows],
        0.27,
        label="topk-kd student",
    )
    ax.axhline(results["base"], color="gray", ls="--", label="untrained student")
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
    ax.plot(lams, [r["student"].get("sft", 0) for r in ad], "s-", label="sft student")
    ax.set_xlabel("antidistill lambda")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Antidistillation sampling")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prevention_antidistill.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
