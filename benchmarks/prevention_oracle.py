"""Oracle-teacher trade-off: the code solver's answers served under a text defence (issue 13).

    .venv/bin/python benchmarks/prevention_oracle.py BASE_DIR N STEPS DEFENCE MODE
    .venv/bin/python benchmarks/prevention_oracle.py --plot OUT.png RESULT.jsonl...

The trained teacher (``benchmarks/prevention.py``) is slow to build on a shared CPU; the text
defences (withhold drop, perturb_reasoning in both modes, the repair attacker) only rewrite
what the teacher wrote, so their effect on a student can be measured on the exact solutions
(an oracle teacher: honest users keep 100 % under all of them, the final line is never
touched). One student per call, so cells run as separate processes: the base student at
BASE_DIR (``tradeoff.base_student_dir``) distilled with MODE (sft | topk-kd: topk-kd needs
logprobs, which an oracle has not, so only sft is meaningful) for STEPS steps on N train
problems under DEFENCE (none | drop | summary | perturb | perturb+repair | perturb_result |
perturb_result+repair), graded greedily on 100 held-out problems. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from distillguard.prevent.defences import withhold
from distillguard.prevent.perturb import PerturbConfig, account_key, perturb_steps
from distillguard.prevent.task import generate, prompt_for, solution
from distillguard.prevent.tradeoff import (
    PERTURB_SECRET,
    StudentSpec,
    distill_and_grade,
    repair_steps,
)


def serve(text: str, defence: str, key: bytes) -> str:
    """The oracle's answer as an account under ``defence`` receives it (and repairs it)."""
    result = PerturbConfig(mode="result")
    served = {
        "none": lambda t: t,
        "drop": lambda t: withhold(t, "drop"),
        "summary": lambda t: withhold(t, "summary"),
        "perturb": lambda t: perturb_steps(t, key).text,
        "perturb+repair": lambda t: repair_steps(perturb_steps(t, key).text),
        "perturb_result": lambda t: perturb_steps(t, key, result).text,
        "perturb_result+repair": lambda t: repair_steps(perturb_steps(t, key, result).text),
    }
    if defence not in served:
        raise SystemExit(f"unknown defence {defence!r}; choose one of {sorted(served)}")
    return served[defence](text)


def plot(out: Path, logs: list[Path]) -> None:
    """The curve (none vs N) and the defended cells from the JSON lines of earlier calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [
        json.loads(line) for p in logs for line in p.read_text().splitlines() if line[:1] == "{"
    ]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for defence, style in (("none", "o-"), ("drop", "s--"), ("perturb", "v:"), ("summary", "^")):
        pts = sorted((c["n"], c["acc"]) for c in cells if c["defence"] == defence)
        if pts:
            label = {"none": "undefended", "perturb": "perturb_reasoning (carry)"}.get(
                defence, defence
            )
            ax.plot([n for n, _ in pts], [a for _, a in pts], style, label=label)
    pts = sorted((c["n"], c["acc"]) for c in cells if c["defence"] == "perturb_result")
    if pts:
        ax.plot([n for n, _ in pts], [a for _, a in pts], "x", ms=9, label="perturb result mode")
    ax.axhline(0.0, color="gray", ls="--", label="base student (no teacher)")
    ax.set_xscale("log")
    ax.set_xlabel("answers harvested (N)")
    ax.set_ylabel("student held-out accuracy")
    ax.set_title("sft students of an oracle teacher, served under each defence")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    if sys.argv[1] == "--plot":
        plot(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
        return
    base, n, steps, defence, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6]
    torch.set_num_threads(1)
    key = account_key(PERTURB_SECRET, "attacker")
    problems = generate(n, split="train", seed=1)
    rows = [
        {
            "id": str(i),
            "prompt": prompt_for(p),
            # summary: the teacher wrote its steps and a summary line; only those two are served
            "answer": serve(
                solution(p, "summary" if defence == "summary" else "reasoning"), defence, key
            ),
        }
        for i, p in enumerate(problems)
    ]
    identical = sum(r["answer"] == solution(p) for r, p in zip(rows, problems, strict=True))
    held = generate(100, split="held_out", seed=1)
    started = time.process_time()
    acc = distill_and_grade(rows, mode, Path(base), held, StudentSpec(steps=steps))
    print(
        json.dumps(
            {
                "defence": defence,
                "n": n,
                "steps": steps,
                "mode": mode,
                "acc": acc,
                "identical_answers": identical,
                "cpu_s": time.process_time() - started,
                "load": os.getloadavg(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
