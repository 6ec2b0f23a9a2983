"""Watermark-free teacher attribution: which candidate's answers did a suspect learn from?

Input: the suspect's answers and each candidate teacher's answers to the same prompts.

Every model answers the same prompt, so topical similarity is shared by all candidates, and
some candidates (verbose, "central" chat models) are close to everyone. Both effects must be
removed, or every candidate looks significant. The statistic therefore works on a per-prompt
similarity matrix between all answers to that prompt (suspect + candidates), **double-centred**
per prompt (the exact least-squares fit of an additive per-model effect is removed). What is
left for a pair (a, b) is how much closer a and b are to each other than their general
closeness to everyone predicts: the "relational effect". Averaged over prompts it is
the effect size ``E(suspect, c)``.

Two tests per candidate, both reported:
- **model-level** (the decision): ``E(suspect, c)`` against the effects of the pairs *among the
  other candidates* (c excluded, so c's own other students cannot inflate the null). Those
  pairs show how close unrelated models of this pool come naturally; the p-value is a
  predictive t-test of one new draw from that population (``(E - mean) / (sd * sqrt(1 + 1/n))``
  on ``n - 1`` degrees of freedom), Holm-corrected across candidates. This is what keeps a
  naturally similar but unrelated model from being "significant" on 800 prompts.
- **prompt-level** (exact Monte-Carlo permutation, +1 correction): under exchangeability of
  the candidate labels within each prompt, how often does a random candidate per prompt give a
  mean effect as large. It answers "closer than the others on these prompts" and is required
  too, but alone it would flag any systematic style resemblance.

A candidate is attributed when both its Holm-corrected model-level p and its prompt-level p
are below ``alpha``; nothing attributed means "none of these".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from distillguard.errors import InputError
from distillguard.traffic import JsonlReader
from distillguard.watermark.stats import holm


@dataclass
class AttributionConfig:
    # Character n-grams inside word boundaries catch spelling/punctuation/formatting habits.
    char_ngrams: tuple[int, int] = (2, 4)
    # Word n-grams (punctuation kept as tokens, case kept) catch phrase habits ("Sure! Here").
    word_ngrams: tuple[int, int] = (1, 3)
    # Weight of the character-n-gram cosine against the word-n-gram cosine. Tuned on the even
    # prompts of the real alpaca_eval outputs (benchmarks/attribution.py, maximin z of the
    # documented pairs): word n-grams alone (0.0) keep the weaker claude-2 pair at z 2.7
    # where characters alone give 1.6 (they favour the strong alpaca pair instead).
    char_weight: float = 0.0
    # Fewer aligned prompts than this gives effect sizes too noisy to be worth a p-value.
    min_matched_prompts: int = 50
    # The model-level null needs pairs among the other candidates: 4 others give 6 pairs.
    min_candidates: int = 5
    # Family-wise error level across candidates (Holm).
    alpha: float = 0.05
    # Monte-Carlo permutations of the prompt-level test (p >= 1 / (permutations + 1)).
    permutations: int = 9_999
    # Seed of the permutation draws, so every p-value is reproducible.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("char_ngrams", "word_ngrams"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= 8:
                raise InputError(f"{name} must satisfy 1 <= low <= high <= 8, got {(lo, hi)}")
        if not 0.0 <= self.char_weight <= 1.0:
            raise InputError("char_weight must be in [0, 1]")
        if self.min_matched_prompts < 10:
            raise InputError("min_matched_prompts must be >= 10")
        if self.min_candidates < 4:
            raise InputError("min_candidates must be >= 4 (the null needs pairs of others)")
        if not 0.0 < self.alpha < 1.0:
            raise InputError("alpha must be in (0, 1)")
        if self.permutations < 99:
            raise InputError("permutations must be >= 99")


@dataclass(frozen=True)
class AnswerSet:
    """One model's answers, keyed by the prompt (instruction) text."""

    name: str
    answers: Mapping[str, str]
    skipped_lines: int = 0


