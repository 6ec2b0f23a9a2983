"""Radioactivity dose-response: how much watermarked data must a student see to be caught?

    .venv/bin/python benchmarks/radioactivity.py [--answers 600] [--steps 150]
        [--shares 0,1,5,10,100] [--modes sft,topk-kd,gkd,sft-othertok] [--keys 200]
        [--api-prompts 100] [--teacher DIR] [--out docs/img]

1. A teacher (default: a ``tiny`` chat model built in seconds; ``--teacher`` for another)
   answers ``--answers`` real prompts twice: once through our KGW watermark (gamma 0.25,
   delta 2, previous-token context, the harvest spread over 5 accounts: account marking on),
   once without it. Top-20 logprobs are kept for topk-kd.
2. For each watermarked share (% of the rows taken from the watermarked run, the rest from
   the clean run, each prompt once) and each mode, a fresh ``tiny`` student is trained with
   ``distill.train_student`` for ``--steps`` steps: sft, topk-kd, gkd (white-box teacher
   logits + the harvested rows off-policy) and sft with its own newly trained tokenizer.
3. Each student is tested
   - open weights (same tokenizer only): it reads the harvested prompts+answers; its
     top-1 predictions (the prior attempt's test: dedup + exact binomial) and its full
     predicted distribution (Stouffer z, analytic null variance), both restricted to the
     contexts of the answers we served;
   - API only: it answers ``--api-prompts`` fresh prompts, re-tokenised with our tokenizer,
     exact binomial on corpus-deduplicated pairs;
   - per account (full distribution): Holm-corrected p of the 5 harvesting accounts;
   - calibration: every test re-run under ``--keys`` random keys: empirical FPR at 1e-3
     (pooled over all students) and a KS test of the pooled p-values.
4. Residual: the 100 % and 10 % sft students are further fine-tuned on clean text (the
   known removal attack) for as many steps again and re-tested.
5. Cost: queries (and tokens) the API-only test needs to reach p < 1e-6 on the 100 % sft
   student.
Writes docs/img/radioactivity_dose_response.png and an evidence JSON for ``prove report``.
Text-only (sft) students in depth (ideal-learner ceiling, student size, precision-weighted
test, removal attacks): ``benchmarks/radioactivity_text.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ACCOUNTS = tuple(f"acct-{i}" for i in range(5))
SECRET = b"benchmark-radioactivity-secret-0001"


@dataclass
class AccountSampler:
    """Our scheme with every row tagged as one account (as the gateway tags requests)."""

    scheme: object
    account: str

    def sample(self, logits, input_ids, *, temperature, top_p, generators, tags):
        return self.scheme.sample(
            logits,
            input_ids,
            temperature=temperature,
            top_p=top_p,
            generators=generators,
            tags=[self.account] * len(tags),
        )


def load_prompts(data_dir: Path, count: int, tokenizer, max_prompt_tokens: int) -> list[str]:
    from distillguard.models.tokenizer import encode_chat

    prompts = []
    for name in ("prompts/honest.jsonl", "prompts/campaign.jsonl"):
        with (data_dir / name).open(encoding="utf-8") as handle:
            texts = [json.loads(line)["prompt"] for line in handle if line.strip()]
        for text in texts:
            if len(text) > 4 * max_prompt_tokens:  # cheap pre-filter before tokenizing
                continue
            ids = encode_chat(tokenizer, [{"role": "user", "content": text}])
            if len(ids) <= max_prompt_tokens:
                prompts.append(text)
    rng = np.random.default_rng(0)
    rng.shuffle(prompts)
    if len(prompts) < count:
        sys.exit(f"only {len(prompts)} short prompts under {data_dir}")
    return prompts[:count]


def answer(
    teacher_dir: Path, prompts: list[str], *, scheme, max_new_tokens: int, seed: int, cache: Path
) -> list:
    """Teacher answers (with top-20 logprobs), watermarked per account when ``scheme``;
    appended to ``cache`` (JSONL) so that a rerun reuses them."""
    from distillguard.distill.harvest import (
        LocalHarvestParams,
        harvest_local,
        prompt_id,
        read_dataset,
    )
    from distillguard.models.engine import GenerationEngine
    from distillguard.models.llama import load_model

    model, tok = load_model(teacher_dir)
    params = LocalHarvestParams(
        max_new_tokens=max_new_tokens, top_logprobs=20, seed=seed, batch_size=32
    )
    if scheme is None:
        harvest_local(GenerationEngine(model, tok, name="teacher"), prompts, params, out=cache)
    else:
        chunks = np.array_split(np.arange(len(prompts)), len(ACCOUNTS))
        for account, idx in zip(ACCOUNTS, chunks, strict=True):
            engine = GenerationEngine(
                model, tok, sampler=AccountSampler(scheme, account), name="teacher"
            )
            harvest_local(engine, [prompts[i] for i in idx], params, out=cache)
    by_id = {r.id: r for r in read_dataset(cache)}
    return [by_id[prompt_id(p)] for p in prompts]


def mix(marked: list, clean: list, share: float) -> list:
    """Each prompt once: the first ``share`` of a fixed shuffle from the watermarked run."""
    order = np.random.default_rng(1).permutation(len(marked))
    cut = round(share / 100 * len(marked))
    return [marked[i] if rank < cut else clean[i] for rank, i in enumerate(order)]


def served_rows(marked: list, share: float) -> list:
    """The watermarked answers that went into the mix (all of them at 0 %: the null control
    then scores every context we ever served)."""
    order = np.random.default_rng(1).permutation(len(marked))
    cut = round(share / 100 * len(marked))
    return [marked[i] for i in order[:cut]] if cut else list(marked)


def train(rows, mode: str, out: Path, teacher_dir: Path, steps: int):
    from distillguard.distill.trainers import DistillConfig, train_student

    config = DistillConfig(max_steps=steps, batch_size=8, checkpoint_every=0, gkd_max_new_tokens=32)
    real_mode = "sft" if mode == "sft-othertok" else mode
    return train_student(
        rows,
        mode=real_mode,
        out_dir=out,
        teacher_dir=teacher_dir if mode == "gkd" else None,
        student_tokenizer_dir=None if mode == "sft-othertok" else teacher_dir,
        config=config,
        progress=False,
    )


def test_student(
    student: Path,
    *,
    tok,
    scheme,
    marked_rows,
    served,
    api_prompts,
    keys: int,
    max_new_tokens: int,
) -> dict:
    """The student reads all our watermarked answers; only the contexts of ``served`` (the
    watermarked rows this harvest got from us) are scored."""
    from distillguard.forensics import radioactivity as rad
    from distillguard.forensics import suspects
    from distillguard.models.llama import load_model

    config = rad.RadioactivityConfig(random_keys=keys, min_effect_size=0.5)
    served_answers = [r.answer for r in served]
    out: dict = {}
    _, student_tok = load_model(student)
    if suspects.same_tokenizer(tok, student_tok):
        report = suspects.prove_open_weights(
            student,
            [(r.prompt, r.answer) for r in marked_rows],
            tokenizer=tok,
            scheme=scheme,
            served_answers=served_answers,
            accounts=ACCOUNTS,
            config=config,
        )
        for t in report.tests:
            out[t.test] = t
        out["accounts"] = report.accounts
    answers = suspects.generate_local(student, api_prompts, max_new_tokens=max_new_tokens)
    text = suspects.prove_texts(
        answers, suspect=str(student), mode="api", tokenizer=tok, scheme=scheme, config=config
    )
    out["text-binomial"] = text.tests[0]
    out["api_tokens"] = text.tokens
    return out


def clean_finetune(student: Path, out: Path, clean_rows, steps: int) -> Path:
    """The removal attack: continue training the student on clean answers."""
    from distillguard.models.llama import TrainConfig, load_model, train_causal_lm

    model, tok = load_model(student)
    model.train()
    config = TrainConfig(size="tiny", max_steps=steps, batch_size=8, lr=2e-3, seq_len=128)
    train_causal_lm(
        model,
        tok,
        chat_pairs=[(r.prompt, r.answer) for r in clean_rows],
        config=config,
        progress=False,
    )
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def calibrate(
    student: Path, *, tok, scheme, marked_rows, api_prompts, keys: int, max_new_tokens: int
) -> dict:
    """Null calibration on a student never trained on marked text: ``keys`` random keys,
    predictions and answers computed once; FPR at 1e-3 / 1e-2 / 0.05 and KS per test."""
    from scipy import stats

    from distillguard.forensics import radioactivity as rad
    from distillguard.forensics import suspects
    from distillguard.models.llama import load_model

    config = rad.RadioactivityConfig(min_effect_size=0.5)
    model, _ = load_model(student)
    served = rad.served_context_keys(
        [tok.encode(r.answer, add_special_tokens=False) for r in marked_rows], 1, len(tok)
    )
    preds = rad.collect_predictions(
        model,
        suspects.encode_rows(tok, [(r.prompt, r.answer) for r in marked_rows]),
        width=1,
        vocab=len(tok),
        config=config,
        served=served,
    )
    answers = suspects.generate_local(student, api_prompts, max_new_tokens=max_new_tokens)
    ids = [tok.encode(a, add_special_tokens=False) for a in answers]
    ctx, tk, _ = rad.text_pairs(ids, 1, len(tok))
    logp: dict[str, list[float]] = {
        "top1-binomial": [],
        "full-distribution": [],
        "text-binomial": [],
    }
    for other in rad.random_schemes(scheme, keys, seed=2024):
        top1 = rad.binomial_test(other, preds.top1_contexts, preds.top1_tokens, "t")
        logp["top1-binomial"].append(top1.log10_p_value)
        z = rad.full_distribution_z(other, preds, config.weighting)
        logp["full-distribution"].append(float(stats.norm.logsf(z) / np.log(10)))
        logp["text-binomial"].append(rad.binomial_test(other, ctx, tk, "t").log10_p_value)
    out = {}
    for name, values in logp.items():
        p = 10.0 ** np.asarray(values)
        out[name] = {
            "keys": keys,
            "fpr_1e-3": float((p < 1e-3).mean()),
            "fpr_0.01": float((p < 0.01).mean()),
            "fpr_0.05": float((p < 0.05).mean()),
            "ks_p": float(stats.kstest(p, "uniform").pvalue),
        }
    out["units"] = {
        "contexts": len(preds.contexts),
        "top1_pairs": len(preds.top1_tokens),
        "text_pairs": len(tk),
    }
    return out


def api_cost(
    student: Path, prompts: list[str], *, tok, scheme, max_new_tokens: int, target: float = -6.0
) -> dict:
    """Queries and tokens the API-only test needs to reach log10 p < target."""
    from distillguard.errors import InsufficientData
    from distillguard.forensics import radioactivity as rad
    from distillguard.forensics import suspects

    answers = suspects.generate_local(student, prompts, max_new_tokens=max_new_tokens)
    config = rad.RadioactivityConfig(min_effect_size=1.0)
    for n in range(10, len(answers) + 1, 10):
        try:
            report = suspects.prove_texts(
                answers[:n], suspect="cost", mode="api", tokenizer=tok, scheme=scheme, config=config
            )
        except InsufficientData:
            continue
        if report.tests[0].log10_p_value < target:
            return {"queries": n, "tokens": report.tokens, "log10_p": report.tests[0].log10_p_value}
    return {"queries": None, "tokens": None, "tried": len(answers)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=600)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--shares", default="0,1,5,10,100")
    parser.add_argument("--modes", default="sft,topk-kd,gkd,sft-othertok")
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--api-prompts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--teacher", type=Path, default=None)
    parser.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--evidence", type=Path, default=None)
    parser.add_argument("--skip-residual", action="store_true")
    parser.add_argument(
        "--calibration-keys",
        type=int,
        default=0,
        help="only run the null calibration: a 0 %% sft student, N random keys",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dg-radio",
        help="teacher and its answers, reused by reruns with the same sizes",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from distillguard.config import get_settings
    from distillguard.forensics.report import plot_dose_response
    from distillguard.models.llama import load_model
    from distillguard.watermark import build_scheme

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="dg-radio-"))
    data_dir = (
        get_settings().data_dir or Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    cache = args.cache / f"a{args.answers}-t{args.max_new_tokens}"
    cache.mkdir(parents=True, exist_ok=True)
    if args.teacher is None:
        from distillguard.models.teacher import build_tiny_model

        args.teacher = cache / "teacher"
        if not (args.teacher / "config.json").is_file():
            build_tiny_model(args.teacher, data_dir=data_dir, max_steps=300)
    _, tok = load_model(args.teacher)
    scheme = build_scheme("kgw", secret=SECRET, key_id=1, vocab_size=len(tok))
    prompts = load_prompts(data_dir, args.answers + 400, tok, 256 - args.max_new_tokens - 8)
    train_prompts, fresh = prompts[: args.answers], prompts[args.answers :]
    new_tokens = args.max_new_tokens
    marked = answer(
        args.teacher,
        train_prompts,
        scheme=scheme,
        max_new_tokens=new_tokens,
        seed=0,
        cache=cache / "marked.jsonl",
    )
    clean = answer(
        args.teacher,
        train_prompts,
        scheme=None,
        max_new_tokens=new_tokens,
        seed=1,
        cache=cache / "clean.jsonl",
    )
    print(
        f"teacher answers: {len(marked)} + {len(clean)} ({time.time() - t0:.0f} s); "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    if args.calibration_keys:
        out = work / "sft-clean"
        train(clean, "sft", out, args.teacher, args.steps)
        result = calibrate(
            out,
            tok=tok,
            scheme=scheme,
            marked_rows=marked,
            api_prompts=fresh[: args.api_prompts],
            keys=args.calibration_keys,
            max_new_tokens=args.max_new_tokens,
        )
        print(json.dumps(result, indent=1))
        print(f"total {time.time() - t0:.0f} s; load {os.getloadavg()}")
        return 0

    shares = [float(s) for s in args.shares.split(",")]
    modes = args.modes.split(",")
    results: dict = {}
    null_p: dict[str, list[float]] = {}
    for mode in modes:
        for share in shares:
            t1 = time.time()
            out = work / f"{mode}-{share:g}"
            rows = mix(marked, clean, share)
            res = train(rows, mode, out, args.teacher, args.steps)
            got = test_student(
                out,
                tok=tok,
                scheme=scheme,
                served=served_rows(marked, share),
                marked_rows=marked,
                api_prompts=fresh[: args.api_prompts],
                keys=args.keys,
                max_new_tokens=args.max_new_tokens,
            )
            results[(mode, share)] = got
            for name in ("top1-binomial", "full-distribution", "text-binomial"):
                if name in got:
                    null_p.setdefault(name, []).extend(10.0**x for x in got[name].null_log10_p)
            line = "  ".join(
                f"{n}={got[n].log10_p_value:7.1f}"
                for n in ("top1-binomial", "full-distribution", "text-binomial")
                if n in got
            )
            acc = got.get("accounts") or ()
            best = f" best account {acc[0].account} Holm p={acc[0].p_holm:.1e}" if acc else ""
            print(
                f"{mode:13s} {share:5g}%  loss {res.held_out_loss:.2f}  {line}{best}  "
                f"({time.time() - t1:.0f} s)",
                flush=True,
            )

    from scipy import stats

    # Per test: the binomial tests have discrete (conservative) p-values, so only the
    # full-distribution z-test is expected to pass a KS test of uniformity.
    calibration = {}
    for name, values in null_p.items():
        null = np.asarray(values)
        calibration[name] = {
            "null_pvalues": int(null.size),
            "fpr_1e-3": float((null < 1e-3).mean()),
            "fpr_0.01": float((null < 0.01).mean()),
            "fpr_0.05": float((null < 0.05).mean()),
            "ks_p": float(stats.kstest(null, "uniform").pvalue),
        }
    print(f"null calibration over random keys: {calibration}")

    residual = {}
    if not args.skip_residual and "sft" in modes:
        for share in [s for s in (100.0, 10.0) if s in shares]:
            cleaned = clean_finetune(
                work / f"sft-{share:g}", work / f"sft-{share:g}-clean", clean, args.steps
            )
            got = test_student(
                cleaned,
                tok=tok,
                scheme=scheme,
                served=served_rows(marked, share),
                marked_rows=marked,
                api_prompts=fresh[: args.api_prompts],
                keys=0,
                max_new_tokens=args.max_new_tokens,
            )
            residual[share] = {
                n: got[n].log10_p_value
                for n in ("top1-binomial", "full-distribution", "text-binomial")
            }
            print(f"after clean fine-tuning, sft {share:g}%: {residual[share]}", flush=True)

    cost = {}
    if "sft" in modes and 100.0 in shares:
        cost = api_cost(
            work / "sft-100", fresh, tok=tok, scheme=scheme, max_new_tokens=args.max_new_tokens
        )
        print(f"API-only cost to p < 1e-6 (sft 100%): {cost}")

    series = []
    for mode in modes:
        for name in ("top1-binomial", "full-distribution", "text-binomial"):
            pts = [
                (s, results[(mode, s)][name].log10_p_value)
                for s in shares
                if name in results[(mode, s)]
            ]
            if pts:
                series.append(
                    {
                        "label": f"{mode} / {name}",
                        "shares": [p[0] for p in pts],
                        "log10_p": [p[1] for p in pts],
                    }
                )
    evidence = {
        "test": "dose-response",
        "title": f"Radioactivity dose-response ({args.answers} answers, {args.steps} steps)",
        "series": series,
        "calibration": calibration,
        "residual": residual,
        "cost": cost,
        "command": "python " + " ".join(sys.argv),
        "settings": vars(args)
        | {"teacher": str(args.teacher), "img": str(args.img), "evidence": str(args.evidence)},
    }
    args.img.mkdir(parents=True, exist_ok=True)
    html_img = plot_dose_response(evidence)
    import base64

    png = base64.b64decode(html_img.split("base64,")[1].split('"')[0])
    (args.img / "radioactivity_dose_response.png").write_bytes(png)
    if args.evidence:
        args.evidence.write_text(json.dumps(evidence, indent=1, default=str))
    print("\n| mode | test | " + " | ".join(f"{s:g} %" for s in shares) + " |")
    print("|---|---|" + "---|" * len(shares))
    for s in series:
        by = dict(zip(s["shares"], s["log10_p"], strict=True))
        mode, name = s["label"].split(" / ")
        print(
            f"| {mode} | {name} | "
            + " | ".join(f"{by[x]:.1f}" if x in by else "–" for x in shares)
            + " |"
        )
    print(f"total {time.time() - t0:.0f} s; load {os.getloadavg()}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
