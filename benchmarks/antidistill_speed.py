"""What antidistillation sampling costs per token: plain vs antidistill steps, side by side.

One run, interleaved rounds (plain first in every round), median over ``--repeats``. For each
teacher shape and batch size, ``GenerationEngine.generate_batch`` decodes ``--new`` tokens
per row (eos ignored, so every run does the same number of steps) with the KGW watermark
on, (a) plain, (b) through ``AntidistillHook`` (a proxy of the teacher's first block, central
finite difference = two proxy forward passes over the last ``window`` tokens per step).
The figure is milliseconds per decode step and the ratio antidistill / plain; the issue's
target is <= 2x.

Teacher shapes (weights are random: the cost does not depend on what was learnt):
- ``arith``: the arithmetic task's teacher shape (one token per character, vocab 261,
  hidden 128, 4 blocks);
- ``small``: the project's default 1.2M-parameter teacher shape (vocab 4096).

The machine is shared (2 cores, other engineers' work): the load average is printed before
and after; compare the lines of one run only.
Run: ``nice -n 10 .venv/bin/python benchmarks/antidistill_speed.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

import torch
from rich.console import Console
from rich.table import Table

from distillguard.models.engine import GenerationEngine, GenerationParams
from distillguard.models.llama import SIZES, ModelSize, new_model
from distillguard.models.tokenizer import MIN_VOCAB, train_tokenizer
from distillguard.prevent.antidistill import (
    AntidistillConfig,
    AntidistillHook,
    build_proxy_pair,
    truncated_proxy,
)
from distillguard.progress import progress_bar
from distillguard.watermark import build_scheme

SHAPES = {
    "arith": ModelSize(
        hidden=128, layers=4, heads=4, ffn=256, vocab_size=MIN_VOCAB, context_length=256
    ),
    "small": SIZES["small"],
}
SECRET = b"benchmark-secret-0123456789abcdef"


def _engine(size: ModelSize) -> GenerationEngine:
    text = "0123456789+-*=# abcdefghijklmnopqrstuvwxyz Summary: " * 50
    tokenizer = train_tokenizer([text], vocab_size=size.vocab_size)
    model = new_model(size, tokenizer, seed=0)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    sampler = build_scheme("kgw", secret=SECRET, key_id=1, vocab_size=vocab)
    return GenerationEngine(model, tokenizer, sampler=sampler, num_threads=1, max_batch_size=64)


def _hook(engine: GenerationEngine, window: int, layers: int) -> AntidistillHook:
    proxy = truncated_proxy(engine.model, layers)
    g = torch.Generator().manual_seed(0)
    heldout = [torch.randint(0, engine.vocab_size, (64,), generator=g).tolist() for _ in range(4)]
    pair = build_proxy_pair(proxy, heldout, epsilon=0.01)
    return AntidistillHook(pair, AntidistillConfig(lam=1.0, epsilon=0.01, window=window))


def _ms_per_step(engine: GenerationEngine, batch: int, params: GenerationParams) -> float:
    prompts = [engine.encode_text(f"12+{i}=") for i in range(batch)]
    rows = [replace(params, seed=i, tag=f"acct_{i % 4}") for i in range(batch)]
    start = time.perf_counter()
    engine.generate_batch(prompts, rows)
    return (time.perf_counter() - start) * 1000.0 / params.max_new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new", type=int, default=64, help="tokens decoded per row")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--windows", default="8,16,32")
    parser.add_argument("--layers", type=int, default=1, help="proxy blocks cut from the teacher")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console()
    console.print(f"load average before: {os.getloadavg()}")
    batches = [int(b) for b in args.batches.split(",")]
    windows = [int(w) for w in args.windows.split(",")]
    table = Table(title="antidistillation sampling: ms per decode step (median), KGW on")
    for col in ("teacher", "batch", "window", "plain ms", "antidistill ms", "ratio"):
        table.add_column(col, justify="right")
    plan = [(s, b, w) for s in SHAPES for b in batches for w in windows]
    with progress_bar() as bar:
        task = bar.add_task("rounds", total=len(plan) * args.repeats)
        engines = {name: _engine(size) for name, size in SHAPES.items()}
        for name, batch, window in plan:
            engine = engines[name]
            hook = _hook(engine, window, args.layers)
            base = GenerationParams(max_new_tokens=args.new, ignore_eos=True)
            steered = replace(base, logits_hook=hook)
            _ms_per_step(engine, batch, base)  # warm-up
            _ms_per_step(engine, batch, steered)
            plain, anti = [], []
            for _ in range(args.repeats):
                plain.append(_ms_per_step(engine, batch, base))
                anti.append(_ms_per_step(engine, batch, steered))
                bar.advance(task)
            p, a = statistics.median(plain), statistics.median(anti)
            table.add_row(name, str(batch), str(window), f"{p:.2f}", f"{a:.2f}", f"{a / p:.2f}x")
    console.print(table)
    console.print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
