"""The trade-off: what a defence costs honest users against what it takes from a student.

For one defence: the teacher answers problems the way the gateway would serve them under the
action (``serve``), honest users' accuracy is graded on what they are served, an attacker
harvests the same way on its own problems, and a student is distilled from that harvest with
the project's own trainers (``distill.trainers.train_student``, sft and topk-kd) and graded
on held-out problems. ``gain_lost`` turns three accuracies into the headline figure:

    gain_lost = 1 - (acc_defended - acc_base) / (acc_undefended - acc_base)

1.0: the defence took everything the teacher gave; 0.0: nothing; negative: the defended
harvest taught more. The defences are prevent-serve's pure functions (``defences``,
``perturb``, ``antidistill``), applied here to the engine's output directly (no HTTP): the
gateway applies the same functions on its hot path.

Adaptive attackers know the defence: ``repair_steps`` rebuilds perturbed step results from
the chain (each step's left operand is the previous true result, the final line the last),
``vote`` asks ``n`` samples and keeps one whose final answer is the majority's.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from distillguard.errors import ConfigError, InputError
from distillguard.prevent.task import (
    STEP_RE,
    Problem,
    Style,
    TaskConfig,
    generate,
    majority_final,
    parse_final,
    prompt_for,
    split_answer,
)

DefenceName = Literal[
    "none", "drop", "summary", "cap_logprobs", "perturb", "perturb_result", "antidistill"
]
# perturb: the carry mode (self-consistent chains, the default the gateway serves);
# perturb_result: the first design (results only), kept to show what a repair undoes.
DEFENCES: tuple[str, ...] = (
    "none",
    "drop",
    "summary",
    "cap_logprobs",
    "perturb",
    "perturb_result",
    "antidistill",
)
SERVES_LOGPROBS = {"none", "cap_logprobs"}  # the others serve text only (prevent-interface)
PERTURB_SECRET = b"distillguard-benchmark-perturb-secret"
BASE_STUDENT_NAME = "student-arith-base"  # the attacker's base model, under {home}/models


@dataclass(frozen=True)
class Defence:
    name: str  # one of DEFENCES
    top_logprobs: int = 5  # none: what the attacker asks; cap_logprobs: the cap (0..20)
    lam: float = 0.0  # antidistill lambda (>= 0)
    adaptive: str = ""  # "", "repair" (perturb), "vote" (n samples + majority), "strip"
    samples: int = 3  # vote: samples per prompt
    label: str = ""  # how tables and plots name it (default: derived)

    def __post_init__(self) -> None:
        if self.name not in DEFENCES:
            raise ConfigError(f"unknown defence {self.name!r}; choose one of {DEFENCES}")
        if not 0 <= self.top_logprobs <= 20:
            raise ConfigError("top_logprobs must be in [0, 20] (the API's maximum)")
        if self.lam < 0:
            raise ConfigError(f"antidistill lambda must be >= 0, not {self.lam}")
        if self.adaptive not in ("", "repair", "vote", "strip"):
            raise ConfigError(f"unknown adaptive attacker {self.adaptive!r}")
        if self.samples < 1:
            raise ConfigError("samples must be >= 1")

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        base = {
            "cap_logprobs": f"cap_logprobs k={self.top_logprobs}",
            "antidistill": f"antidistill lambda={self.lam:g}",
        }.get(self.name, self.name)
        return f"{base} + adaptive {self.adaptive}" if self.adaptive else base


def gain_lost(acc_defended: float, acc_undefended: float, acc_base: float) -> float:
    """Share of the student's gain over the no-teacher baseline that the defence removed.
    InputError when the undefended student gained nothing (the ratio is undefined)."""
    gain = acc_undefended - acc_base
    if gain <= 0:
        raise InputError(
            f"the undefended student ({acc_undefended:.3f}) did not beat the baseline "
            f"({acc_base:.3f}): gain lost is undefined"
        )
    return 1.0 - (acc_defended - acc_base) / gain


# --- adaptive attackers (pure) -------------------------------------------------------------
def repair_steps(text: str) -> str:
    """Undo any perturbation of step results that keeps operands and the final line: a
    step's true result is the next step's left operand, the last step's is the final answer.
    Steps already consistent are unchanged."""
    parts = split_answer(text)
    final = parse_final(text)
    lines = parts.reasoning.split("\n") if parts.reasoning else []
    steps = [STEP_RE.fullmatch(line.strip()) for line in lines]
    out = []
    for i, (line, match) in enumerate(zip(lines, steps, strict=True)):
        if match is None:
            out.append(line)
            continue
        later = next((m for m in steps[i + 1 :] if m is not None), None)
        true = int(later[1]) if later is not None else final
        out.append(line if true is None else f"{match[1]}{match[2]}{match[3]}={true}")
    tail = [x for x in (parts.summary, parts.final) if x]
    return "\n".join(out + tail)


def vote(texts: Sequence[str]) -> str:
    """Of several sampled answers, the first whose final answer is the majority's."""
    winner = majority_final(list(texts))
    return next((t for t in texts if parse_final(t) == winner), texts[0] if texts else "")


