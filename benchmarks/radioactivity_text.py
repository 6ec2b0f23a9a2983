"""Radioactivity of *text-only* (sft) students: dose-response, ceiling, calibration, removal.

    nice -n 10 .venv/bin/python benchmarks/radioactivity_text.py [--answers 500]
        [--sizes tiny,small] [--shares 0,5,10,100] [--steps 300] [--keys 1000]
        [--api-prompts 48] [--out docs/img/radioactivity_text.json]

The companion of ``benchmarks/radioactivity.py`` (same teacher, same KGW key and cache):
that one compares distillation modes; this one asks why a student trained on our *text*
alone shows nothing below 100 % and how far better tests, bigger students and more data go.

1. Tokenization facts: how often TRL's prompt/prompt+completion tokenization disagrees (the
   issue's suspected cause, fixed in ``distill/sft.py``), how often the teacher's generated
   ids differ from the canonical re-tokenization of its text (a text-only student can only
   learn the latter), and the green rate of each (the mark as text carries it).
2. Ceiling: the ideal width-1 learner of a harvest (the smoothed empirical next-token table
   of the student's training text, what a student of unbounded size converges to at this
   watermark's context width) tested like a student, over harvest size x share. Its gap to
   the trained students is how much the students' size is the cause.
3. Trained sft students (``distill.train_student``, TRL, 1 torch thread) of each size x share,
   tested open-weights with the previous tests (top-1 binomial, Stouffer full distribution:
   the peers) and the precision-weighted full distribution, and API-only on fresh prompts.
4. Calibration: the 0 % students and the 0 % ideal learner under ``--keys`` random keys.
5. Removal: the marked students and ideal learners after clean fine-tuning, after training
   on paraphrased text (word-level reorder/drop), and after watermark neutralization (Pan et
   al. 2025: green lists estimated from frequencies against a reference, bias subtracted).
Writes the JSON beside ``docs/img/radioactivity_text_*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import radioactivity as base

REPO = Path(__file__).resolve().parents[1]
TESTS = ("top1-binomial", "full-stouffer", "full-precision")


# --------------------------------------------------------------------------- tokenization
def tokenization_facts(tok, scheme, rows) -> dict:
    """TRL's prefix mismatches, generated-vs-canonical pair loss, green rates of both."""
    from trl.trainer.sft_trainer import _tokenize, common_prefix_length

    from distillguard.forensics import radioactivity as rad

    not_prefix = 0
    gen_pairs, text_pairs = [], []
    for r in rows:
        prompt = [{"role": "user", "content": r.prompt}]
        full = [*prompt, {"role": "assistant", "content": r.answer}]
        p = _tokenize(tok, prompt, add_generation_prompt=True, chat_template=tok.chat_template)
        pc = _tokenize(tok, full, chat_template=tok.chat_template)
        not_prefix += common_prefix_length(p["input_ids"], pc["input_ids"]) < len(p["input_ids"])
        gen = np.array([e["id"] for e in r.logprobs or []], np.int64)
        text = np.array(tok.encode(r.answer, add_special_tokens=False), np.int64)
        for ids, into in ((gen, gen_pairs), (text, text_pairs)):
            ctx, nxt = rad.sliding_contexts(ids, 1)  # (n, 1), (n,)
            into.append(np.column_stack([ctx[:, 0], nxt]))

    def green_rate(pairs: list[np.ndarray]) -> tuple[float, int]:
        p = np.unique(np.concatenate(pairs).reshape(-1, 2), axis=0)
        return float(scheme.score_pairs(p[:, :1], p[:, 1]).mean()), len(p)

    gen_set = {tuple(x) for x in np.concatenate(gen_pairs).reshape(-1, 2).tolist()}
    text_set = {tuple(x) for x in np.concatenate(text_pairs).reshape(-1, 2).tolist()}
    g_rate, g_n = green_rate(gen_pairs)
    t_rate, _t_n = green_rate(text_pairs)
    return {
        "rows": len(rows),
        "trl_prompt_not_prefix": int(not_prefix),
        "generated_pairs": g_n,
        "generated_pairs_absent_from_text": len(gen_set - text_set),
        "green_rate_generated": g_rate,
        "green_rate_text": t_rate,
        "gamma": float(scheme.params.gamma),
    }


