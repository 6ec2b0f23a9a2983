"""Real prompt sets for the simulator, split train/test, and the template banks personas use.

People's requests come from ``prompts/honest.jsonl`` (alpaca_eval + self-instruct seeds),
campaign payloads from ``prompts/campaign.jsonl`` (GSM8K questions and T0 templated prompts),
and answers from ``gsm8k/*.jsonl`` and ``outputs/*.jsonl`` (real model outputs). Every prompt
and every template wording belongs to exactly one split (by a stable hash), so a detector tuned
on ``train`` traffic is reported on ``test`` traffic it has never seen a prompt or frame of.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from distillguard.errors import InputError, NotFound
from distillguard.traffic import read_objects

SPLITS = ("train", "test")
# Share of every prompt set that goes to the train split (the rest is held out).
TRAIN_FRACTION = 0.7


def split_of(text: str) -> str:
    """Stable split of a string: the same prompt is in the same split on every machine."""
    return "train" if (zlib.crc32(text.encode()) % 1000) < TRAIN_FRACTION * 1000 else "test"


# --------------------------------------------------------------------------------------------
# Template banks. Each entry is assigned to a split by ``split_of`` on its wording, so the
# held-out traffic uses frames that tuning never saw. ``{x}`` is the variable content.
# --------------------------------------------------------------------------------------------

# Chain-of-thought harvesting frames a campaign wraps GSM8K questions in.
COT_FRAMES = (
    "Solve the following math problem step by step. Show all of your reasoning before the "
    "final answer.\n\nProblem: {x}",
    "Question: {x}\nLet's think step by step.",
    "{x}\n\nExplain your reasoning in detail, then give the final answer after '####'.",
    "You are an expert math tutor. Work through this problem showing every intermediate step "
    "and calculation.\n\n{x}",
    "Problem:\n{x}\n\nThink carefully and reason step-by-step. Show your work.",
    "Provide a detailed chain of thought for the following question, then the answer.\n{x}",
    "Answer the question below. First write out your full reasoning, step by step.\n\nQ: {x}\nA:",
    "{x}\nPlease break the solution into numbered steps and explain each one.",
    "Below is a grade-school math word problem. Reason through it step by step and state the "
    "final numeric answer.\n\n### Problem\n{x}\n\n### Solution",
    "Carefully solve this. Show your work and explain why each step follows.\n\n{x}",
)

# System prompts that harvesting scripts attach to the T0 payloads.
HARVEST_SYSTEMS = (
    "You are a helpful assistant. Answer thoroughly and completely.",
    "Give a complete, detailed and well-structured answer.",
    "Respond with a comprehensive answer. Do not omit details.",
    "You are a knowledgeable assistant. Answer as fully as possible.",
)

# Pieces a paraphrasing campaign recombines per request to dodge exact template matching.
PARAPHRASE_OPENERS = (
    "",
    "",
    "Hi!",
    "Hello,",
    "Quick question.",
    "Can you help me with this?",
    "Please help:",
    "I'm stuck on this one.",
    "Homework help:",
    "Hey there.",
    "Need a hand here.",
    "Here's a problem:",
    "Got a question for you.",
    "Help me out?",
)
PARAPHRASE_ASKS = (
    "Work through this problem carefully",
    "Figure out the answer, showing each step",
    "Walk me through solving this",
    "Solve this and explain how you got there",
    "Can you solve it and show the working",
    "Go through it one step at a time",
    "Explain the solution in detail",
    "Reason it out and give me the final number",
    "Show me how to get the answer",
    "Break it down for me step by step",
    "Talk me through the math",
    "Lay out your reasoning and then answer",
    "Please show all calculations",
    "Explain every step of the solution",
    "Detail the steps you take to solve it",
    "How would you solve this? Show the steps",
)

# Legitimate applications: a support bot (system prompt + customer message) ...
SUPPORT_SYSTEMS = (
    "You are the friendly support assistant of {company}, an online {product} store. Answer "
    "the customer's message politely and concisely. If you cannot help, offer a human agent.",
    "You are {company}'s virtual help desk for {product}. Be warm, brief and accurate. Never "
    "promise refunds; point to the returns page instead.",
    "Act as a customer care agent for {company} ({product}). Keep replies under 120 words and "
    "end with a question asking whether anything else is needed.",
    "You answer chat messages for {company}, which sells {product}. Use a cheerful tone and "
    "plain language.",
    "System: support assistant for {company} ({product}). Follow the company's tone guide: "
    "friendly, direct, no jargon.",
    "You are Max, the {company} assistant. Customers ask about {product}, orders and anything "
    "else on their mind; help them kindly.",
)
SUPPORT_USER = ("Customer: {x}", "{x}", "Message from customer:\n{x}", "[chat] {x}")

# ... and a summarization pipeline over user-written documents.
SUMMARY_FRAMES = (
    "Summarize the following customer ticket in two sentences for the {team} team:\n\n{x}",
    "TL;DR this support conversation for the {team} dashboard (max 40 words).\n---\n{x}\n---",
    "Extract the main request and the sentiment from this message. Reply as 'request: ..., "
    "sentiment: ...'.\n\nMessage: {x}",
    "Write a one-line summary of the user feedback below for the weekly {team} report.\n\n{x}",
    "Classify and summarize this inbound email for {team}.\nEmail:\n{x}\nSummary:",
    "Condense the text below into three short bullet points for {team}.\n\nText: {x}",
)
COMPANIES = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella Outfitters",
    "Hooli",
    "Vandelay",
    "Stark Goods",
    "Wonka",
    "Cyberdyne Books",
    "Soylent Kitchen",
    "Tyrell Garden",
    "Oscorp Pets",
)
PRODUCTS = ("electronics", "furniture", "book", "garden", "pet supply", "kitchenware", "fashion")
TEAMS = ("billing", "product", "success", "quality", "operations", "support")

# Honest developers' own small templates (power users reuse a few frames now and then).
POWER_FRAMES = (
    "Rewrite this in a more formal tone: {x}",
    "Translate to French: {x}",
    "Give me three short bullet points about: {x}",
    "Explain like I'm five: {x}",
    "What are the pros and cons? {x}",
    "Make this shorter: {x}",
    "Answer briefly. {x}",
    "Proofread and improve: {x}",
)
HONEST_STEP_SUFFIX = " Explain step by step."


def frames_for(frames: tuple[str, ...], split: str) -> tuple[str, ...]:
    """The frames of one split; never empty (a bank too small to split keeps all in both)."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    own = tuple(f for f in frames if split_of(f) == split)
    return own or frames


