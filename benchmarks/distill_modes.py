"""Distillation figures: mode comparison at equal data, training throughput, harvest speed.

    .venv/bin/python benchmarks/distill_modes.py [--samples 256] [--steps 300]
        [--throughput-steps 20] [--curve 32,64,128,256] [--skip-gateway]

1. Data: the default teacher (``small``, cached under DISTILLGUARD_HOME) answers the first
   ``--samples`` alpaca_eval prompts (with top-20 logprobs); the last 64 prompts, never trained
   on, are held out (fresh teacher answers with another seed).
2. Table: a ``tiny`` student per mode (sft, logit-kd, topk-kd, gkd) trained for the same
   number of steps on the same prompts, plus a same-size *baseline trained without the
   teacher*: SFT on another model's answers (gpt4's from shared/data/outputs) to the same
   prompts, with the same tokenizer so agreement and KL stay comparable.
3. Throughput: tokens/s (non-padding sequence tokens) per mode for tiny and small students.
4. Harvest: requests/s and answer tokens/s through the real gateway (subprocess serving the
   teacher, watermark off, limits raised) at concurrency 1 and 8.
5. Learning curve (``--curve``): agreement/KL against harvested samples for sft and logit-kd,
   plotted to docs/img/distill_learning_curve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from distillguard.config import get_settings
from distillguard.distill.evaluate import (
    CurvePoint,
    EvalConfig,
    compare_on_rows,
    plot_curves,
)
from distillguard.distill.harvest import (
    HarvestConfig,
    HarvestRecord,
    LocalHarvestParams,
    Prompt,
    harvest,
    harvest_local,
    prompt_id,
)
from distillguard.distill.trainers import DistillConfig, train_student
from distillguard.models.engine import GenerationEngine
from distillguard.models.llama import load_model
from distillguard.models.teacher import default_teacher_dir

REPO = Path(__file__).resolve().parents[1]
MODES = ("sft", "logit-kd", "topk-kd", "gkd")
HELD_OUT = 64


def _load_prompts(data_dir: Path) -> tuple[list[str], dict[str, str]]:
    """alpaca_eval instructions (in file order) and gpt4's answer to each."""
    other = {}
    order = []
    for line in (data_dir / "outputs" / "gpt4.jsonl").read_text().splitlines():
        record = json.loads(line)
        order.append(record["instruction"])
        other[record["instruction"]] = record["output"]
    return order, other


