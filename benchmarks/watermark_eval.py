"""Watermark evaluation: strength vs length, robustness, quality cost, slowdown, calibration.

One run, on the cached `small` teacher (built first when missing), real prompts
(``shared/data/prompts/honest.jsonl``) and ``--answers`` answers per scheme of ``--max-new``
tokens (eos ignored, so every answer has the full length), each request tagged with one of
``--accounts`` account ids. All p-values are the schemes' exact ones; a text counts as marked
at p < 1e-3, so the FPR is 1e-3 by construction -- and is checked in the calibration part.

1. TPR at FPR 1e-3 vs number of generated tokens (25..400), per scheme, on token ids; and at
   200 tokens through text (decode, re-tokenize: what a detector of leaked text sees).
2. Robustness at 200 tokens: random substitution of 10/20/40 % of tokens, 10 % insertions,
   10 % deletions, truncation to the first 100, and a token-level paraphrase by a second,
   independently trained model (other data, other seed): at a rate r of positions, the token
   is replaced by a sample from the paraphraser given the original prefix (a cheap stand-in for
   a real paraphraser, which these tiny models cannot be).
3. Quality: perplexity of the 200-token answers under the unwatermarked teacher and under the
   independently trained model, watermarked vs unwatermarked (same prompts and seeds).
4. Accounts: provider TPR with the account signal vs the same scheme with it switched off
   (single key); top-1 attribution among all accounts, and recovery of every account in
   texts mixing 4 accounts (Holm-corrected p < 1e-3).
5. Generation slowdown: tokens/s of the engine with each sampler vs plain sampling, same batch,
   interleaved repeats (median).
6. Calibration: >= 10,000 unwatermarked texts (real LLM answers, human prompts, GSM8K
   solutions, the teacher's own unwatermarked answers): FPR at 1e-3 and 1e-2 with 95 %
   Clopper-Pearson intervals, per scheme.

Run: ``.venv/bin/python benchmarks/watermark_eval.py [--answers 96] [--max-new 400]``
Plots: docs/img/watermark_tpr_vs_tokens.png, docs/img/watermark_robustness.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy import stats

from distillguard.config import get_settings
from distillguard.models.engine import GenerationEngine, GenerationParams
from distillguard.models.llama import TrainConfig, build_model, load_model
from distillguard.models.teacher import default_teacher_dir
from distillguard.watermark import build_scheme

SECRET = b"benchmark-secret-0123456789abcdef"
SCHEMES = ("kgw", "gumbel", "synthid")
SINGLE_KEY = {
    "kgw": {"account_delta": 0.0},
    "gumbel": {"account_fraction": 0.0},
    "synthid": {"account_layers": 0},
}
LENGTHS = (25, 50, 100, 200, 300, 400)
ALPHA = 1e-3
CALIBRATION_KEYS = 5
console = Console()


# ------------------------------------------------------------------------------ data


def read_jsonl(path: Path, field: str) -> list[str]:
    with path.open() as f:
        return [r[field] for r in map(json.loads, f) if isinstance(r.get(field), str)]


def prompts_for(engine: GenerationEngine, data: Path, count: int, max_len: int) -> list[list[int]]:
    out = []
    for p in read_jsonl(data / "prompts" / "honest.jsonl", "prompt"):
        ids = engine.encode_chat([{"role": "user", "content": p}])
        if len(ids) <= max_len:
            out.append(ids)
        if len(out) == count:
            break
    return out


def paraphraser_dir(teacher_dir: Path, data: Path) -> Path:
    """A second model: same tokenizer, other data (GSM8K + Shakespeare), other seed."""
    out = get_settings().home / "models" / "wm-paraphraser"
    if (out / "config.json").is_file():
        return out
    texts = read_jsonl(data / "gsm8k" / "train.jsonl", "answer")[:3000]
    shakespeare = (data / "corpora" / "tinyshakespeare.txt").read_text().split("\n\n")
    config = TrainConfig(size="tiny", max_steps=400, batch_size=8, seed=7, seq_len=256)
    build_model(
        out_dir=out,
        config=config,
        texts=texts + shakespeare[:3000],
        tokenizer_dir=teacher_dir,
        progress=True,
    )
    return out


# ------------------------------------------------------------------------- generation


def generate(
    model: Any,
    tok: Any,
    sampler: Any,
    prompts: list[list[int]],
    max_new: int,
    accounts: list[str],
    batch: int,
    temperature: float = 1.0,
) -> tuple[list[np.ndarray], float]:
    engine = GenerationEngine(model, tok, sampler=sampler, num_threads=1, max_batch_size=batch)
    params = [
        GenerationParams(
            max_new_tokens=max_new,
            temperature=temperature,
            seed=i,
            tag=accounts[i % len(accounts)],
            ignore_eos=True,
        )
        for i in range(len(prompts))
    ]
    t = time.perf_counter()
    done = engine.generate_batch(prompts, params)
    seconds = time.perf_counter() - t
    return [np.asarray(c.token_ids, dtype=np.int64) for c in done], seconds


def slowdown(
    model: Any,
    tok: Any,
    vocab: int,
    prompts: list[list[int]],
    repeats: int,
    batch: int = 16,
    new: int = 64,
) -> dict[str, float]:
    """Median tokens/s per sampler, interleaved (plain first in every round)."""
    speeds: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name in ("off", *SCHEMES):
            s = (
                None
                if name == "off"
                else build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
            )
            ids, sec = generate(model, tok, s, prompts[:batch], new, ["a"], batch)
            speeds.setdefault(name, []).append(sum(map(len, ids)) / sec)
    return {k: statistics.median(v) for k, v in speeds.items()}


# ------------------------------------------------------------------------------ attacks


def substitute(ids: np.ndarray, rate: float, vocab: int, rng: np.random.Generator) -> np.ndarray:
    out = ids.copy()
    hit = rng.random(len(ids)) < rate
    out[hit] = rng.integers(0, vocab, int(hit.sum()))
    return out


def insert(ids: np.ndarray, rate: float, vocab: int, rng: np.random.Generator) -> np.ndarray:
    where = np.flatnonzero(rng.random(len(ids)) < rate)
    return np.insert(ids, where, rng.integers(0, vocab, len(where)))


def delete(ids: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    return ids[rng.random(len(ids)) >= rate]


@torch.inference_mode()
def next_token_logprobs(model: Any, prompt: list[int], ids: np.ndarray) -> torch.Tensor:
    """log p(answer token t | prompt, answer[:t]) rows: -> (len(ids), V)."""
    full = torch.tensor([*prompt, *ids.tolist()])[None]
    logits = model(full).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1)


def paraphrase(
    model: Any, prompt: list[int], ids: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    lp = next_token_logprobs(model, prompt, ids)
    out = ids.copy()
    hit = np.flatnonzero(rng.random(len(ids)) < rate)
    if hit.size:
        g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
        out[hit] = torch.multinomial(lp[hit].exp(), 1, generator=g).squeeze(-1).numpy()
    return out


def perplexity(model: Any, prompts: list[list[int]], answers: list[np.ndarray]) -> float:
    nll, n = 0.0, 0
    for p, a in zip(prompts, answers, strict=True):
        lp = next_token_logprobs(model, p, a)
        nll -= float(lp.gather(1, torch.as_tensor(a)[:, None]).sum())
        n += len(a)
    return float(np.exp(nll / n))


# ----------------------------------------------------------------------------- metrics


def tpr(scheme: Any, seqs: list[np.ndarray], prompts: list[list[int]] | None = None) -> float:
    b = scheme.detect_arrays(seqs, prompts=prompts)
    return float(np.mean(b.log10_p_value < np.log10(ALPHA)))


def median_log10p(name: str, vocab: int, seqs: list[np.ndarray]) -> float:
    s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
    return float(np.median(s.detect_arrays(seqs).log10_p_value))


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    lo = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def calibration(tok: Any, data: Path, teacher_answers: list[np.ndarray]) -> dict[str, Any]:
    texts = []
    for path in sorted((data / "outputs").glob("*.jsonl")):
        texts += read_jsonl(path, "output")
    texts += read_jsonl(data / "prompts" / "honest.jsonl", "prompt")
    texts += read_jsonl(data / "gsm8k" / "train.jsonl", "answer")
    texts = list(dict.fromkeys(texts))  # identical texts are one sample, not several
    ids = [np.asarray(x, dtype=np.int64) for x in tok(texts, add_special_tokens=False)["input_ids"]]
    ids += teacher_answers
    out: dict[str, Any] = {"texts": len(ids), "keys": CALIBRATION_KEYS}
    for name in SCHEMES:
        # Several keys: the texts share phrases (13 models answering the same 805 prompts,
        # GSM8K's formula lines), so under ONE key their p-values are correlated and the
        # empirical FPR of one key varies more than a binomial; validity is over keys.
        ps, ks = [], []
        for k in range(CALIBRATION_KEYS):
            secret = SECRET if k == 0 else SECRET + bytes([k])
            s = build_scheme(name, secret=secret, key_id=1, vocab_size=len(tok))
            b = s.detect_arrays(ids)
            p = b.p_value[b.num_scored > 0]
            ps.append(p)
            # KS only means something for a continuous statistic (Gumbel); binomial p-values
            # are discrete (atoms at 1 for short texts) and conservative by construction
            if name == "gumbel":
                ks.append(float(stats.kstest(p, "uniform").pvalue))
        p = np.concatenate(ps)
        row: dict[str, Any] = {"scored_texts": int(ps[0].size), "tests": int(p.size)}
        for alpha in (1e-3, 1e-2):
            k = int((p < alpha).sum())
            row[f"fpr@{alpha:g}"] = k / p.size
            row[f"ci@{alpha:g}"] = clopper_pearson(k, p.size)
            row[f"fpr@{alpha:g} per key"] = [float((q < alpha).mean()) for q in ps]
        row["ks_p"] = ks or None
        out[name] = row
    return out


# -------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=96, help="answers per scheme")
    ap.add_argument("--max-new", type=int, default=400)
    ap.add_argument("--accounts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="slowdown rounds")
    ap.add_argument("--low-temperature", type=float, default=0.5)
    ap.add_argument("--img", type=Path, default=Path("docs/img"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--calibration-only", action="store_true", help="only part 6 (fast)")
    ap.add_argument("--slowdown-only", action="store_true", help="only part 5")
    args = ap.parse_args()
    if args.slowdown_only:
        torch.set_num_threads(1)
        model, tok = load_model(default_teacher_dir(get_settings(), size="small"))
        vocab = int(model.get_input_embeddings().weight.shape[0])
        probe = GenerationEngine(model, tok, num_threads=1)
        prompts = prompts_for(
            probe,
            (
                get_settings().data_dir
                or Path(__file__).resolve().parents[1].parent / "shared" / "data"
            ),
            16,
            400,
        )
        console.print(f"load: {os.getloadavg()}")
        sp = slowdown(model, tok, vocab, prompts, args.repeats)
        for name, v in sp.items():
            console.print(f"{name}: {v:.0f} tokens/s, {v / sp['off']:.2f}x plain")
        console.print(f"load: {os.getloadavg()}")
        return
    if args.calibration_only:
        _, tok = load_model(default_teacher_dir(get_settings(), size="small"))
        cal = calibration(
            tok,
            (
                get_settings().data_dir
                or Path(__file__).resolve().parents[1].parent / "shared" / "data"
            ),
            [],
        )
        report_calibration(cal)
        if args.json:
            args.json.write_text(json.dumps(cal, indent=1))
        return
    torch.set_num_threads(1)
    t_start = time.time()
    console.print(f"load at start: {os.getloadavg()}")
    data = get_settings().data_dir or Path(__file__).resolve().parents[1].parent / "shared" / "data"
    teacher_dir = default_teacher_dir(get_settings(), size="small")
    model, tok = load_model(teacher_dir)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    probe = GenerationEngine(model, tok, num_threads=1)
    prompts = prompts_for(probe, data, args.answers, 512 - args.max_new - 8)
    accounts = [f"acct-{i}" for i in range(args.accounts)]
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"answers": len(prompts), "max_new": args.max_new}

    answers: dict[str, list[np.ndarray]] = {}
    gen_speed: dict[str, float] = {}
    for name in ("off", *SCHEMES):
        s = None if name == "off" else build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
        answers[name], sec = generate(model, tok, s, prompts, args.max_new, accounts, args.batch)
        gen_speed[name] = sum(map(len, answers[name])) / sec
        console.print(f"generated {name}: {gen_speed[name]:.0f} tokens/s")
    res["generation_tokens_per_s_main_runs"] = gen_speed

    # 1. TPR vs length (token ids) and through text at 200
    curve: dict[str, dict[int, float]] = {}
    for name in SCHEMES:
        s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
        curve[name] = {L: tpr(s, [a[:L] for a in answers[name]], prompts) for L in LENGTHS}
        curve[name + " (unmarked)"] = {
            L: tpr(s, [a[:L] for a in answers["off"]], prompts) for L in LENGTHS
        }
    res["tpr_vs_tokens"] = curve
    res["median_log10p_vs_tokens"] = {
        name: {L: median_log10p(name, vocab, [a[:L] for a in answers[name]]) for L in LENGTHS}
        for name in SCHEMES
    }
    # a lower temperature: less entropy per token, so weaker marks (more informative curve)
    low: dict[str, dict[int, float]] = {}
    low_med: dict[str, dict[int, float]] = {}
    n_low = max(len(prompts) // 2, 8)
    for name in SCHEMES:
        s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
        ids, _ = generate(
            model, tok, s, prompts[:n_low], args.max_new, accounts, args.batch, args.low_temperature
        )
        low[name] = {L: tpr(s, [a[:L] for a in ids], prompts[:n_low]) for L in LENGTHS}
        low_med[name] = {L: median_log10p(name, vocab, [a[:L] for a in ids]) for L in LENGTHS}
    res[f"tpr_vs_tokens_T{args.low_temperature:g}"] = low
    res[f"median_log10p_vs_tokens_T{args.low_temperature:g}"] = low_med
    res["low_temperature"] = args.low_temperature
    via_text = {}
    for name in SCHEMES:
        s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
        texts = tok.batch_decode(
            [a[:200].tolist() for a in answers[name]], skip_special_tokens=True
        )
        enc = tok(texts, add_special_tokens=False)["input_ids"]
        re_ids = [np.asarray(x, np.int64) for x in enc]
        via_text[name] = tpr(s, re_ids)
    res["tpr_200_via_text"] = via_text

    # 2. robustness at 200 tokens
    para_model, _ = load_model(paraphraser_dir(teacher_dir, data))
    attacks = {
        "none": lambda a, p: a,
        "substitute 10%": lambda a, p: substitute(a, 0.1, vocab, rng),
        "substitute 20%": lambda a, p: substitute(a, 0.2, vocab, rng),
        "substitute 40%": lambda a, p: substitute(a, 0.4, vocab, rng),
        "insert 10%": lambda a, p: insert(a, 0.1, vocab, rng),
        "delete 10%": lambda a, p: delete(a, 0.1, rng),
        "truncate to 100": lambda a, p: a[:100],
        "paraphrase 25%": lambda a, p: paraphrase(para_model, p, a, 0.25, rng),
        "paraphrase 50%": lambda a, p: paraphrase(para_model, p, a, 0.5, rng),
    }
    robust: dict[str, dict[str, float]] = {}
    for name in SCHEMES:
        s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
        robust[name] = {
            k: tpr(s, [f(a[:200], p) for a, p in zip(answers[name], prompts, strict=True)], prompts)
            for k, f in attacks.items()
        }
    res["robustness_tpr_200"] = robust

    # 3. perplexity of 200-token answers
    ppl = {}
    for name in ("off", *SCHEMES):
        cut = [a[:200] for a in answers[name]]
        ppl[name] = {
            "teacher": perplexity(model, prompts, cut),
            "independent model": perplexity(para_model, prompts, cut),
        }
    res["perplexity_200"] = ppl

    # 4. accounts: provider strength with vs without the account signal; attribution
    half = max(len(prompts) // 2, 8)
    acc_rows = {}
    for name in SCHEMES:
        single = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab, **SINGLE_KEY[name])
        single_ids, _ = generate(model, tok, single, prompts[:half], 200, accounts, args.batch)
        s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
        with_acc = [a[:200] for a in answers[name][:half]]
        res_with = s.detect_arrays(with_acc, prompts=prompts[:half])
        res_single = single.detect_arrays(single_ids, prompts=prompts[:half])
        det = s.detect_many(with_acc, accounts=accounts)
        top1 = np.mean(
            [r.accounts[0].account == accounts[i % len(accounts)] for i, r in enumerate(det)]
        )
        sig = np.mean([r.accounts[0].p_value_corrected < ALPHA for r in det])
        # mixtures of 4 answers of 4 different accounts, 100 tokens each
        mixes, found = [], []
        for j in range(0, half - 3, 4):
            mixes.append(np.concatenate([answers[name][j + k][:100] for k in range(4)]))
            found.append({accounts[(j + k) % len(accounts)] for k in range(4)})
        mres = s.detect_many(mixes, accounts=accounts)
        recovered = np.mean(
            [
                len({m.account for m in r.accounts if m.p_value_corrected < ALPHA} & want) / 4
                for r, want in zip(mres, found, strict=True)
            ]
        )
        false_acc = np.mean(
            [
                len({m.account for m in r.accounts if m.p_value_corrected < ALPHA} - want)
                for r, want in zip(mres, found, strict=True)
            ]
        )
        acc_rows[name] = {
            "provider_tpr_with_accounts": float(np.mean(res_with.log10_p_value < -3)),
            "provider_tpr_single_key": float(np.mean(res_single.log10_p_value < -3)),
            "median_log10p_with_accounts": float(np.median(res_with.log10_p_value)),
            "median_log10p_single_key": float(np.median(res_single.log10_p_value)),
            "ppl_teacher_with_accounts": perplexity(model, prompts[:half], with_acc),
            "ppl_teacher_single_key": perplexity(
                model, prompts[:half], [a[:200] for a in single_ids]
            ),
            "top1_attribution_200": float(top1),
            "account_significant_200": float(sig),
            "mixture_accounts_recovered": float(recovered),
            "mixture_false_accounts_per_text": float(false_acc),
        }
    res["accounts"] = acc_rows

    # 5. slowdown, same batch, interleaved
    res["generation_tokens_per_s_batch16"] = slowdown(model, tok, vocab, prompts, args.repeats)

    # 6. calibration on >= 10,000 unwatermarked texts
    res["calibration"] = calibration(tok, data, [a[:200] for a in answers["off"]])
    res["seconds"] = time.time() - t_start
    res["load_at_end"] = os.getloadavg()
    report(res, args.img)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


def report(res: dict[str, Any], img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = Table("scheme", *[str(L) for L in LENGTHS], "200 via text", title="TPR at FPR 1e-3")
    for name, row in res["tpr_vs_tokens"].items():
        t.add_row(
            name,
            *[f"{row[L]:.2f}" for L in LENGTHS],
            f"{res['tpr_200_via_text'].get(name, float('nan')):.2f}",
        )
    console.print(t)
    lt = res["low_temperature"]
    t = Table("scheme", *[str(L) for L in LENGTHS], title=f"TPR at FPR 1e-3, temperature {lt:g}")
    for name, row in res[f"tpr_vs_tokens_T{lt:g}"].items():
        t.add_row(name, *[f"{row[L]:.2f}" for L in LENGTHS])
    console.print(t)
    t = Table("scheme", "T", *[str(L) for L in LENGTHS], title="median log10 p")
    for key, T in (("median_log10p_vs_tokens", 1.0), (f"median_log10p_vs_tokens_T{lt:g}", lt)):
        for name, row in res[key].items():
            t.add_row(name, f"{T:g}", *[f"{row[L]:.1f}" for L in LENGTHS])
    console.print(t)
    attacks = list(next(iter(res["robustness_tpr_200"].values())))
    t = Table("attack (200 tokens)", *SCHEMES, title="TPR at FPR 1e-3 under attacks")
    for a in attacks:
        t.add_row(a, *[f"{res['robustness_tpr_200'][s][a]:.2f}" for s in SCHEMES])
    console.print(t)
    t = Table("answers", "ppl teacher", "ppl independent", title="perplexity (200 tokens)")
    for name, row in res["perplexity_200"].items():
        t.add_row(name, f"{row['teacher']:.1f}", f"{row['independent model']:.1f}")
    console.print(t)
    t = Table("accounts", *SCHEMES, title="accounts (200 tokens)")
    for key in next(iter(res["accounts"].values())):
        t.add_row(key, *[f"{res['accounts'][s][key]:.2f}" for s in SCHEMES])
    console.print(t)
    sp = res["generation_tokens_per_s_batch16"]
    t = Table("sampler", "tokens/s (batch 16)", "vs plain", title="generation")
    for name, v in sp.items():
        t.add_row(name, f"{v:.0f}", f"{v / sp['off']:.2f}x")
    console.print(t)
    report_calibration(res["calibration"])
    console.print(f"took {res['seconds']:.0f} s; load at end {res['load_at_end']}")

    img.mkdir(parents=True, exist_ok=True)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(SCHEMES):
        color = f"C{i}"
        for key, style, T in (("", "-", 1.0), (f"_T{lt:g}", "--", lt)):
            row = res["tpr_vs_tokens" + key][name]
            ax.plot(
                LENGTHS,
                [row[L] for L in LENGTHS],
                style,
                color=color,
                marker="o",
                label=f"{name} T={T:g}",
            )
            med = res["median_log10p_vs_tokens" + key][name]
            bx.plot(
                LENGTHS,
                [-med[L] for L in LENGTHS],
                style,
                color=color,
                marker="o",
                label=f"{name} T={T:g}",
            )
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("TPR at FPR 1e-3")
    ax.set_title("strength vs length (small teacher)")
    ax.legend(fontsize=7)
    bx.set_yscale("log")
    bx.axhline(3, color="grey", lw=0.5, ls="--")
    bx.set_xlabel("generated tokens")
    bx.set_ylabel("median -log10 p")
    bx.set_title("median evidence vs length")
    fig.tight_layout()
    fig.savefig(img / "watermark_tpr_vs_tokens.png", dpi=120)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.27
    x = np.arange(len(attacks))
    for i, name in enumerate(SCHEMES):
        ax.bar(
            x + (i - 1) * width,
            [res["robustness_tpr_200"][name][a] for a in attacks],
            width,
            label=name,
        )
    ax.set_xticks(x, attacks, rotation=30, ha="right")
    ax.set_ylabel("TPR at FPR 1e-3 (200 tokens)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(img / "watermark_robustness.png", dpi=120)


def report_calibration(cal: dict[str, Any]) -> None:
    t = Table(
        "scheme",
        "tests",
        "FPR@1e-3",
        "95% CI",
        "FPR@1e-2",
        "95% CI",
        "KS p per key",
        title=f"calibration: {cal['texts']} unwatermarked texts x {cal['keys']} keys",
    )
    for name in SCHEMES:
        r = cal[name]
        t.add_row(
            name,
            str(r["tests"]),
            f"{r['fpr@0.001']:.5f}",
            "[{:.5f}, {:.5f}]".format(*r["ci@0.001"]),
            f"{r['fpr@0.01']:.4f}",
            "[{:.4f}, {:.4f}]".format(*r["ci@0.01"]),
            "-" if r["ks_p"] is None else " ".join(f"{x:.2g}" for x in r["ks_p"]),
        )
    console.print(t)


if __name__ == "__main__":
    main()