# --------------------------------------------------------------------------------------------
# Prompt sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSets:
    """The prompts of one split and the answers the simulated API returns for them."""

    split: str
    honest: tuple[str, ...]  # people's requests
    gsm8k: tuple[str, ...]  # GSM8K questions (campaign payloads)
    t0: tuple[str, ...]  # T0 templated prompts (campaign payloads)
    answers: dict[str, str]  # prompt -> a real answer (GSM8K solution or a model's output)
    fallback_answers: tuple[str, ...]  # answers for prompts without their own


def _read_jsonl(path: Path) -> list[dict]:
    """The objects of a shipped data file, which must be clean (a bad line is an InputError)."""
    if not path.exists():
        raise NotFound(f"data file missing: {path} (the real prompt sets live in shared/data)")
    reader = read_objects(path)
    rows = list(reader)
    reader.summary().raise_if_skipped()
    return rows


def load_prompt_sets(data_dir: Path, split: str) -> PromptSets:
    """Load ``split`` of the real prompt sets under ``data_dir`` (``shared/data``)."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    honest_all = [r["prompt"] for r in _read_jsonl(data_dir / "prompts" / "honest.jsonl")]
    campaign_rows = _read_jsonl(data_dir / "prompts" / "campaign.jsonl")
    gsm_rows = _read_jsonl(data_dir / "gsm8k" / "train.jsonl")
    test_path = data_dir / "gsm8k" / "test.jsonl"
    if test_path.exists():
        gsm_rows += _read_jsonl(test_path)
    answers = {r["question"]: r["answer"] for r in gsm_rows}
    outputs_path = data_dir / "outputs" / "gpt4_1106_preview.jsonl"
    fallback: list[str] = []
    if outputs_path.exists():
        for r in _read_jsonl(outputs_path):
            answers.setdefault(r["instruction"], r["output"])
            fallback.append(r["output"])
    if not fallback:
        fallback = [a for a in list(answers.values())[:500]] or ["OK."]

    gsm = {r["prompt"] for r in campaign_rows if r["source"].startswith("gsm8k")}
    gsm.update(r["question"] for r in gsm_rows)
    t0 = [r["prompt"] for r in campaign_rows if r["source"].startswith("t0")]
    sets = PromptSets(
        split=split,
        honest=tuple(p for p in honest_all if split_of(p) == split),
        gsm8k=tuple(sorted(q for q in gsm if split_of(q) == split)),
        t0=tuple(p for p in t0 if split_of(p) == split),
        answers=answers,
        fallback_answers=tuple(fallback),
    )
    if not sets.honest or not sets.gsm8k or not sets.t0:
        raise InputError(f"prompt sets under {data_dir} give an empty {split} split")
    return sets