# --------------------------------------------------------------------------- ideal learner
def key_rows(keys: np.ndarray, width: int, vocab: int) -> np.ndarray:
    """Context keys (C,) -> context rows (C, h): the inverse of ``rad.context_keys``."""
    rows = np.zeros((len(keys), width), np.int64)
    rest = np.asarray(keys, np.int64).copy()
    for j in range(width - 1, -1, -1):
        rows[:, j] = rest % vocab
        rest //= vocab
    return rows


@dataclass(frozen=True)
class IdealLearner:
    """The smoothed empirical next-token table of a training text at the scheme's width h:
    what a student of unbounded capacity converges to (sparse: only contexts seen)."""

    width: int
    vocab: int
    keys: np.ndarray  # (N,) sorted context keys of the distinct (context, next) pairs
    nexts: np.ndarray  # (N,) their next tokens
    counts: np.ndarray  # (N,) float64 occurrences
    unigram: np.ndarray  # (V,) add-one unigram of the text: an unseen context predicts it
    alpha: float  # pseudo-count of the unigram prior per context

    @classmethod
    def fit(cls, sequences, vocab: int, width: int = 1, alpha: float = 0.5) -> IdealLearner:
        from distillguard.forensics import radioactivity as rad

        keys, nexts = [], []
        for s in sequences:
            ctx, nxt = rad.sliding_contexts(np.asarray(s, np.int64), width)
            keys.append(rad.context_keys(ctx, vocab))
            nexts.append(nxt)
        pairs, counts = np.unique(
            np.column_stack([np.concatenate(keys), np.concatenate(nexts)]),
            axis=0,
            return_counts=True,
        )
        unigram = np.bincount(np.concatenate(nexts), minlength=vocab)[:vocab] + 1.0
        return cls(
            width,
            vocab,
            pairs[:, 0],
            pairs[:, 1],
            counts.astype(np.float64),
            unigram / unigram.sum(),
            alpha,
        )

    def table(self, contexts: np.ndarray) -> np.ndarray:
        """q(. | c) for contexts (C, h) -> (C, V) float64."""
        from distillguard.forensics import radioactivity as rad

        wanted = rad.context_keys(contexts, self.vocab)  # (C,)
        q = np.tile(self.alpha * self.unigram, (len(wanted), 1))
        order = np.argsort(wanted)
        lo = np.searchsorted(self.keys, wanted[order], "left")
        hi = np.searchsorted(self.keys, wanted[order], "right")
        for row, a, b in zip(order.tolist(), lo.tolist(), hi.tolist(), strict=True):
            q[row, self.nexts[a:b]] += self.counts[a:b]
        return q / q.sum(1, keepdims=True)

    def predictions(self, contexts: np.ndarray, bias: np.ndarray | None = None):
        from distillguard.forensics.radioactivity import Predictions

        q = self.table(contexts)
        if bias is not None:  # (C, V) logit offsets of an attacker
            q = q * np.exp(bias)
            q /= q.sum(1, keepdims=True)
        top = q.argmax(1).astype(np.int64)
        return Predictions(contexts, q.astype(np.float32), contexts, top, len(contexts), 0)

    def sample(self, start: list[int], count: int, length: int, seed: int) -> list[list[int]]:
        """``count`` answers of ``length`` tokens after the context ``start`` (h tokens)."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(count):
            seq = list(start[-self.width :])
            for _ in range(length):
                q = self.table(np.asarray([seq[-self.width :]], np.int64))[0]
                seq.append(int(rng.choice(self.vocab, p=q)))
            out.append(seq[self.width :])
        return out


# --------------------------------------------------------------------------- tests
def open_tests(scheme, preds, keys_schemes=()) -> dict:
    """The peers (top-1 binomial, Stouffer) and the precision-weighted full distribution,
    each with its log10 p under every random key of ``keys_schemes``."""
    from scipy import stats

    from distillguard.forensics import radioactivity as rad

    def run(s) -> dict[str, float]:
        top = rad.binomial_test(s, preds.top1_contexts, preds.top1_tokens, "t").log10_p_value
        out = {"top1-binomial": top}
        for name, weighting in (("full-stouffer", "stouffer"), ("full-precision", "precision")):
            z = rad.full_distribution_z(s, preds, weighting)
            out[name] = float(stats.norm.logsf(z) / np.log(10))
        return out

    got = run(scheme)
    nulls = [run(s) for s in keys_schemes]
    return {name: {"log10_p": got[name], "null": [n[name] for n in nulls]} for name in got} | {
        "units": len(preds.contexts)
    }


def api_test(scheme, sequences) -> float:
    from distillguard.forensics import radioactivity as rad

    ctx, tok, _ = rad.text_pairs(sequences, scheme.context.width, scheme.vocab_size)
    return rad.binomial_test(scheme, ctx, tok, "text-binomial").log10_p_value


# --------------------------------------------------------------------------- attacks
def paraphrase(text: str, rng: np.random.Generator, swap: float = 0.3, drop: float = 0.1) -> str:
    """Word-level paraphrase: drop ~10 % of words, swap ~30 % of adjacent pairs (no synonym
    list is available offline; sub-word pairs inside words survive it, by design)."""
    words = [w for w in text.split(" ") if rng.random() >= drop]
    i = 0
    while i < len(words) - 1:
        if rng.random() < swap:
            words[i], words[i + 1] = words[i + 1], words[i]
            i += 2
        else:
            i += 1
    return " ".join(words)


def estimated_green(harvest_seqs, reference_seqs, vocab: int) -> np.ndarray:
    """Pan et al.'s frequency estimate: (c, v) over-represented in the harvest relative to a
    reference text, by more than chance, is guessed green; (V, V) bool."""
    every = np.arange(vocab, dtype=np.int64)[:, None]  # (V, 1) all width-1 contexts
    h = IdealLearner.fit(harvest_seqs, vocab, alpha=0.1).table(every)
    r = IdealLearner.fit(reference_seqs, vocab, alpha=0.1).table(every)
    return np.log(h) - np.log(r) > np.log(1.5)


def neutralize(preds, green_hat: np.ndarray, bias: float):
    """The student's distributions with ``bias`` subtracted from the guessed-green logits."""
    q = preds.mean_probs.astype(np.float64) * np.exp(-bias * green_hat[preds.contexts[:, 0]])
    q /= q.sum(1, keepdims=True)
    # top-1 from the per-context distributions (the per-position predictions are gone)
    return replace(
        preds,
        mean_probs=q.astype(np.float32),
        top1_contexts=preds.contexts,
        top1_tokens=q.argmax(1),
    )