@dataclass(frozen=True)
class CandidateScore:
    name: str
    effect: float  # mean double-centred similarity E(suspect, candidate)
    z: float  # standardised against the null pool of other-candidate pairs
    p_model: float  # predictive t-test vs the null pool (uncorrected)
    p_model_holm: float  # Holm-corrected across candidates
    p_prompt: float  # prompt-level Monte-Carlo permutation p-value
    rank: int  # 1 = the candidate closest to the suspect
    attributed: bool


@dataclass(frozen=True)
class AttributionResult:
    suspect: str
    matched_prompts: int
    suspect_prompts: int
    candidates: tuple[CandidateScore, ...]  # sorted by effect, strongest first
    verdict: str | None  # the attributed candidate, or None for "none of these"
    null_effects: tuple[float, ...]  # pool pair effects (for the report's null plot)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "test": "attribution",
            "suspect": self.suspect,
            "matched_prompts": self.matched_prompts,
            "suspect_prompts": self.suspect_prompts,
            "verdict": self.verdict,
            "candidates": [vars(c) | {} for c in self.candidates],
            "null_effects": list(self.null_effects),
            "config": self.config,
        }


# --------------------------------------------------------------------------- loading


def _instruction_output(row: dict) -> tuple[str, str]:
    instruction, output = row.get("instruction"), row.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise ValueError("no string 'instruction' and 'output' fields")
    return instruction.strip(), output


def read_answers(path: Path, *, name: str | None = None) -> AnswerSet:
    """Read a JSONL file of ``{"instruction": ..., "output": ...}`` lines (alpaca_eval shape).

    Malformed lines are skipped and counted; a file with no usable line is an InputError.
    """
    if not path.is_file():
        raise InputError(f"answers file not found: {path}")
    reader = JsonlReader(path, _instruction_output)
    answers = dict(reader)
    skipped = reader.skipped
    if not answers:
        raise InputError(f"{path}: no line with string 'instruction' and 'output' fields")
    return AnswerSet(name=name or path.stem, answers=answers, skipped_lines=skipped)


def read_candidates(directory: Path, *, exclude: Sequence[str] = ()) -> list[AnswerSet]:
    """Every ``*.jsonl`` in ``directory`` is one candidate, named by its file stem."""
    if not directory.is_dir():
        raise InputError(f"candidates directory not found: {directory}")
    sets = [read_answers(p) for p in sorted(directory.glob("*.jsonl")) if p.stem not in exclude]
    if not sets:
        raise InputError(f"{directory}: no candidate *.jsonl files")
    return sets


def align(suspect: AnswerSet, candidates: Sequence[AnswerSet], *, minimum: int) -> list[str]:
    """The prompts every candidate and the suspect answered; InputError below ``minimum``."""
    shared = set(suspect.answers)
    for cand in candidates:
        shared &= set(cand.answers)
    if len(shared) < minimum:
        per = ", ".join(
            f"{c.name}: {len(set(suspect.answers) & set(c.answers))}" for c in candidates
        )
        raise InputError(
            f"only {len(shared)} of the suspect's {len(suspect.answers)} prompts are answered "
            f"by every candidate (need >= {minimum}); prompts must match by instruction text. "
            f"Shared with each candidate: {per}"
        )
    return sorted(shared)


# --------------------------------------------------------------------------- statistics


