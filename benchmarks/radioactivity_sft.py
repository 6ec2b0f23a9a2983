"""Text-only (sft) students under a mark they can learn from text: width-2 vs width-1 KGW.

    .venv/bin/python benchmarks/radioactivity_sft.py [--answers 2000] [--widths 2,1]
        [--harvests 200,500,2000] [--sizes tiny,small] [--shares 5,0] [--steps 450]
        [--keys 10000] [--full-keys 1000] [--removal-steps 150] [--work DIR]
        [--ideal-only] [--out docs/img/radioactivity_sft.json]

The companion of ``radioactivity_text.py`` (issue #17, parts 2-3). There the width-1 mark
(the green list keyed by the previous token) was diluted by the clean 95 % of a harvest:
every context also occurs in clean text, so even an ideal learner stays near log10 p -4.7 at
5 %. Here the teacher marks with the same KGW scheme keyed by the two previous tokens
(``context_width=2``, already a scheme option: same key, seeding and dedup scoring): most
marked contexts occur nowhere in the clean text, so a student that memorises its training
text carries the mark undiluted.

1. The same ``tiny`` teacher answers ``--answers`` real prompts three times, fast
   (``model.generate`` in batches of 64; marked through the transformers plugin
   ``WatermarkLogitsProcessor``, one account per fifth of the prompts): unmarked, marked
   with width 2, marked with width 1.
2. For each width x harvest size x student size x share, an sft student (TRL,
   ``distill.train_student``, one thread) is trained on the mix (each prompt once; the
   share from the marked run) and tested on the contexts of the marked answers it was
   served (the 0 % student: those of the matching 5 % cell, i.e. scored exactly as that
   suspect would be):
   - open weights: it reads our marked prompts+answers; top-1 binomial (exact) and the
     full-distribution Stouffer test (the peers of ``radioactivity.py``);
   - API only: it answers the *prompts we served* (we know them from our log), greedy
     (T=0, which returns a memorised answer whole) and sampled at T=1, its text
     re-tokenised; exact binomial on deduplicated pairs, on all pairs and on the pairs
     whose context occurs in the answers we served;
   - the ideal learner of the same mix (smoothed empirical n-gram table at the mark's
     width): the ceiling of a learner of that context width (a student that memorises
     whole answers can exceed it); ``--ideal-only`` runs its grid alone;
   - with ``--removal-steps``, the marked student fine-tuned on unmarked answers to other
     prompts, re-tested.
3. Calibration: the 0 % students re-scored under ``--keys`` random keys (predictions and
   answers computed once, only the keyed scoring repeated: ``rad.rekeyed_*``); FPR at 1e-3
   with its Clopper-Pearson 95 % interval, FPR at 0.01 / 0.05, KS against U(0, 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import radioactivity as base
import radioactivity_text as text

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- teacher answers
def teacher_answers(
    model, tok, prompts: list[str], scheme, *, seed: int, max_new: int, greedy: bool = False
) -> list:
    """Answers of a model, batched through ``model.generate`` (sampled at T=1, or greedy);
    marked by the transformers plugin (one account per fifth of the prompts) when
    ``scheme`` is given."""
    import torch

    from distillguard.distill.data import prompt_ids
    from distillguard.distill.records import HarvestRecord, prompt_id
    from distillguard.watermark.engines.core import EngineMarker
    from distillguard.watermark.engines.transformers import WatermarkLogitsProcessor

    out, batch = [], 64
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for s in range(0, len(prompts), batch):
        chunk = prompts[s : s + batch]
        ids = [prompt_ids(tok, p) for p in chunk]
        width = max(map(len, ids))
        x = torch.full((len(ids), width), pad)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):  # left padding: generation continues every row
            x[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        n = len(prompts)
        if scheme is not None:
            accounts = [base.ACCOUNTS[(s + i) * len(base.ACCOUNTS) // n] for i in range(len(ids))]
            marker = EngineMarker(scheme, secret=base.SECRET)
            seeds = [seed * 1_000_003 + s + i for i in range(len(ids))]
            proc = WatermarkLogitsProcessor(marker, accounts=accounts, seeds=seeds)
            kw: dict = {"logits_processor": [proc], "do_sample": False}
        elif greedy:
            kw = {"do_sample": False}
        else:
            torch.manual_seed(seed * 7919 + s)
            kw = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
        with torch.no_grad():
            y = model.generate(
                input_ids=x,
                attention_mask=mask,
                max_new_tokens=max_new,
                pad_token_id=pad,
                eos_token_id=tok.eos_token_id,
                **kw,
            )
        for i, p in enumerate(chunk):
            got = y[i, width:].tolist()
            if tok.eos_token_id in got:
                got = got[: got.index(tok.eos_token_id)]
            usage = {"prompt_tokens": len(ids[i]), "completion_tokens": len(got)}
            answer = tok.decode(got, skip_special_tokens=True)
            ids_only = [{"id": t} for t in got]
            out.append(
                HarvestRecord(prompt_id(p), p, answer, "length", "t", False, usage, ids_only)
            )
    return out


def cached_answers(path: Path, make) -> list:
    from distillguard.distill.records import HarvestRecord

    if path.is_file():
        return [HarvestRecord(**json.loads(line)) for line in path.read_text().splitlines()]
    rows = make()
    path.write_text("".join(r.to_json() + "\n" for r in rows))
    return rows


def student_answers(
    student: Path, prompts: list[str], *, max_new: int, seed: int, greedy: bool
) -> list[str]:
    """The suspect's API answers, as text: sampled at T=1, or at T=0 (greedy, which an API
    caller may ask for: a memorised answer comes back whole)."""
    from distillguard.models.llama import load_model

    model, tok = load_model(student)
    model.eval()
    rows = teacher_answers(model, tok, prompts, None, seed=seed, max_new=max_new, greedy=greedy)
    return [r.answer for r in rows]


# --------------------------------------------------------------------------- tests
def predictions(student: Path, tok, rows: list, width: int, served: np.ndarray):
    """The student reads our marked prompts+answers exactly as it trained on them; the
    contexts of ``served`` are scored (first occurrence per sequence)."""
    from distillguard.forensics import radioactivity as rad
    from distillguard.forensics import suspects
    from distillguard.models.llama import load_model

    model, _ = load_model(student)
    model.eval()
    seqs = suspects.encode_rows(tok, [(r.prompt, r.answer) for r in rows])
    config = rad.RadioactivityConfig(min_effect_size=0.5, max_contexts=60_000)
    return rad.collect_predictions(
        model, seqs, width=width, vocab=len(tok), config=config, served=served
    )


def tests(scheme, preds, api: dict[str, list[list[int]]], served: np.ndarray) -> dict:
    """log10 p of every test, and the units it scored."""
    from scipy import stats

    from distillguard.forensics import radioactivity as rad

    h, vocab = scheme.context.width, scheme.vocab_size
    top = rad.binomial_test(scheme, preds.top1_contexts, preds.top1_tokens, "t")
    z = rad.full_distribution_z(scheme, preds, "stouffer")
    out = {
        "top1-binomial": top.log10_p_value,
        "full-stouffer": float(stats.norm.logsf(z) / np.log(10)),
        "contexts": len(preds.contexts),
        "top1_pairs": len(preds.top1_tokens),
    }
    for mode, ids in api.items():
        for where, keep in (("served", served), ("all", None)):
            c, t, _ = rad.text_pairs(ids, h, vocab, keep)
            name = f"api-{mode}-{where}"
            out[name] = rad.binomial_test(scheme, c, t, "t").log10_p_value if len(t) else 0.0
            out[f"{name}_pairs"] = len(t)
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def summary(log10_p: np.ndarray) -> dict:
    from scipy import stats

    p = 10.0 ** np.asarray(log10_p)
    hits = int((p < 1e-3).sum())
    return {
        "keys": int(p.size),
        "fpr_1e-3": hits / p.size,
        "fpr_1e-3_ci95": clopper_pearson(hits, int(p.size)),
        "fpr_0.01": float((p < 0.01).mean()),
        "fpr_0.05": float((p < 0.05).mean()),
        "ks_p": float(stats.kstest(p, "uniform").pvalue),
    }


def calibrate(scheme, preds, api: dict, served, keys: int, full_keys: int) -> dict:
    """Every test of one null model re-scored under random keys (same predictions)."""
    from scipy import stats

    from distillguard.forensics import radioactivity as rad

    h, vocab = scheme.context.width, scheme.vocab_size
    k = rad.random_keys(scheme, keys, seed=2024)
    out: dict = {}
    t0 = time.time()
    out["top1-binomial"] = summary(
        rad.rekeyed_binomial(scheme, k, preds.top1_contexts, preds.top1_tokens)
    )
    for mode, ids in api.items():
        for where, keep in (("served", served), ("all", None)):
            c, t, _ = rad.text_pairs(ids, h, vocab, keep)
            if len(t):
                out[f"api-{mode}-{where}"] = summary(rad.rekeyed_binomial(scheme, k, c, t))
    out["binomial_seconds"] = time.time() - t0
    t0 = time.time()
    z = rad.rekeyed_full_distribution(scheme, k[:full_keys], preds, "stouffer")
    out["full-stouffer"] = summary(stats.norm.logsf(z) / np.log(10))
    out["full_seconds"] = time.time() - t0
    return out


# --------------------------------------------------------------------------- the grid
def ideal_answers(learner, tok, prompts: list[str], length: int, seed: int, greedy: bool):
    """The ideal learner answering our prompts (its API), greedy or sampled, as token ids."""
    from distillguard.distill.data import prompt_ids

    rng = np.random.default_rng(seed)
    out = []
    for prompt in prompts:
        seq = prompt_ids(tok, prompt)
        start = len(seq)
        for _ in range(length):
            q = learner.table(np.asarray([seq[-learner.width :]], np.int64))[0]  # (V,)
            nxt = int(q.argmax()) if greedy else int(rng.choice(learner.vocab, p=q))
            if nxt == tok.eos_token_id:
                break
            seq.append(nxt)
        out.append(seq[start:])
    return out


def ideal(
    scheme, tok, rows: list, served: np.ndarray, width: int, prompts=(), keys: int = 0, full=0
) -> dict:
    """The ideal learner of the student's training mix, tested like a student; its API
    answers to ``prompts`` (the prompts we served) greedy and sampled; with ``keys``, every
    test re-scored under that many random keys (``full`` of them for the full distribution)."""
    from distillguard.forensics import suspects

    vocab = len(tok)
    learner = text.IdealLearner.fit(
        suspects.encode_rows(tok, [(r.prompt, r.answer) for r in rows]), vocab, width
    )
    preds = learner.predictions(text.key_rows(served, width, vocab))
    api = {
        mode: ideal_answers(learner, tok, list(prompts), 48, 5, mode == "greedy")
        for mode in ("greedy", "sampled")
        if prompts
    }
    got = tests(scheme, preds, api, served)
    if keys:
        got["calibration"] = calibrate(scheme, preds, api, served, keys, full)
    return got


def ideal_grid(args, data) -> dict:
    """The ideal learner over width x harvest x share (no student): the ceiling."""
    from distillguard.forensics import radioactivity as rad
    from distillguard.models.tokenizer import encode_text

    tok, out = data["tok"], {}
    for width in [int(w) for w in args.widths.split(",")]:
        for harvest in [int(h) for h in args.harvests.split(",")]:
            for share in [float(s) for s in args.shares.split(",")]:
                m, c = data[f"m{width}"][:harvest], data["c"][:harvest]
                served_rows = base.served_rows(m, share if share > 0 else args.control_share)
                ids = [encode_text(tok, r.answer) for r in served_rows]
                served = rad.served_context_keys(ids, width, len(tok))
                prompts = [r.prompt for r in served_rows][: args.api_prompts]
                got = ideal(
                    data[f"scheme{width}"],
                    tok,
                    base.mix(m, c, share),
                    served,
                    width,
                    prompts,
                    keys=args.keys if share == 0 else 0,
                    full=args.full_keys,
                )
                out[f"w{width}/h{harvest}/{share:g}"] = got
                names = ("top1-binomial", "full-stouffer", "api-greedy-served", "api-sampled-all")
                print(
                    f"ideal w{width}/h{harvest}/{share:g}: "
                    + "  ".join(f"{n}={fmt(got.get(n))}" for n in names),
                    flush=True,
                )
                for name, cal in got.get("calibration", {}).items():
                    print(f"    null {name}: {cal}", flush=True)
    return out


def run_cell(args, *, width, harvest, size, share, data, work: Path) -> dict:
    from distillguard.forensics import radioactivity as rad
    from distillguard.models.tokenizer import encode_text

    tok, scheme, marked, clean = data["tok"], data[f"scheme{width}"], data[f"m{width}"], data["c"]
    m, c = marked[:harvest], clean[:harvest]
    rows = base.mix(m, c, share)
    # the suspect is scored on the answers we served it; the 0 % control on those of the
    # matching marked cell (scored exactly as that suspect would be)
    served_rows = base.served_rows(m, share if share > 0 else args.control_share)
    answer_ids = [encode_text(tok, r.answer) for r in served_rows]
    served = rad.served_context_keys(answer_ids, width, len(tok))
    t0 = time.time()
    out_dir = work / f"w{width}-h{harvest}-{size}-{share:g}"
    info = out_dir / "distillguard.json"
    if info.is_file():  # trained by an earlier run with --work: reuse the student
        trained = json.loads(info.read_text())
    else:
        result = text.train_sft(rows, out_dir, data["teacher"], size, args.steps)
        trained = {"held_out_loss": result.held_out_loss, "parameters": result.parameters}
    t_train = time.time() - t0
    preds = predictions(out_dir, tok, served_rows, width, served)
    prompts = [r.prompt for r in served_rows][: args.api_prompts]
    api = {
        mode: [
            encode_text(tok, a)
            for a in student_answers(
                out_dir, prompts, max_new=args.max_new_tokens, seed=5, greedy=mode == "greedy"
            )
        ]
        for mode in ("greedy", "sampled")
    }
    got = tests(scheme, preds, api, served)
    got |= {
        "held_out_loss": trained["held_out_loss"],
        "parameters": trained["parameters"],
        "marked_answers": len(served_rows) if share > 0 else 0,
        "train_seconds": t_train,
        "seconds": time.time() - t0,
        "load": os.getloadavg()[0],
    }
    got["ideal"] = ideal(scheme, tok, rows, served, width)
    if share > 0 and args.removal_steps:
        # removal: the student fine-tuned on unmarked answers to other prompts (the attacker's
        # own clean data), then the open-weights tests again on the same contexts
        clean_rows = data["c"][harvest : harvest + max(harvest, 200)]
        cleaned = base.clean_finetune(
            out_dir, work / f"{out_dir.name}-clean", clean_rows, args.removal_steps
        )
        after = tests(scheme, predictions(cleaned, tok, served_rows, width, served), {}, served)
        got[f"clean-ft-{args.removal_steps}"] = after
    if share == 0 and args.keys:
        got["calibration"] = calibrate(scheme, preds, api, served, args.keys, args.full_keys)
    return got


def fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--widths", default="2,1")
    parser.add_argument("--harvests", default="500,2000")
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--shares", default="0,5")
    parser.add_argument("--control-share", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--api-prompts", type=int, default=100)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--full-keys", type=int, default=1000)
    parser.add_argument("--removal-steps", type=int, default=0, help="clean fine-tuning steps")
    parser.add_argument("--data-only", action="store_true")
    parser.add_argument("--ideal-only", action="store_true", help="only the ideal learner grid")
    parser.add_argument("--work", type=Path, help="students' folder: trained ones are reused")
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/radioactivity_sft.json")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dg-radio2")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from distillguard.config import get_settings
    from distillguard.models.llama import load_model
    from distillguard.watermark import build_scheme

    t0 = time.time()
    data_dir = get_settings().data_dir or REPO.parent / "shared" / "data"
    cache = args.cache / f"a{args.answers}-t{args.max_new_tokens}"
    cache.mkdir(parents=True, exist_ok=True)
    teacher = cache / "teacher"
    if not (teacher / "config.json").is_file():
        from distillguard.models.teacher import build_tiny_model

        build_tiny_model(teacher, data_dir=data_dir, max_steps=300)
    model, tok = load_model(teacher)
    model.eval()
    prompts = base.load_prompts(data_dir, args.answers, tok, 256 - args.max_new_tokens - 8)
    data: dict = {"tok": tok, "teacher": teacher}
    gen = {"max_new": args.max_new_tokens}
    data["c"] = cached_answers(
        cache / "clean.jsonl",
        lambda: teacher_answers(model, tok, prompts, None, seed=1, **gen),
    )
    for width in (2, 1):
        scheme = build_scheme(
            "kgw", secret=base.SECRET, key_id=1, vocab_size=len(tok), context_width=width
        )
        data[f"scheme{width}"] = scheme
        data[f"m{width}"] = cached_answers(
            cache / f"marked-h{width}.jsonl",
            lambda s=scheme: teacher_answers(model, tok, prompts, s, seed=0, **gen),
        )
    print(f"answers ready ({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    if args.data_only:
        return 0
    if args.ideal_only:
        grid = ideal_grid(args, data)
        args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "ideal": grid}))
        return 0
    result: dict = {"command": "python " + " ".join(sys.argv), "cells": {}}
    if args.out.is_file():  # resume: keep the cells already measured
        result["cells"] = json.loads(args.out.read_text()).get("cells", {})
    work = args.work or Path(tempfile.mkdtemp(prefix="dg-radio-sft-"))
    for width in [int(w) for w in args.widths.split(",")]:
        for harvest in [int(h) for h in args.harvests.split(",")]:
            for size in args.sizes.split(","):
                for share in [float(s) for s in args.shares.split(",")]:
                    key = f"w{width}/h{harvest}/{size}/{share:g}"
                    if key in result["cells"]:
                        continue
                    got = run_cell(
                        args,
                        width=width,
                        harvest=harvest,
                        size=size,
                        share=share,
                        data=data,
                        work=work,
                    )
                    result["cells"][key] = got
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(result, indent=1))
                    names = ("top1-binomial", "full-stouffer", "api-greedy-served")
                    print(
                        f"{key:22s} loss {got['held_out_loss']:.2f}  "
                        + "  ".join(f"{n}={fmt(got.get(n))}" for n in names)
                        + f"  ideal={fmt(got['ideal']['full-stouffer'])}"
                        + f"  ({got['seconds']:.0f} s, load {got['load']:.1f})",
                        flush=True,
                    )
                    for name, after in got.items():
                        if name.startswith("clean-ft"):
                            print(f"    {name}: {after}", flush=True)
                    if "calibration" in got:
                        for name, cal in got["calibration"].items():
                            print(f"    null {name}: {cal}", flush=True)
    print(f"total {time.time() - t0:.0f} s, load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