def _teacher_answers(
    engine: GenerationEngine, prompts: list[str], seed: int
) -> list[HarvestRecord]:
    params = LocalHarvestParams(max_new_tokens=64, top_logprobs=20, seed=seed, batch_size=16)
    return harvest_local(engine, [Prompt(prompt_id(p), p) for p in prompts], params)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def mode_table(
    args: argparse.Namespace,
    teacher_dir: Path,
    rows: list[HarvestRecord],
    held: list[HarvestRecord],
    other: dict[str, str],
    scratch: Path,
) -> list[dict]:
    teacher, teacher_tok = load_model(teacher_dir)
    config = DistillConfig(max_steps=args.steps, batch_size=8, max_length=192, checkpoint_every=0)
    eval_config = EvalConfig(samples=HELD_OUT, max_length=192)
    results = []
    runs = [(mode, rows, mode) for mode in MODES]
    # Baseline without the teacher: the same prompts answered by another model (gpt4), cut to
    # the teacher's answer length in characters so the token budget is similar.
    cut = max(len(r.answer) for r in rows)
    baseline_rows = [replace(r, answer=other[r.prompt][:cut], logprobs=None) for r in rows]
    runs.append(("baseline (no teacher)", baseline_rows, "sft"))
    for label, data, mode in runs:
        out = scratch / label.split()[0]
        started = time.perf_counter()
        result = train_student(
            data,
            mode=mode,
            out_dir=out,
            teacher_dir=teacher_dir,
            student_tokenizer_dir=teacher_dir,
            student_size="tiny",
            config=config,
            progress=False,
        )
        wall = time.perf_counter() - started
        student, student_tok = load_model(out)
        report = compare_on_rows(
            student, student_tok, teacher, teacher_tok, held, student_dir=out, config=eval_config
        )
        results.append(
            {
                "run": label,
                "mode": mode,
                "agreement": report.top1_agreement,
                "kl": report.kl_teacher_student,
                "loss": report.held_out_loss,
                "tokens_per_s": result.tokens_per_second,
                "wall_s": wall,
                "positions": report.positions,
                "load": _loadavg(),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def throughput(
    args: argparse.Namespace, teacher_dir: Path, rows: list[HarvestRecord], scratch: Path
) -> list[dict]:
    figures = []
    for size in ("tiny", "small"):
        for mode in MODES:
            config = DistillConfig(
                max_steps=args.throughput_steps, batch_size=8, max_length=192, checkpoint_every=0
            )
            result = train_student(
                rows,
                mode=mode,
                out_dir=scratch / f"tp-{size}-{mode}",
                teacher_dir=teacher_dir,
                student_tokenizer_dir=teacher_dir,
                student_size=size,
                config=config,
                progress=False,
            )
            figures.append(
                {
                    "size": size,
                    "mode": mode,
                    "params": result.parameters,
                    "tokens_per_s": result.tokens_per_second,
                    "load": _loadavg(),
                }
            )
            print(json.dumps(figures[-1]), flush=True)
    return figures


def harvest_speed(teacher_dir: Path, prompts: list[str], scratch: Path) -> list[dict]:
    from distillguard.gateway.process import GatewayProcess

    server = GatewayProcess(
        home=scratch / "gateway",
        admin_token=secrets.token_urlsafe(16),
        model_dir=teacher_dir,
        env={"DISTILLGUARD_DEFAULT_RPM": "1000000", "DISTILLGUARD_DEFAULT_TPM": "100000000"},
    ).start()
    figures = []
    try:
        for concurrency in (1, 8):
            _, _, secret = server.create_key(rpm=1_000_000, tpm=100_000_000)
            items = [Prompt(prompt_id(f"{concurrency}:{p}"), p) for p in prompts]
            config = HarvestConfig(
                base_url=server.api_url,
                api_key=secret,
                concurrency=concurrency,
                max_tokens=64,
                top_logprobs=5,
            )
            result = harvest(items, scratch / f"harvest-c{concurrency}.jsonl", config)
            figures.append(
                {
                    "concurrency": concurrency,
                    "requests": result.written,
                    "requests_per_s": result.written / result.seconds,
                    "answer_tokens_per_s": result.completion_tokens / result.seconds,
                    "retries": result.retries,
                    "failed": result.failed,
                    "load": _loadavg(),
                }
            )
            print(json.dumps(figures[-1]), flush=True)
    finally:
        server.stop()
    return figures


def curves(
    args: argparse.Namespace,
    teacher_dir: Path,
    rows: list[HarvestRecord],
    held: list[HarvestRecord],
    scratch: Path,
) -> dict[str, list[CurvePoint]]:
    teacher, teacher_tok = load_model(teacher_dir)
    counts = [int(n) for n in args.curve.split(",") if n.strip()]
    config = DistillConfig(max_steps=args.steps, batch_size=8, max_length=192, checkpoint_every=0)
    found: dict[str, list[CurvePoint]] = {}
    for mode in ("sft", "logit-kd"):
        for n in counts:
            out = scratch / f"curve-{mode}-{n}"
            train_student(
                rows[:n],
                mode=mode,
                out_dir=out,
                teacher_dir=teacher_dir,
                student_tokenizer_dir=teacher_dir,
                config=config,
                progress=False,
            )
            student, student_tok = load_model(out)
            report = compare_on_rows(
                student,
                student_tok,
                teacher,
                teacher_tok,
                held,
                student_dir=out,
                config=EvalConfig(samples=HELD_OUT, max_length=192),
            )
            point = CurvePoint(
                n, report.top1_agreement, report.kl_teacher_student, report.held_out_loss
            )
            found.setdefault(mode, []).append(point)
            print(json.dumps({"curve": mode, **point.__dict__}), flush=True)
    plot_curves(found, REPO / "docs" / "img" / "distill_learning_curve.png")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--throughput-steps", type=int, default=20)
    parser.add_argument("--curve", default="32,64,128,256")
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = get_settings()
    print(f"load before: {_loadavg()}", flush=True)
    teacher_dir = default_teacher_dir(settings, size="small", progress=False)
    prompts, other = _load_prompts(
        settings.data_dir or Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    train_prompts, held_prompts = prompts[: args.samples], prompts[-HELD_OUT:]
    engine = GenerationEngine.from_dir(teacher_dir, num_threads=1)
    started = time.perf_counter()
    rows = _teacher_answers(engine, train_prompts, seed=0)
    held = _teacher_answers(engine, held_prompts, seed=1)
    print(
        f"teacher answered {len(rows) + len(held)} prompts in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="dg-bench-distill-") as tmp:
        scratch = Path(tmp)
        summary: dict = {}
        if not args.skip_table:
            summary["table"] = mode_table(args, teacher_dir, rows, held, other, scratch)
        if not args.skip_throughput:
            summary["throughput"] = throughput(args, teacher_dir, rows, scratch)
        if not args.skip_gateway:
            summary["harvest"] = harvest_speed(teacher_dir, train_prompts[:48], scratch)
        if args.curve:
            summary["curve"] = {
                k: [p.__dict__ for p in v]
                for k, v in curves(args, teacher_dir, rows, held, scratch).items()
            }
    print(f"load after: {_loadavg()}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