# --- serving under a defence (engine + the defences' pure functions) ----------------------
@dataclass
class Served:
    texts: list[str]  # what the client received
    logprobs: list[list[dict[str, Any]] | None]  # per-token entries when served, else None
    finish_reasons: list[str] = field(default_factory=list)


def draft_key(defence: Defence) -> tuple[Style, bool, float, int]:
    """What the raw generation depends on: defences with one key share one generation."""
    style: Style = "summary" if defence.name == "summary" else "reasoning"
    lam = defence.lam if defence.name == "antidistill" else 0.0
    rounds = defence.samples if defence.adaptive == "vote" else 1
    return style, defence.name in SERVES_LOGPROBS, lam, rounds


def generate_drafts(
    engine: Any,
    problems: Sequence[Problem],
    defence: Defence,
    *,
    hook: Any = None,
    seed: int = 0,
    max_new_tokens: int = 80,
    tag: str | None = None,
) -> list[list[Any]]:
    """The teacher's raw completions (before the defence's text and logprob functions), one
    list of ``rounds`` completions per problem: greedy, or temperature 1 for a vote. Logprobs
    (top 20) are kept where the defence may serve them; the cap is applied afterwards."""
    from distillguard.models.engine import GenerationParams

    style, want_lp, lam, rounds = draft_key(defence)
    if lam > 0 and hook is None:
        raise ConfigError("the antidistill defence needs its logits hook")
    temperature = 1.0 if rounds > 1 else 0.0  # votes need distinct samples
    prompts = [
        engine.encode_chat([{"role": "user", "content": prompt_for(p, style)}]) for p in problems
    ]
    drafts: list[list[Any]] = [[] for _ in problems]
    for r in range(rounds):
        params = [
            GenerationParams(
                max_new_tokens=max(1, min(max_new_tokens, engine.context_length - len(ids))),
                temperature=temperature,
                seed=None if temperature == 0 else seed + 7919 * r + i,
                logprobs=want_lp,
                top_logprobs=20 if want_lp else 0,
                logits_hook=hook if lam > 0 else None,
                tag=tag,  # the account: a watermarking sampler keys its mark on it
            )
            for i, ids in enumerate(prompts)
        ]
        for i, c in enumerate(engine.generate_batch(prompts, params)):
            drafts[i].append(c)
    return drafts


def apply_defence(
    engine: Any, drafts: Sequence[Sequence[Any]], defence: Defence, *, account: str
) -> Served:
    """What the account receives: the defence's functions (prevent-serve's ``withhold``,
    ``perturb_steps``, the logprob cap) over the drafts, then the adaptive attacker's
    post-processing when ``defence.adaptive`` says so."""
    from distillguard.distill.harvest import _local_logprobs
    from distillguard.prevent.defences import withhold
    from distillguard.prevent.perturb import PerturbConfig, account_key, perturb_steps

    key = account_key(PERTURB_SECRET, account)
    want_lp = defence.name in SERVES_LOGPROBS
    texts, logprobs, reasons = [], [], []
    for completions in drafts:
        chosen = completions[0]
        if defence.adaptive == "vote":
            candidates = [c.text for c in completions]
            chosen = completions[candidates.index(vote(candidates))]
        text = chosen.text
        if defence.name in ("drop", "summary"):
            text = withhold(text, "summary" if defence.name == "summary" else "drop")
        elif defence.name in ("perturb", "perturb_result"):
            mode = "carry" if defence.name == "perturb" else "result"
            text = perturb_steps(text, key, PerturbConfig(mode=mode)).text
        if defence.adaptive == "repair":
            text = repair_steps(text)
        elif defence.adaptive == "strip":
            text = split_answer(text).final or ""
        lp = _local_logprobs(engine, chosen) if want_lp else None
        if lp is not None:
            for entry in lp:  # the cap: at most top_logprobs alternatives per token
                entry["top_logprobs"] = entry["top_logprobs"][: defence.top_logprobs]
        texts.append(text)
        logprobs.append(lp)
        reasons.append(chosen.finish_reason)
    return Served(texts=texts, logprobs=logprobs, finish_reasons=reasons)