def similarity_tensor(answers: Sequence[Sequence[str]], config: AttributionConfig) -> np.ndarray:
    """Per-prompt cosine similarity between models' answers.

    answers: M models x P prompts of text. Returns (M, M, P): mean of char- and word-n-gram
    TF-IDF cosines weighted by ``char_weight`` (sublinear tf, fitted on all answers given).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    num_models, num_prompts = len(answers), len(answers[0])
    flat = [text for model in answers for text in model]
    vectorizers = [
        TfidfVectorizer(
            analyzer="char_wb", ngram_range=config.char_ngrams, sublinear_tf=True, min_df=2
        ),
        TfidfVectorizer(
            ngram_range=config.word_ngrams,
            sublinear_tf=True,
            min_df=2,
            lowercase=False,
            token_pattern=r"(?u)\b\w+\b|[^\w\s]",
        ),
    ]
    sim = np.zeros((num_models, num_models, num_prompts))
    weights = (config.char_weight, 1.0 - config.char_weight)
    for vectorizer, weight in zip(vectorizers, weights, strict=True):
        if weight == 0.0:
            continue
        features = vectorizer.fit_transform(flat)  # (M*P, F) rows L2-normalised
        blocks = [features[m * num_prompts : (m + 1) * num_prompts] for m in range(num_models)]
        for a in range(num_models):
            for b in range(a, num_models):
                cos = np.asarray(blocks[a].multiply(blocks[b]).sum(axis=1)).ravel()  # (P,)
                sim[a, b] += weight * cos
                if a != b:
                    sim[b, a] += weight * cos
    return sim


def double_center(sim: np.ndarray) -> np.ndarray:
    """Per-prompt removal of an additive model effect from the off-diagonal similarities.

    sim: (M, M, P), M >= 3. Returns (M, M, P) residuals ``s_ab - a_a - a_b`` with the
    diagonal set to 0, where ``a`` is the exact least-squares fit of ``s_ab = a_a + a_b`` on
    the off-diagonal entries of each prompt: from the row means ``r`` of the off-diagonal,
    ``T = sum(r) / 2`` and ``a_i = ((M - 1) r_i - T) / (M - 2)``. The fit absorbs the prompt's
    topic (a constant shared by all answers) and each model's hubness on it (how close it is
    to everyone), so what is left is the relation between two particular models.
    """
    num_models = sim.shape[0]
    if num_models < 3:
        raise InputError("double centring needs at least 3 models")
    off = ~np.eye(num_models, dtype=bool)[:, :, None]  # (M, M, 1)
    masked = np.where(off, sim, 0.0)
    row_mean = masked.sum(axis=1) / (num_models - 1)  # (M, P)
    total = row_mean.sum(axis=0) / 2.0  # (P,)
    effect = ((num_models - 1) * row_mean - total[None, :]) / (num_models - 2)  # (M, P)
    centred = sim - effect[:, None, :] - effect[None, :, :]
    return np.where(off, centred, 0.0)


def predictive_t_pvalue(observed: float, null: np.ndarray) -> tuple[float, float]:
    """One-sided p that one new draw from the null population is >= ``observed``.

    null: (n,) effects of unrelated pairs. Returns (z, p) with
    ``z = (observed - mean) / (sd * sqrt(1 + 1/n))`` on ``n - 1`` degrees of freedom.
    """
    n = null.size
    scale = float(null.std(ddof=1)) * np.sqrt(1.0 + 1.0 / n)
    z = (observed - float(null.mean())) / max(scale, 1e-12)
    return z, float(stats.t.sf(z, df=n - 1))


def prompt_permutation_pvalue(
    effects: np.ndarray, column: int, *, permutations: int, rng: np.random.Generator
) -> float:
    """Monte-Carlo p of candidate ``column`` under label exchangeability within each prompt.

    effects: (K, P) double-centred effects of the suspect with each candidate per prompt.
    """
    num_candidates, num_prompts = effects.shape
    observed = effects[column].mean()
    exceed = 0
    chunk = max(1, 2_000_000 // num_prompts)
    done = 0
    while done < permutations:
        size = min(chunk, permutations - done)
        labels = rng.integers(0, num_candidates, size=(size, num_prompts))  # (B, P)
        means = np.take_along_axis(effects.T, labels.T, axis=1).mean(axis=0)  # (B,)
        exceed += int((means >= observed - 1e-12).sum())
        done += size
    return (1 + exceed) / (1 + permutations)


# --------------------------------------------------------------------------- entry point


def attribute(
    suspect: AnswerSet,
    candidates: Sequence[AnswerSet],
    config: AttributionConfig | None = None,
    *,
    prompts: Sequence[str] | None = None,
) -> AttributionResult:
    """Test each candidate as the suspect's teacher; see the module docstring."""
    config = config or AttributionConfig()
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise InputError(f"candidate names must be unique, got {names}")
    if suspect.name in names:
        candidates = [c for c in candidates if c.name != suspect.name]
        names = [c.name for c in candidates]
    if len(candidates) < config.min_candidates:
        raise InputError(
            f"need >= {config.min_candidates} candidates (the null is built from pairs among "
            f"the others), got {len(candidates)}"
        )
    shared = align(suspect, candidates, minimum=config.min_matched_prompts)
    if prompts is not None:
        shared = [p for p in prompts if p in set(shared)]
        if len(shared) < config.min_matched_prompts:
            raise InputError(f"only {len(shared)} of the selected prompts are shared by all")
    texts = [[suspect.answers[p] for p in shared]] + [
        [c.answers[p] for p in shared] for c in candidates
    ]
    return attribute_from_similarity(
        similarity_tensor(texts, config),
        suspect=suspect.name,
        candidates=names,
        config=config,
        suspect_prompts=len(suspect.answers),
    )