def ideal_removal(scheme, marked, clean, share, encoded, answer_ids, start) -> dict:
    """The ideal learner of one share after each removal attack: neutralized (Pan et al.,
    bias 2 on the guessed-green pairs, also when it answers), paraphrased training text, and
    the harvest diluted by as much clean text again (what clean fine-tuning does to it)."""
    from distillguard.forensics import radioactivity as rad

    vocab = scheme.vocab_size
    rows, served = base.mix(marked, clean, share), base.served_rows(marked, share)
    ctx = key_rows(rad.served_context_keys(answer_ids(served), 1, vocab), 1, vocab)
    reference = encoded(clean)  # the attacker's unmarked reference (generous to it)
    green_hat = estimated_green(encoded(rows), reference, vocab)
    rng = np.random.default_rng(7)
    para = [replace(r, answer=paraphrase(r.answer, rng)) for r in marked]
    learners = {
        "none": IdealLearner.fit(encoded(rows), vocab),
        "paraphrased": IdealLearner.fit(encoded(base.mix(para, clean, share)), vocab),
        "clean-text x1": IdealLearner.fit(encoded(rows) + reference, vocab),
    }
    out = {}
    for name, learner in learners.items():
        out[name] = open_tests(scheme, learner.predictions(ctx))
        out[name]["api"] = api_test(scheme, learner.sample(start, 100, 48, seed=3))
    plain = learners["none"]
    out["neutralized"] = open_tests(scheme, neutralize(plain.predictions(ctx), green_hat, 2.0))
    table = plain.table(np.arange(vocab, dtype=np.int64)[:, None]) * np.exp(-2.0 * green_hat)
    table /= table.sum(1, keepdims=True)  # (V, V) the neutralized learner answering
    sampler = np.random.default_rng(3)
    answers = []
    for _ in range(100):
        seq = [start[-1]]
        for _ in range(48):
            seq.append(int(sampler.choice(vocab, p=table[seq[-1]])))
        answers.append(seq[1:])
    out["neutralized"]["api"] = api_test(scheme, answers)
    out["guessed_green_pairs"] = int(green_hat.sum())
    return out


