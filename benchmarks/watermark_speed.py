"""Watermark detection speed (and tokenization, reported separately).

Measures, on one thread, tokens scored per second by ``WatermarkScheme.detect_many`` with
everything on (deduplication of (context, token) pairs, prompt-copy exclusion, exact
p-values in log space, one ``DetectionResult`` per text):

- 2,000 texts x 200 tokens (400k tokens) of random ids, each with a 50-token prompt of which
  10 tokens are copied into the text, at a 4,096 and a 131,072 token vocabulary;
- the same texts without prompts; one single 400k-token text;
- the same through ``detect_many`` (one frozen ``DetectionResult`` per text: Python objects
  cost about as much as the scoring at 200 tokens a text);
- real LLM answers (``shared/data/outputs``) tokenized with the teacher's tokenizer, whose
  tokenization speed is reported on its own lines: the transformers batch call (the reference
  ids) beside ``ChunkEncoder`` (cold: a fresh cache; warm: the same texts again), whose ids
  are checked equal to the reference; then detection from raw text, tokenizing included
  (``ChunkEncoder`` + KGW ``detect_arrays``), cold and warm; these lines also give tokens per
  CPU-second of this process (the machine is shared: wall time measures the neighbours too);
- a bare numpy floor for scale: keyed hash + green test + per-text counts, no deduplication,
  no prompt handling, no p-values (the ratio "full / floor" shows what the extras cost).

Best of ``--repeats`` runs per line (the machine is shared; ``uptime`` is printed).
Run: ``.venv/bin/python benchmarks/watermark_speed.py [--repeats 5] [--tokenizer DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from distillguard.watermark import build_scheme
from distillguard.watermark.base import TOKEN_HASH, U64, fraction_threshold, splitmix64

SECRET = b"benchmark-secret-0123456789abcdef"
console = Console()


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm caches (token hash table, scipy)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bare_floor(seqs: np.ndarray, key: int, gamma: float) -> np.ndarray:
    """The simplest keyed-hash KGW scorer: green count per text, nothing else. (R, T) -> (R,)"""
    th = TOKEN_HASH.of(seqs)  # (R, T)
    seed = splitmix64(th[:, :-1] ^ U64(key))
    return (splitmix64(seed ^ th[:, 1:]) < fraction_threshold(gamma)).sum(axis=1)


def real_answers(data_dir: Path) -> list[str]:
    texts = []
    for path in sorted((data_dir / "outputs").glob("*.jsonl")):
        with path.open() as f:
            texts += [json.loads(line)["output"] for line in f]
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer dir for the real-text lines (default: the small teacher)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--only-text", action="store_true", help="only the real-text lines")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console.print(f"load: {os.getloadavg()}")
    rng = np.random.default_rng(0)
    R, T = args.texts, args.length
    rows: list[tuple[str, str, float]] = []
    cpu_rows: list[tuple[str, float, float]] = []  # (what, wall tokens/s, CPU tokens/s)

    for vocab in () if args.only_text else (4096, 131072):
        seqs = rng.integers(0, vocab, (R, T))
        prompts = [np.concatenate([rng.integers(0, vocab, 40), s[:10]]) for s in seqs]
        seq_list = list(seqs)
        floor = best_of(lambda seqs=seqs: bare_floor(seqs, 12345, 0.25), args.repeats)
        rows.append((f"bare numpy floor, V={vocab}", "kgw", R * T / floor))
        for name in ("kgw", "gumbel", "synthid"):
            s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=vocab)
            t = best_of(
                lambda s=s, p=prompts, q=seq_list: s.detect_arrays(q, prompts=p), args.repeats
            )
            rows.append((f"{R}x{T}, prompts, V={vocab}", name, R * T / t))
            t = best_of(
                lambda s=s, p=prompts, q=seq_list: s.detect_many(q, prompts=p), args.repeats
            )
            rows.append(("  same, one DetectionResult per text", name, R * T / t))
            if name == "kgw":
                t = best_of(lambda s=s, q=seq_list: s.detect_arrays(q), args.repeats)
                rows.append((f"{R}x{T}, no prompts, V={vocab}", name, R * T / t))
                one = [seqs.ravel()]
                t = best_of(lambda s=s, one=one: s.detect_arrays(one), args.repeats)
                rows.append((f"one {R * T}-token text, V={vocab}", name, R * T / t))

    from distillguard.config import get_settings

    tok_dir = args.tokenizer
    if tok_dir is None:
        from distillguard.models.teacher import teacher_dir_path

        tok_dir = teacher_dir_path(get_settings(), size="small")

    data = get_settings().data_dir or Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if (tok_dir / "tokenizer.json").is_file() and (data / "outputs").is_dir():
        from transformers import AutoTokenizer

        from distillguard.models.tokenizer import ChunkEncoder

        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        texts = real_answers(data)

        def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            return time.perf_counter() - t, time.process_time() - c, out

        wall, cpu, ref = timed(lambda: tok(texts, add_special_tokens=False)["input_ids"])
        ids = [np.asarray(x) for x in ref]  # type: ignore[union-attr]
        n = sum(len(x) for x in ids)
        rows.append((f"tokenization of {len(texts)} real answers, transformers", "-", n / wall))
        cpu_rows.append(("tokenization, transformers batch call", n / wall, n / cpu))
        enc = ChunkEncoder(tok)
        wall, cpu, got = timed(lambda: enc.encode(texts))
        same = all(np.array_equal(a, b) for a, b in zip(ids, got, strict=True))  # type: ignore[call-overload]
        cpu_rows.append(("tokenization, ChunkEncoder cold", n / wall, n / cpu))
        wall, cpu, _ = timed(lambda: enc.encode(texts))
        cpu_rows.append(("tokenization, ChunkEncoder warm", n / wall, n / cpu))
        kgw = build_scheme("kgw", secret=SECRET, key_id=1, vocab_size=len(tok))
        for label, e in (("cold", ChunkEncoder(tok)), ("warm", enc)):
            wall, cpu, _ = timed(lambda e=e: kgw.detect_arrays(e.encode(texts)))
            cpu_rows.append((f"raw text -> KGW p-values, {label}", n / wall, n / cpu))
        console.print(f"ChunkEncoder ids identical to transformers' on all texts: {same}")
        for name in ("kgw", "gumbel", "synthid"):
            s = build_scheme(name, secret=SECRET, key_id=1, vocab_size=len(tok))
            t = best_of(lambda s=s, ids=ids: s.detect_arrays(ids), args.repeats)
            rows.append((f"{len(texts)} real answers ({n} tokens)", name, n / t))
    else:
        console.print(f"[yellow]skipped real-text lines: no tokenizer at {tok_dir} or no data")

    table = Table("input", "scheme", "tokens/s")
    for what, name, speed in rows:
        table.add_row(what, name, f"{speed / 1e6:.1f} M")
    console.print(table)
    if cpu_rows:
        raw = Table("real answers, one pass", "tokens/s wall", "tokens/CPU-s")
        for what, w, c in cpu_rows:
            raw.add_row(what, f"{w / 1e6:.2f} M", f"{c / 1e6:.2f} M")
        console.print(raw)
    console.print(f"load: {os.getloadavg()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                [dict(input=a, scheme=b, tokens_per_s=c) for a, b, c in rows]
                + [dict(input=a, tokens_per_s=w, tokens_per_cpu_s=c) for a, w, c in cpu_rows],
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