def attribute_from_similarity(
    sim: np.ndarray,
    *,
    suspect: str,
    candidates: Sequence[str],
    config: AttributionConfig,
    suspect_prompts: int | None = None,
) -> AttributionResult:
    """The tests on a precomputed similarity tensor.

    sim: (K+1, K+1, P), index 0 the suspect, 1..K the candidates in order (benchmarks compute
    one tensor for all models and slice it per suspect).
    """
    names = list(candidates)
    num_candidates = len(names)
    if sim.shape[0] != num_candidates + 1 or sim.shape[1] != num_candidates + 1:
        raise InputError(f"similarity tensor {sim.shape} does not fit {num_candidates} candidates")
    centred = double_center(sim)  # (K+1, K+1, P)
    pair_effect = centred.mean(axis=2)  # (K+1, K+1) symmetric
    suspect_effects = centred[0, 1:, :]  # (K, P)

    rng = np.random.default_rng(config.seed)
    rows = []
    for k in range(num_candidates):
        others = [j + 1 for j in range(num_candidates) if j != k]
        null = np.array([pair_effect[a, b] for i, a in enumerate(others) for b in others[i + 1 :]])
        z, p_model = predictive_t_pvalue(float(pair_effect[0, k + 1]), null)
        p_prompt = prompt_permutation_pvalue(
            suspect_effects, k, permutations=config.permutations, rng=rng
        )
        rows.append((names[k], float(pair_effect[0, k + 1]), z, p_model, p_prompt))
    adjusted = holm(np.array([r[3] for r in rows])).tolist()  # (C,)
    order = np.argsort([-r[1] for r in rows])
    scores = []
    for rank, idx in enumerate(order, start=1):
        name, effect, z, p_model, p_prompt = rows[idx]
        attributed = adjusted[idx] < config.alpha and p_prompt < config.alpha
        scores.append(
            CandidateScore(
                name, effect, float(z), p_model, adjusted[idx], p_prompt, rank, bool(attributed)
            )
        )
    attributed = [s for s in scores if s.attributed]
    all_pairs = [
        pair_effect[a, b]
        for a in range(1, num_candidates + 1)
        for b in range(a + 1, num_candidates + 1)
    ]
    num_prompts = int(sim.shape[2])
    return AttributionResult(
        suspect=suspect,
        matched_prompts=num_prompts,
        suspect_prompts=suspect_prompts if suspect_prompts is not None else num_prompts,
        candidates=tuple(scores),
        verdict=attributed[0].name if attributed else None,
        null_effects=tuple(float(x) for x in all_pairs),
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
    )