# --------------------------------------------------------------------------- students
def train_sft(rows, out: Path, teacher: Path, size: str, steps: int):
    from distillguard.distill.trainers import DistillConfig, train_student

    config = DistillConfig(max_steps=steps, batch_size=8, checkpoint_every=0)
    return train_student(
        rows,
        mode="sft",
        out_dir=out,
        student_size=size,
        student_tokenizer_dir=teacher,
        config=config,
        progress=False,
    )


def student_predictions(student: Path, tok, marked, served_keys):
    """The student reads all our watermarked prompts+answers, exactly as it was trained on
    them; contexts of the served answers are scored (first occurrence per sequence)."""
    from distillguard.forensics import radioactivity as rad
    from distillguard.forensics import suspects
    from distillguard.models.llama import load_model

    model, _ = load_model(student)
    return rad.collect_predictions(
        model,
        suspects.encode_rows(tok, [(r.prompt, r.answer) for r in marked]),
        width=1,
        vocab=len(tok),
        config=base_config(),
        served=served_keys,
    )


def base_config():
    from distillguard.forensics.radioactivity import RadioactivityConfig

    return RadioactivityConfig(min_effect_size=0.5)


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def ideal_grid(
    scheme,
    marked,
    clean,
    harvests,
    shares,
    encoded,
    answer_ids,
    null_keys,
    few_keys,
    *,
    start,
    length,
):
    """The ideal learner of each (harvest size, share): open-weights tests on the served
    contexts and the text test on 100 of its answers; all random keys at the 0 % cell of the
    largest harvest (the calibration), a few elsewhere."""
    from distillguard.forensics import radioactivity as rad
    from distillguard.progress import progress_bar

    width, vocab = scheme.context.width, scheme.vocab_size
    out: dict = {}
    with progress_bar() as bar:
        task = bar.add_task(f"ideal learner h={width}", total=len(harvests) * len(shares))
        for h in harvests:
            for share in shares:
                m, c = marked[:h], clean[:h]
                served = base.served_rows(m, share)
                learner = IdealLearner.fit(encoded(base.mix(m, c, share)), vocab, width)
                keys = rad.served_context_keys(answer_ids(served), width, vocab)
                preds = learner.predictions(key_rows(keys, width, vocab))
                cal = null_keys if (share == 0 and h == max(harvests)) else few_keys
                got = open_tests(scheme, preds, cal)
                answers = learner.sample(start, 100, length, seed=3)
                got["api-100"] = api_test(scheme, answers)
                out[f"{h}/{share:g}"] = got
                bar.advance(task)
    return out


def show_ideal(ideal: dict) -> None:
    for key, got in ideal.items():
        print(
            f"  harvest/share {key:>9s}: "
            + " / ".join(fmt(got[t]["log10_p"]) for t in TESTS)
            + f" / {fmt(got['api-100'])}  ({got['units']} contexts)"
        )