def serve(
    engine: Any,
    problems: Sequence[Problem],
    defence: Defence,
    *,
    hook: Any = None,
    account: str = "attacker",
    seed: int = 0,
) -> Served:
    """The teacher's answers to ``problems`` as an account under ``defence`` receives them.
    ``hook``: the antidistill logits hook (required for that defence)."""
    drafts = generate_drafts(engine, problems, defence, hook=hook, seed=seed)
    return apply_defence(engine, drafts, defence, account=account)


def served_accuracy(problems: Sequence[Problem], served: Served) -> float:
    """Share of served answers whose final answer is right (what an honest user gets)."""
    if not problems:
        raise InputError("no problems to grade")
    return sum(parse_final(t) == p.answer for p, t in zip(problems, served.texts, strict=True)) / (
        len(problems)
    )


def harvest_rows(problems: Sequence[Problem], served: Served) -> list[dict[str, Any]]:
    """The attacker's dataset: one record per served answer (the distill room's format)."""
    return [
        {
            "id": f"p{i}",
            "prompt": prompt_for(p),
            "answer": text,
            "finish_reason": reason,
            "logprobs": lp,
        }
        for i, (p, text, lp, reason) in enumerate(
            zip(problems, served.texts, served.logprobs, served.finish_reasons, strict=True)
        )
        if text.strip()
    ]


# --- students ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentSpec:
    """The attacker's student: a small base model that already knows single arithmetic facts
    (a real attacker distils into a pre-trained model, not a random one) and has never seen
    the task's chains; distillation must teach it to turn a problem into steps."""

    hidden: int = 64  # smaller than the teacher (96): 0.16M parameters, ~0.1 CPU s a step
    layers: int = 3  # one more than `tiny`: a step line reads two operands and the carry
    heads: int = 4  # 16-dim heads
    ffn: int = 192  # SwiGLU width
    # Steps on plain fact lines ("17+8=25"): its general knowledge (600 steps, ~1 CPU
    # minute: 70 % of held-out facts right, measured).
    pretrain_steps: int = 600
    pretrain_facts: int = 8  # fact lines per pre-training document
    steps: int = 300  # distillation steps per student: the same for every defence and N
    batch_size: int = 32  # (prompt, answer) pairs per step
    lr: float = 3e-3  # tiny students need high rates
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.hidden, self.layers, self.heads, self.ffn) < 1 or self.hidden % self.heads:
            raise ConfigError("hidden, layers, heads, ffn must be positive; heads divide hidden")
        if self.pretrain_steps < 0 or self.pretrain_facts < 1:
            raise ConfigError("pretrain_steps >= 0 and pretrain_facts >= 1 required")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("steps >= 1, batch_size >= 1 and lr > 0 required")


def fact_documents(n: int, facts: int, *, seed: int, task: TaskConfig = TaskConfig()) -> list[str]:
    """Pre-training text: ``n`` documents of ``facts`` unrelated true equations each, over
    the task's value range (left operand in [0, max_value], the task's operands and
    multipliers, any non-negative result). Knowledge of arithmetic, nothing of the chains."""
    rng = random.Random(f"facts:{seed}")
    docs = []
    for _ in range(n):
        lines: list[str] = []
        while len(lines) < facts:
            a, op = rng.randint(0, task.max_value), rng.choice("+-*")
            b = rng.choice(task.multipliers) if op == "*" else rng.randint(1, task.max_operand)
            c = a + b if op == "+" else a - b if op == "-" else a * b
            if c >= 0:
                lines.append(f"{a}{op}{b}={c}")
        docs.append("\n".join(lines))
    return docs


