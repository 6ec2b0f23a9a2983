"""Local generation speed: distillguard's GenerationEngine against HF ``generate``.

Side by side in one run, on the same model, prompts, thread count and token budget (every
request produces exactly ``--new-tokens`` tokens: eos is ignored on both sides):

- engine, 1 request through the async path (background thread, as the gateway uses it);
- engine, N concurrent async requests (batched by the engine's thread);
- engine, N prompts through the synchronous ``generate_batch`` (distill's path);
- HF ``model.generate`` at batch 1 and at batch N (left padded), sampling, KV cache on.

Each measurement is repeated ``--repeats`` times, interleaved, and the median is reported
(the machine is shared; compare within one run). Tokens/s counts generated tokens only.

Run: ``.venv/bin/python benchmarks/generation.py [--model DIR] [--threads 1] [--concurrency 8]``
(default model: the cached `small` teacher, built first when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from distillguard.models.engine import GenerationEngine, GenerationParams

PROMPTS = [
    "What are the names of some famous actors that started their careers on Broadway?",
    "How do I wrap a present neatly?",
    "Explain the difference between a virus and a bacterium.",
    "Write a short poem about autumn leaves.",
    "What is the best way to learn a new language as an adult?",
    "Give me three ideas for a healthy breakfast.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
]


def timed(fn: Callable[[], int]) -> float:
    """Run ``fn`` (which returns a token count) and give tokens per second."""
    start = time.perf_counter()
    tokens = fn()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="HF model dir (default: teacher)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 shared cores)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.model is None:
        from distillguard.config import get_settings
        from distillguard.models.teacher import default_teacher_dir

        args.model = default_teacher_dir(get_settings())
    model_dir = args.model
    engine = GenerationEngine.from_dir(
        model_dir, num_threads=args.threads, max_batch_size=args.concurrency, batch_wait_ms=2.0
    )
    model, tokenizer = engine.model, engine.tokenizer
    n = args.concurrency
    prompts = [
        engine.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
        for i in range(n)
    ]
    params = [
        GenerationParams(
            max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0, seed=i, ignore_eos=True
        )
        for i in range(n)
    ]

    def engine_async(k: int) -> int:
        async def run() -> int:
            done = await asyncio.gather(*(engine.generate(prompts[i], params[i]) for i in range(k)))
            return sum(c.completion_tokens for c in done)

        return asyncio.run(run())

    def engine_sync(k: int) -> int:
        return sum(c.completion_tokens for c in engine.generate_batch(prompts[:k], params[:k]))

    def hf_generate(k: int) -> int:
        batch = tokenizer.pad({"input_ids": prompts[:k]}, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        return (out.shape[1] - batch["input_ids"].shape[1]) * k

    cases: dict[str, Callable[[], int]] = {
        "engine async, 1 request": lambda: engine_async(1),
        f"engine async, {n} concurrent": lambda: engine_async(n),
        f"engine generate_batch, {n}": lambda: engine_sync(n),
        "HF generate, batch 1": lambda: hf_generate(1),
        f"HF generate, batch {n}": lambda: hf_generate(n),
    }
    for fn in cases.values():  # warm-up: first calls allocate and fill caches
        fn()
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            results[name].append(timed(fn))
    engine.stop()
    median = {name: statistics.median(v) for name, v in results.items()}

    names = list(cases)
    table = Table(
        title=f"generation, {model_dir.name}, {args.new_tokens} new tokens, "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    table.add_column("case")
    table.add_column("tokens/s", justify="right")
    table.add_column("runs", justify="right")
    for name in names:
        table.add_row(name, f"{median[name]:,.0f}", " / ".join(f"{v:,.0f}" for v in results[name]))
    console = Console()
    console.print(table)
    ratio_1 = median[names[0]] / median[names[3]]
    ratio_n = median[names[1]] / median[names[4]]
    console.print(
        f"engine / HF generate: {ratio_1:.2f}x at 1 request, {ratio_n:.2f}x at {n} "
        f"(engine {n}-concurrent vs 1 request: "
        f"{median[names[1]] / median[names[0]]:.2f}x)"
    )
    console.print(f"load average: {os.getloadavg()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": str(model_dir),
                    "median": median,
                    "runs": results,
                    "ratio_1": ratio_1,
                    "ratio_n": ratio_n,
                    "load": os.getloadavg(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
