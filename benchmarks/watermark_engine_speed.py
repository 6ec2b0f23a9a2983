"""What marking costs in the engines: our engine and transformers' generate, plain vs marked.

One run, interleaved rounds (plain first in every round), median over ``--repeats``:

1. our own engine (``GenerationEngine.generate_batch``), batch ``--batch`` (16), ``--new``
   tokens per row, 4 accounts: plain sampling vs each scheme (T = 0.7);
2. transformers ``model.generate`` on the same model and prompts: plain sampling vs the
   ``WatermarkLogitsProcessor`` of each scheme (the processor samples, ``do_sample=False``).

Tokens/s and the slowdown vs plain in the same round (the median over rounds of each round's
ratio), both in wall-clock time and in this process's CPU time. The machine is shared (2
cores, often 10-40 runnable jobs): wall time then measures the neighbours as much as the code,
while CPU time (one torch thread) counts only the work done; the load average is printed
before and after; compare lines of one run only.
Run: ``.venv/bin/python benchmarks/watermark_engine_speed.py [--model DIR] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from distillguard.config import get_settings
from distillguard.models.engine import GenerationEngine, GenerationParams
from distillguard.models.llama import load_model
from distillguard.models.teacher import default_teacher_dir
from distillguard.watermark import build_scheme
from distillguard.watermark.engines import EngineMarker
from distillguard.watermark.engines.transformers import WatermarkLogitsProcessor

SECRET = b"benchmark-secret-0123456789abcdef"
SCHEMES = ("kgw", "gumbel", "synthid")
ACCOUNTS = ["acct_0", "acct_1", "acct_2", "acct_3"]
console = Console()


def prompts_for(engine: GenerationEngine, data: Path, count: int) -> list[list[int]]:
    out = []
    with (data / "prompts" / "honest.jsonl").open() as f:
        for line in f:
            ids = engine.encode_chat([{"role": "user", "content": json.loads(line)["prompt"]}])
            if 16 <= len(ids) <= 64:
                out.append(ids)
            if len(out) == count:
                break
    return out


def own_engine(
    model: Any, tok: Any, scheme: Any, prompts: list[list[int]], new: int
) -> tuple[float, float]:
    engine = GenerationEngine(
        model, tok, sampler=scheme, num_threads=1, max_batch_size=len(prompts)
    )
    params = [
        GenerationParams(
            max_new_tokens=new, temperature=0.7, seed=i, tag=ACCOUNTS[i % 4], ignore_eos=True
        )
        for i in range(len(prompts))
    ]
    t, c = time.perf_counter(), time.process_time()
    done = engine.generate_batch(prompts, params)
    n = sum(c.completion_tokens for c in done)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def hf_generate(
    model: Any, tok: Any, marker: Any, prompts: list[list[int]], new: int
) -> tuple[float, float]:
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (
        torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]
    ).long()
    kwargs: dict[str, Any] = dict(
        max_new_tokens=new, min_new_tokens=new, pad_token_id=tok.pad_token_id
    )
    if marker is None:
        kwargs.update(do_sample=True, temperature=0.7)
    else:
        accounts = [ACCOUNTS[i % 4] for i in range(len(prompts))]
        proc = WatermarkLogitsProcessor(
            marker, accounts=accounts, temperature=0.7, seeds=list(range(len(prompts)))
        )
        kwargs.update(do_sample=False, logits_processor=[proc])
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    n = (out.shape[1] - width) * len(prompts)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the teacher)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = get_settings()
    model_dir = args.model or default_teacher_dir(settings)
    model, tok = load_model(model_dir)
    vocab = model.get_input_embeddings().weight.shape[0]
    # fresh prompts every round (a server's cache sees new answers, not the same ones again)
    pool = prompts_for(
        GenerationEngine(model, tok, num_threads=1), settings.data_dir, args.batch * args.repeats
    )
    load_before = os.getloadavg()
    # one scheme per name for the whole run, as a gateway holds one for its life: its
    # generation cache warms up in the first round (the median is the steady state)
    schemes = {n: build_scheme(n, secret=SECRET, key_id=1, vocab_size=vocab) for n in SCHEMES}
    speeds: dict[str, list[tuple[float, float]]] = {}  # (wall, cpu) tokens/s per round
    with Progress(console=console) as bar:
        task = bar.add_task("rounds", total=args.repeats)
        for r in range(args.repeats):
            prompts = pool[r * args.batch : (r + 1) * args.batch]
            for name in ("plain", *SCHEMES):
                s = schemes.get(name)
                speeds.setdefault(f"own|{name}", []).append(
                    own_engine(model, tok, s, prompts, args.new)
                )
                m = None if name == "plain" else EngineMarker(s, secret=SECRET)
                speeds.setdefault(f"hf|{name}", []).append(
                    hf_generate(model, tok, m, prompts, args.new)
                )
            bar.advance(task)
    table = Table(
        "engine",
        "sampler",
        "tokens/s wall",
        "slowdown wall",
        "tokens/CPU-s",
        "slowdown CPU",
    )
    result: dict[str, dict[str, float]] = {}
    for engine in ("own", "hf"):
        base = speeds[f"{engine}|plain"]
        for name in ("plain", *SCHEMES):
            v = speeds[f"{engine}|{name}"]
            wall = statistics.median(x[0] for x in v)
            cpu = statistics.median(x[1] for x in v)
            # per-round ratio to plain, then the median: robust to the load changing
            sw = statistics.median(b[0] / x[0] - 1 for b, x in zip(base, v, strict=True))
            sc = statistics.median(b[1] / x[1] - 1 for b, x in zip(base, v, strict=True))
            result[f"{engine}|{name}"] = dict(wall=wall, cpu=cpu, slow_wall=sw, slow_cpu=sc)
            table.add_row(
                engine,
                name,
                f"{wall:,.0f}",
                "-" if name == "plain" else f"{sw:+.0%}",
                f"{cpu:,.0f}",
                "-" if name == "plain" else f"{sc:+.0%}",
            )
    console.print(f"model {model_dir}, batch {args.batch}, {args.new} new tokens, T=0.7")
    console.print(table)
    console.print(f"load before {load_before}, after {os.getloadavg()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rounds": args.repeats, "results": result, "model": str(model_dir)}, indent=1
            )
        )


if __name__ == "__main__":
    main()