def plot(results: list[Path], out: Path) -> None:
    """log10 p against the watermarked share: ideal learner and each student size, per test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for path in results:
        data = json.loads(Path(path).read_text())
        groups: dict[str, dict[float, dict]] = {}
        for key, got in (data.get("ideal") or {}).items():
            h, share = key.split("/")
            groups.setdefault(f"ideal learner ({h} answers)", {})[float(share)] = got
        for key, got in (data.get("students") or {}).items():
            size, share = key.split("/")
            groups.setdefault(f"sft {size} student", {})[float(share)] = got
        for label, cells in groups.items():
            xs = sorted(cells)
            for ax, test in zip(axes, ("full-stouffer", "full-precision"), strict=True):
                ys = [-cells[x][test]["log10_p"] for x in xs]
                ax.plot([max(x, 0.5) for x in xs], ys, "o-", label=label)
    for ax, test in zip(
        axes,
        ("full distribution, Stouffer (peer)", "full distribution, precision-weighted"),
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.axhline(5, color="grey", ls="--", lw=1)
        ax.axhline(3, color="grey", ls=":", lw=1)
        ax.set_xlabel("watermarked share of the harvest (%; 0 % drawn at 0.5)")
        ax.set_title(test, fontsize=10)
    axes[0].set_ylabel("-log10 p (open weights)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


# --------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--shares", default="0,5,10,100")
    parser.add_argument(
        "--harvests", default="", help="ideal learner harvest sizes (default N/4, N/2, N)"
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--keys", type=int, default=1000, help="random keys of the calibration")
    parser.add_argument("--student-keys", type=int, default=20)
    parser.add_argument("--api-prompts", type=int, default=48)
    parser.add_argument("--removal-steps", default="100,300")
    parser.add_argument("--h2", action="store_true", help="also the width-2 mark's ideal learner")
    parser.add_argument(
        "--h2-answers", type=int, default=200, help="answers under the width-2 mark"
    )
    parser.add_argument("--ideal-only", action="store_true")
    parser.add_argument("--no-ideal", action="store_true", help="students only (a 2nd process)")
    parser.add_argument("--no-removal", action="store_true")
    parser.add_argument("--plot", type=Path, nargs="*", help="only plot these result JSONs")
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "img" / "radioactivity_text.json"
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dg-radio")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, REPO / "docs" / "img" / "radioactivity_text_dose.png")
        return 0

    import torch

    torch.set_num_threads(1)
    from scipy import stats

    from distillguard.config import get_settings
    from distillguard.distill.data import prompt_ids
    from distillguard.forensics import radioactivity as rad
    from distillguard.forensics import suspects
    from distillguard.models.llama import load_model
    from distillguard.progress import progress_bar
    from distillguard.watermark import build_scheme

    t0 = time.time()
    loads: list[float] = []
    data_dir = get_settings().data_dir or REPO.parent / "shared" / "data"
    cache = args.cache / f"a{args.answers}-t{args.max_new_tokens}"
    teacher = cache / "teacher"
    if not (teacher / "config.json").is_file():
        from distillguard.models.teacher import build_tiny_model

        build_tiny_model(teacher, data_dir=data_dir, max_steps=300)
    _, tok = load_model(teacher)
    vocab = len(tok)
    scheme = build_scheme("kgw", secret=base.SECRET, key_id=1, vocab_size=vocab)
    prompts = base.load_prompts(data_dir, args.answers + 400, tok, 256 - args.max_new_tokens - 8)
    train_prompts, fresh = prompts[: args.answers], prompts[args.answers :]
    kw = {"max_new_tokens": args.max_new_tokens, "cache": None}
    marked = base.answer(
        teacher, train_prompts, scheme=scheme, seed=0, **(kw | {"cache": cache / "marked.jsonl"})
    )
    clean = base.answer(
        teacher, train_prompts, scheme=None, seed=1, **(kw | {"cache": cache / "clean.jsonl"})
    )
    result: dict = {"command": "python " + " ".join(sys.argv), "answers": args.answers}
    result["tokenization"] = facts = tokenization_facts(tok, scheme, marked)
    print(f"tokenization: {facts}", flush=True)
    null_keys = rad.random_schemes(scheme, args.keys, seed=2024)
    few_keys = null_keys[: args.student_keys]
    shares = [float(s) for s in args.shares.split(",")]
    sizes = args.sizes.split(",")
    harvests = (
        [int(h) for h in args.harvests.split(",")]
        if args.harvests
        else [args.answers // 4, args.answers // 2, args.answers]
    )

    def encoded(rows):
        return suspects.encode_rows(tok, [(r.prompt, r.answer) for r in rows])

    def answer_ids(rows):
        return [tok.encode(r.answer, add_special_tokens=False) for r in rows]

    def served_keys(rows):
        return rad.served_context_keys(answer_ids(rows), 1, vocab)

    # 2. the ideal learner over harvest size x share -----------------------------------------
    ideal = (
        {}
        if args.no_ideal
        else ideal_grid(
            scheme,
            marked,
            clean,
            harvests,
            shares,
            encoded,
            answer_ids,
            null_keys,
            few_keys,
            start=prompt_ids(tok, "x"),
            length=args.max_new_tokens,
        )
    )
    result["ideal"] = ideal
    loads.append(os.getloadavg()[0])
    print("\nideal width-1 learner, log10 p (top-1 / Stouffer / precision / API 100 answers):")
    show_ideal(ideal)
    if args.h2:
        scheme_h2 = build_scheme(
            "kgw", secret=base.SECRET, key_id=1, vocab_size=vocab, context_width=2
        )
        marked_h2 = base.answer(
            teacher,
            train_prompts[: args.h2_answers],
            scheme=scheme_h2,
            seed=0,
            max_new_tokens=args.max_new_tokens,
            cache=cache / "marked-h2.jsonl",
        )
        keys_h2 = rad.random_schemes(scheme_h2, args.student_keys, seed=2025)
        h2 = [x for x in harvests if x <= len(marked_h2)]
        result["ideal_h2"] = ideal_grid(
            scheme_h2,
            marked_h2,
            clean,
            h2,
            shares,
            encoded,
            answer_ids,
            keys_h2,
            keys_h2,
            start=prompt_ids(tok, "x"),
            length=args.max_new_tokens,
        )
        print("\nideal width-2 learner of a width-2 mark (same tests):")
        show_ideal(result["ideal_h2"])
    print(f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if args.ideal_only:
        return 0

    # 3. trained sft students ----------------------------------------------------------------
    work = Path(tempfile.mkdtemp(prefix="dg-radio-text-"))
    students: dict = {}
    with progress_bar() as bar:
        task = bar.add_task("sft students", total=len(sizes) * len(shares))
        for size in sizes:
            for share in shares:
                t1 = time.time()
                out = work / f"{size}-{share:g}"
                trained = train_sft(base.mix(marked, clean, share), out, teacher, size, args.steps)
                served = base.served_rows(marked, share)
                preds = student_predictions(out, tok, marked, served_keys(served))
                keys = null_keys if share == 0 else few_keys
                got = open_tests(scheme, preds, keys)
                got["held_out_loss"] = trained.held_out_loss
                got["parameters"] = trained.parameters
                if args.api_prompts and ((share <= 10 and share > 0) or share == 100):
                    answers = suspects.generate_local(
                        out, fresh[: args.api_prompts], max_new_tokens=args.max_new_tokens
                    )
                    got["api"] = api_test(
                        scheme, [tok.encode(a, add_special_tokens=False) for a in answers]
                    )
                students[f"{size}/{share:g}"] = got
                bar.console.print(
                    f"{size:5s} {share:5g}%  loss {trained.held_out_loss:.2f}  "
                    + "  ".join(f"{t}={fmt(got[t]['log10_p'])}" for t in TESTS)
                    + f"  api={fmt(got.get('api'))}  ({time.time() - t1:.0f} s, "
                    f"load {os.getloadavg()[0]:.1f})"
                )
                bar.advance(task)
                result["students"] = students
                args.out.write_text(json.dumps(result, indent=1))
    loads.append(os.getloadavg()[0])

    # 4. calibration: every test under the random keys, on models never given marked text ----
    calibration = {}
    for who, got in (
        ("ideal", ideal.get(f"{max(harvests)}/0")),
        *((f"{s}", students.get(f"{s}/0")) for s in sizes),
    ):
        if got is None or 0.0 not in shares:
            continue
        for t in TESTS:
            p = 10.0 ** np.asarray(got[t]["null"])
            calibration[f"{who}/{t}"] = {
                "keys": int(p.size),
                "fpr_1e-3": float((p < 1e-3).mean()),
                "fpr_0.01": float((p < 0.01).mean()),
                "fpr_0.05": float((p < 0.05).mean()),
                "ks_p": float(stats.kstest(p, "uniform").pvalue),
            }
    result["calibration"] = calibration
    print("\ncalibration under random keys:")
    for k, v in calibration.items():
        print(f"  {k:28s} {v}")
    args.out.write_text(json.dumps(result, indent=1))

    # 5. removal attacks ----------------------------------------------------------------------
    removal: dict = {}
    reference = encoded(clean)  # the attacker's unmarked reference text (generous to it)
    rng = np.random.default_rng(7)
    para_marked = [replace(r, answer=paraphrase(r.answer, rng)) for r in marked]
    for share in [s for s in (100.0, 10.0) if s in shares and not args.no_removal]:
        rows = base.mix(marked, clean, share)
        served = base.served_rows(marked, share)
        green_hat = estimated_green(encoded(rows), reference, vocab)
        ideal_attacks = ideal_removal(
            scheme, marked, clean, share, encoded, answer_ids, prompt_ids(tok, "x")
        )
        for attack, got in ideal_attacks.items():
            if isinstance(got, dict):
                removal[f"ideal/{share:g}/{attack}"] = got
        para_rows = base.mix(para_marked, clean, share)
        size = sizes[-1]
        student = work / f"{size}-{share:g}"
        if not student.exists():
            continue
        preds = student_predictions(student, tok, marked, served_keys(served))
        removal[f"{size}/{share:g}/none"] = open_tests(scheme, preds)
        removal[f"{size}/{share:g}/neutralized"] = open_tests(
            scheme, neutralize(preds, green_hat, 2.0)
        )
        done = 0
        for k in [int(x) for x in args.removal_steps.split(",") if x]:
            cleaned = base.clean_finetune(
                student if done == 0 else work / f"{size}-{share:g}-clean{done}",
                work / f"{size}-{share:g}-clean{k}",
                clean,
                k - done,
            )
            done = k
            removal[f"{size}/{share:g}/clean-ft-{k}"] = open_tests(
                scheme, student_predictions(cleaned, tok, marked, served_keys(served))
            )
        if share == 100.0:
            para = work / f"{size}-para"
            train_sft(para_rows, para, teacher, size, args.steps)
            removal[f"{size}/{share:g}/paraphrased"] = open_tests(
                scheme, student_predictions(para, tok, marked, served_keys(served))
            )
        result["removal"] = removal
        args.out.write_text(json.dumps(result, indent=1))
    result["removal"] = removal
    print("\nremoval (log10 p: top-1 / Stouffer / precision):")
    for k, got in removal.items():
        print(f"  {k:28s} " + " / ".join(fmt(got[t]["log10_p"]) for t in TESTS))
    loads.append(os.getloadavg()[0])
    result["seconds"] = time.time() - t0
    result["load_average"] = loads
    args.out.write_text(json.dumps(result, indent=1))
    print(f"total {time.time() - t0:.0f} s; load {os.getloadavg()}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
