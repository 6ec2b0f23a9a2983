"""Watermark strength per scheme x temperature x length, T = 0 included, and what T = 0 costs.

T = 0 requested means *marked low-temperature sampling* (``WatermarkScheme.effective_sampling``):
the scheme samples at its ``zero_temperature`` (default 0.5, fixed before this benchmark ran)
from its marked distribution with keyed draws, so the answer is deterministic and marked.

One run, on the cached `small` teacher (built first when missing), real prompts
(``shared/data/prompts/honest.jsonl``), ``--answers`` answers of 200 tokens (eos ignored) per
(scheme, temperature), each request tagged with one of 8 accounts:

1. TPR at FPR 1e-3 (exact p-values: a text counts as marked at p < 1e-3) on the first 50, 100
   and 200 tokens of each answer, T = 0, 0.3, 0.7, 1; plus, at T = 0 with ``zero_temperature``
   = 0 (plain greedy: KGW's biased greedy, the others unmarked), the old behaviour.
2. False positives: the unmarked engine's answers at the same temperatures, tested with every
   scheme's key (the p-values are exact; this only checks nothing is off).
3. Quality of T = 0 answers: perplexity under the unmarked teacher of plain greedy answers,
   plain (unmarked) sampling at 0.5, and each scheme's marked T = 0 answers; and how often
   a marked T = 0 answer repeats exactly on a second request (it must: 100 %).

Run: ``.venv/bin/python benchmarks/watermark_temperature.py [--answers 48]``
Plot: docs/img/watermark_tpr_temperature.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from distillguard.config import get_settings
from distillguard.models.engine import GenerationEngine, GenerationParams
from distillguard.models.llama import load_model
from distillguard.models.teacher import default_teacher_dir
from distillguard.watermark import build_scheme

SECRET = b"benchmark-secret-0123456789abcdef"
SCHEMES = ("kgw", "gumbel", "synthid")
TEMPERATURES = (0.0, 0.3, 0.7, 1.0)
LENGTHS = (50, 100, 200)
ALPHA = 1e-3
ACCOUNTS = [f"acct_{i}" for i in range(8)]
console = Console()


def prompts_for(engine: GenerationEngine, data: Path, count: int, max_len: int) -> list[list[int]]:
    out = []
    with (data / "prompts" / "honest.jsonl").open() as f:
        for line in f:
            ids = engine.encode_chat([{"role": "user", "content": json.loads(line)["prompt"]}])
            if len(ids) <= max_len:
                out.append(ids)
            if len(out) == count:
                break
    return out


def generate(
    model: Any, tok: Any, sampler: Any, prompts: list[list[int]], temperature: float, new: int
) -> list[np.ndarray]:
    engine = GenerationEngine(model, tok, sampler=sampler, num_threads=1, max_batch_size=16)
    params = [
        GenerationParams(
            max_new_tokens=new,
            temperature=temperature,
            seed=None if temperature == 0 else 1000 + i,
            tag=ACCOUNTS[i % len(ACCOUNTS)],
            ignore_eos=True,
        )
        for i in range(len(prompts))
    ]
    return [np.asarray(c.token_ids, np.int64) for c in engine.generate_batch(prompts, params)]


def perplexity(model: Any, prompts: list[list[int]], answers: list[np.ndarray]) -> float:
    nll, n = 0.0, 0
    with torch.inference_mode():
        for p, a in zip(prompts, answers, strict=True):
            ids = torch.tensor([p + a.tolist()])
            lp = model(input_ids=ids).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
            nll -= float(lp.gather(1, torch.as_tensor(a)[:, None]).sum())
            n += len(a)
    return float(np.exp(nll / n))


def tpr(scheme: Any, answers: list[np.ndarray], length: int) -> float:
    b = scheme.detect_arrays([a[:length] for a in answers])
    return float(np.mean(b.log10_p_value < np.log10(ALPHA)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=48)
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the teacher)")
    ap.add_argument("--json", type=Path, default=Path("docs/img/watermark_temperature.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/img/watermark_tpr_temperature.png"))
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    console.print(f"load before: {os.getloadavg()}")
    settings = get_settings()
    model_dir = args.model or default_teacher_dir(settings)
    console.print(f"model: {model_dir}")
    model, tok = load_model(model_dir)
    vocab = model.get_input_embeddings().weight.shape[0]
    probe = GenerationEngine(model, tok, num_threads=1)
    new = max(LENGTHS)
    prompts = prompts_for(probe, settings.data_dir, args.answers, probe.context_length - new)
    runs: dict[str, list[np.ndarray]] = {}
    jobs = [(s, t, None) for s in SCHEMES for t in TEMPERATURES]
    jobs += [(s, 0.0, 0.0) for s in SCHEMES]  # the old T = 0: plain greedy
    jobs += [("plain", t, None) for t in TEMPERATURES] + [("plain", 0.5, None)]
    jobs += [(s, 0.0, "repeat") for s in SCHEMES]
    t0 = time.perf_counter()
    with Progress(console=console) as bar:
        task = bar.add_task("generating", total=len(jobs))
        for name, temp, variant in jobs:
            if name == "plain":
                sampler = None
            else:
                kw = {"zero_temperature": 0.0} if variant == 0.0 else {}
                sampler = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab, **kw)
            key = f"{name}|{temp}|{variant}"
            runs[key] = generate(model, tok, sampler, prompts, temp, new)
            bar.advance(task)
    console.print(
        f"generated {len(jobs)} x {len(prompts)} x {new} tokens in {time.perf_counter() - t0:.0f} s"
    )
    schemes = {s: build_scheme(s, secret=SECRET, key_id=1, vocab_size=vocab) for s in SCHEMES}
    result: dict[str, Any] = {
        "model": str(model_dir),
        "answers": len(prompts),
        "tpr": {},
        "fpr": {},
        "quality": {},
    }
    table = Table("scheme", "T", *[f"TPR@{n}" for n in LENGTHS])
    for s in SCHEMES:
        for t in TEMPERATURES:
            row = [tpr(schemes[s], runs[f"{s}|{t}|None"], n) for n in LENGTHS]
            result["tpr"][f"{s}|{t}"] = row
            table.add_row(s, f"{t:g}" + (" (marked)" if t == 0 else ""), *[f"{x:.2f}" for x in row])
        row = [tpr(schemes[s], runs[f"{s}|0.0|0.0"], n) for n in LENGTHS]
        result["tpr"][f"{s}|0-greedy"] = row
        table.add_row(s, "0 (greedy)", *[f"{x:.2f}" for x in row])
    console.print(table)
    fp = Table("plain answers at T", *SCHEMES)
    for t in TEMPERATURES:
        rates = [tpr(schemes[s], runs[f"plain|{t}|None"], 200) for s in SCHEMES]
        result["fpr"][str(t)] = rates
        fp.add_row(f"{t:g}", *[f"{x:.3f}" for x in rates])
    console.print(fp)
    q = Table("T = 0 answers", "perplexity (unmarked teacher)", "repeat identical")
    for label, key in [
        ("plain greedy", "plain|0.0|None"),
        ("plain sampling T=0.5", "plain|0.5|None"),
    ]:
        ppl = perplexity(model, prompts, runs[key])
        result["quality"][label] = ppl
        q.add_row(label, f"{ppl:.2f}", "-")
    for s in SCHEMES:
        a, b = runs[f"{s}|0.0|None"], runs[f"{s}|0.0|repeat"]
        same = float(np.mean([np.array_equal(x, y) for x, y in zip(a, b, strict=True)]))
        ppl = perplexity(model, prompts, a)
        result["quality"][f"{s} marked T=0"] = ppl
        result["quality"][f"{s} repeat"] = same
        q.add_row(f"{s} marked T=0", f"{ppl:.2f}", f"{same:.0%}")
    console.print(q)
    console.print(f"load after: {os.getloadavg()}")
    result["load"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    plot(result, args.plot)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCHEMES), figsize=(12, 3.6), sharey=True)
    for ax, s in zip(axes, SCHEMES, strict=True):
        for t in TEMPERATURES:
            ax.plot(LENGTHS, result["tpr"][f"{s}|{t}"], marker="o", label=f"T={t:g}")
        ax.plot(LENGTHS, result["tpr"][f"{s}|0-greedy"], "k--", label="T=0 plain greedy")
        ax.axhline(0.95, color="grey", lw=0.5)
        ax.set_title(s)
        ax.set_xlabel("tokens")
    axes[0].set_ylabel("TPR at FPR 1e-3")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