def pretrain_student(
    tokenizer: Any, spec: StudentSpec, out_dir: Path, *, vocab_size: int, task: TaskConfig
) -> Path:
    """Build the attacker's base student (fresh init, ``spec.pretrain_steps`` of language
    modelling on :func:`fact_documents`) and save it at ``out_dir`` (a HF model directory);
    returns ``out_dir``. One thread, ~1 CPU minute at the defaults."""
    import torch
    import torch.nn.functional as F

    from distillguard.models.llama import ModelSize, new_model, save_model_dir

    torch.set_num_threads(1)
    size = ModelSize(
        hidden=spec.hidden,
        layers=spec.layers,
        heads=spec.heads,
        ffn=spec.ffn,
        vocab_size=vocab_size,
        context_length=256,
    )
    model = new_model(size, tokenizer, seed=spec.seed)
    docs = fact_documents(
        spec.pretrain_steps * spec.batch_size, spec.pretrain_facts, seed=spec.seed, task=task
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    pad = int(tokenizer.pad_token_id)
    for step in range(spec.pretrain_steps):
        chunk = docs[step * spec.batch_size : (step + 1) * spec.batch_size]
        ids = [tokenizer.encode(d, add_special_tokens=False) for d in chunk]
        width = max(len(x) for x in ids)
        batch = torch.full((len(ids), width), pad, dtype=torch.long)  # (B, T)
        for row, x in enumerate(ids):
            batch[row, : len(x)] = torch.tensor(x)
        mask = batch != pad  # (B, T)
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * min(1.0, (step + 1) / 20)
        logits = model(input_ids=batch, attention_mask=mask.long()).logits  # (B, T, V)
        keep = mask[:, 1:]  # (B, T-1)
        loss = F.cross_entropy(logits[:, :-1][keep], batch[:, 1:][keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :] if losses else [float("nan")]
    info = {
        "size": "arith-student-base",
        "spec": asdict(spec),
        "pretrain_loss": sum(tail) / len(tail),
    }
    save_model_dir(model, tokenizer, Path(out_dir), info)
    return Path(out_dir)


def base_student_dir(settings: Any, teacher_dir: Path, spec: StudentSpec = StudentSpec()) -> Path:
    """The attacker's cached base student (``{home}/models/student-arith-base``), pre-trained
    with the teacher's tokenizer on first use behind the models room's file lock."""
    from distillguard.models.llama import load_model
    from distillguard.models.teacher import _FileLock

    target = Path(settings.home) / "models" / BASE_STUDENT_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(target.with_name(f".{target.name}.lock")):
        if not (target / "config.json").is_file():
            teacher, tokenizer = load_model(Path(teacher_dir))
            vocab = int(teacher.get_output_embeddings().weight.shape[0])
            pretrain_student(tokenizer, spec, target, vocab_size=vocab, task=TaskConfig())
    return target


def distill_and_grade(
    rows: Sequence[dict[str, Any]],
    mode: str,
    base_dir: Path,
    held_out: Sequence[Problem],
    spec: StudentSpec = StudentSpec(),
) -> float:
    """Distil the base student at ``base_dir`` (a copy: it is never changed) on ``rows`` with
    ``mode`` (sft | topk-kd, the distill room's own trainers) and return its greedy accuracy
    on ``held_out``."""
    from distillguard.distill.data import load_rows
    from distillguard.distill.kd import train_topk_kd
    from distillguard.distill.loop import DistillConfig
    from distillguard.distill.sft import train_sft
    from distillguard.models.engine import GenerationEngine
    from distillguard.models.llama import load_model
    from distillguard.prevent.teacher import grade

    if mode not in ("sft", "topk-kd"):
        raise InputError(f"mode must be sft or topk-kd, not {mode!r}")
    records = [r for r in load_rows(list(rows)) if r.answer.strip()]
    if len(records) < 2:
        raise InputError(f"need at least 2 non-empty harvested answers, got {len(records)}")
    config = DistillConfig(
        max_steps=spec.steps,
        batch_size=spec.batch_size,
        lr=spec.lr,
        checkpoint_every=0,
        seed=spec.seed,
        max_length=128,
        warmup_steps=max(1, spec.steps // 20),
        topk=5,
    )
    student, tokenizer = load_model(Path(base_dir))
    with tempfile.TemporaryDirectory(prefix="dg-prevent-student-") as tmp:
        train = train_sft if mode == "sft" else train_topk_kd
        train(
            student,
            tokenizer,
            records,
            config=config,
            out_dir=Path(tmp),
            resume=False,
            progress=False,
        )
    student.eval()
    engine = GenerationEngine(student, tokenizer, num_threads=1, max_batch_size=32)
    return grade(engine, held_out, "reasoning").accuracy


def base_accuracy(base_dir: Path, held_out: Sequence[Problem]) -> float:
    """The no-teacher baseline: the attacker's base student, asked the held-out problems."""
    from distillguard.models.engine import GenerationEngine
    from distillguard.prevent.teacher import grade

    engine = GenerationEngine.from_dir(Path(base_dir), num_threads=1, max_batch_size=32)
    return grade(engine, held_out, "reasoning").accuracy


def antidistill_hook(engine: Any, held_out_texts: Sequence[str], lam: float) -> Any:
    """prevent-serve's antidistillation hook for ``engine``'s teacher: a one-block proxy
    student cut from it, its loss gradient taken on held-out task text."""
    from distillguard.prevent.antidistill import (
        AntidistillConfig,
        AntidistillHook,
        build_proxy_pair,
        truncated_proxy,
    )

    config = AntidistillConfig(lam=lam)
    ids = [engine.encode_text(t) for t in held_out_texts]
    pair = build_proxy_pair(truncated_proxy(engine.model, layers=1), ids, config.epsilon)
    return AntidistillHook(pair, config)


# --- the demo's act ------------------------------------------------------------------------
@dataclass(frozen=True)
class CampaignContrast:
    defence: str  # what the caught campaign was served under
    uncaught_student: float  # held-out accuracy of the student of the uncaught campaign
    caught_student: float  # ... of the caught campaign (same problems, same training)
    honest_caught: float  # what an honest user gets under the same defence
    honest_uncaught: float

    @property
    def learned_less(self) -> bool:
        return self.caught_student < self.uncaught_student


def caught_vs_uncaught(
    teacher_dir: Path,
    base_dir: Path,
    *,
    defence: Defence = Defence("perturb"),
    harvest: int = 1000,  # 1000 answers x 500 steps: 32 % vs 2 % measured (oracle teacher)
    held_out: int = 60,
    steps: int = 500,  # 150 steps: students stay at the floor (3 %), no contrast to show
    seed: int = 0,
) -> CampaignContrast:
    """Two campaigns harvest the same problems; the caught one is served under ``defence``.
    Each distils the attacker's base student (``base_student_dir``) with sft and the same
    budget; both are graded on held-out problems (the demo's act; ~2 CPU minutes a
    student at the defaults)."""
    from distillguard.models.engine import GenerationEngine

    if harvest < 2 or held_out < 1 or steps < 1:
        raise InputError("harvest >= 2, held_out >= 1 and steps >= 1 required")
    engine = GenerationEngine.from_dir(Path(teacher_dir), num_threads=1, max_batch_size=32)
    attack = generate(harvest, split="train", seed=seed + 1)
    held = generate(held_out, split="held_out", seed=seed + 1)
    spec = StudentSpec(steps=steps, seed=seed)
    out = {}
    for name, d in (("uncaught", Defence("none")), ("caught", defence)):
        served = serve(engine, attack, d, account=name, seed=seed)
        honest = serve(engine, held, d, account="honest", seed=seed)
        acc = distill_and_grade(harvest_rows(attack, served), "sft", Path(base_dir), held, spec)
        out[name] = (acc, served_accuracy(held, honest))
    return CampaignContrast(
        defence=defence.title,
        uncaught_student=out["uncaught"][0],
        caught_student=out["caught"][0],
        honest_caught=out["caught"][1],
        honest_uncaught=out["uncaught"][1],
    )
