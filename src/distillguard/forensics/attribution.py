"""Watermark-free teacher attribution: which candidate's answers did a suspect learn from?

A student fine-tuned on a teacher's answers picks up the teacher's idiosyncrasies: favourite
phrases, list and markdown habits, punctuation, openings and closings (Sun et al. 2025,
arXiv 2502.12150, tell model families apart from such text features alone). The test learns
them, and turns the classifier into a calibrated test with a "none of these" answer:

1. **Classifier** (``attribution_features``). Per answer: TF-IDF of hashed character and
   word n-grams (exact phrases, spelling, punctuation) beside stylometry (markdown headers,
   lists, lengths, openers and closers such as "Certainly!" or "As an AI"). One logistic
   regression per pair of candidates learns what separates the two; the pairwise log-odds
   are coupled into probabilities over the candidates. It is trained on the candidates'
   answers to prompts *other* than the suspect's when they have enough (else on all their
   answers). Among 13 real models it names 47 % of single held-out answers, and the model
   behind a set of 201 held-out answers 13 of 13 times (tuning quarter of the prompts).
2. **Statistic.** The suspect's *share* for candidate c: the mean probability the classifier
   gives c over the suspect's answers (``statistic="vote"``: the fraction of answers whose
   most probable class is c).
3. **Null.** How large that share is for a model that did not learn from c: every other
   candidate j in turn is left out of the classifier (its answers are in none of the
   pairwise fits read: no refit), its answers are classified among the rest, and its share
   for c joins c's null. Candidates declared of c's *family* (same vendor,
   shared pretraining) are kept out of c's null: they are not unrelated to c. The p-value is a
   predictive t-test of one new draw from that null (``(s - mean) / (sd * sqrt(1 + 1/n))`` on
   ``n - 1`` degrees of freedom) on the logit scale of the shares (``scale``), Holm-corrected
   across the K candidates.
4. **Verdict.** No candidate below ``alpha`` after Holm: "none of these". Otherwise the
   candidate with the largest share; if a candidate of the same family is significant too,
   a sign test on the answers assigned to either decides whether the two can be told apart.
   If not, the verdict names the *family* (``family:<name>``) and says so: text alone
   cannot separate a student of one sibling from a student of the other, or from a sibling
   itself (a test of this kind cannot tell "learned from gpt-4" from "is a newer gpt-4").
5. **Meaning.** A verdict says the suspect's answers *resemble* the candidate's more than
   unrelated models' answers do. Resemblance is symmetric: a teacher taken as the suspect is
   attributed to its own student just as well. The direction (who learned from whom) is not
   decided from text; ``AttributionResult.meaning`` says so in words.

The held-out candidate of the null is trained on one class fewer than the suspect's
classifier, which raises its shares slightly: a conservative bias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from distillguard.errors import InputError
from distillguard.forensics.attribution_features import (
    AnswerFeatures,
    PairwiseClassifier,
    Representation,
    answer_features,
    featurize,
    fit_pairwise,
    fit_representation,
)
from distillguard.traffic import JsonlReader
from distillguard.watermark.stats import holm

# Shares are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit: a share of 0 or 1 (a
# vote share of a small set) must not be infinite.
LOGIT_CLIP = 1e-3

__all__ = [
    "AnswerFeatures",
    "AnswerSet",
    "AttributionConfig",
    "AttributionResult",
    "CandidateScore",
    "attribute",
    "attribute_features",
    "attribute_shares",
    "featurize",
    "fit_pairwise",
    "read_answers",
    "read_candidates",
    "read_families",
]


@dataclass(frozen=True)
class AttributionConfig:
    # Character n-grams inside word boundaries catch spelling, punctuation and markdown habits.
    char_ngrams: tuple[int, int] = (1, 4)
    # Word n-grams (case and punctuation kept) catch phrase habits ("Sure! Here", "I hope").
    word_ngrams: tuple[int, int] = (1, 2)
    # Hashed feature space per analyzer: 2^18 keeps collisions rare enough for ~10^4 answers.
    hash_bits: int = 18
    # An n-gram column is kept only if at least this many answers of the pool use it: habits
    # are frequent, rare n-grams are topic or noise (and would only widen every pairwise fit).
    min_df: int = 3
    # Scale of the standardised stylometric block against the unit-length TF-IDF row: 79
    # features at 1 sd each would outweigh a TF-IDF row of norm 1; 0.3 puts the two blocks
    # on a similar footing (set before any run, not tuned).
    style_weight: float = 0.3
    # Inverse L2 strength of each pairwise logistic regression (scikit-learn's C): 1 is the
    # library default for unit-length TF-IDF rows (set before any run, not tuned).
    regularization: float = 1.0
    # liblinear iterations; the two-class fits converge in far fewer.
    max_iter: int = 200
    # The suspect's share for a candidate: "mean_probability" (mean class probability over
    # its answers: graded, uses the classifier's confidence) or "vote" (fraction of answers
    # whose most probable class it is).
    statistic: str = "mean_probability"
    # The scale on which the null of shares is modelled as normal (predictive t). Shares are
    # proportions: unrelated models' shares sit near 0 with a few resembling models far
    # above, a skew the t reads as signal; on the "logit" scale that spread is close to
    # normal. Chosen on the tuning quarter Q2 (docs/benchmarks.md): "raw" named 2/3 pairs
    # with 3/10 strict false attributions, "logit" 1/3 with 0/10.
    scale: str = "logit"
    # Fewer suspect answers than this gives vote shares too coarse to be worth a p-value.
    min_prompts: int = 50
    # Candidates need this many answers to other prompts than the suspect's to be trained on
    # them; with fewer, all their answers are used (same-prompt mode; reported).
    min_train_prompts: int = 50
    # The null of a candidate needs shares of at least 3 unrelated others (t on 2 d.o.f.).
    min_candidates: int = 5
    # Family-wise error level across candidates (Holm), and of the sibling sign test.
    alpha: float = 0.01
    # Candidate -> family (vendor). Same-family candidates are not each other's null, and a
    # verdict names the family when the sign test cannot separate siblings. Empty: every
    # candidate is its own family.
    families: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("char_ngrams", "word_ngrams"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= 8:
                raise InputError(f"{name} must satisfy 1 <= low <= high <= 8, got {(lo, hi)}")
        if not 10 <= self.hash_bits <= 24:
            raise InputError("hash_bits must be in [10, 24]")
        if not 1 <= self.min_df <= 100:
            raise InputError("min_df must be in [1, 100]")
        if not 0.0 <= self.style_weight <= 10.0:
            raise InputError("style_weight must be in [0, 10]")
        if not 0.0 < self.regularization <= 1e4 or self.max_iter < 10:
            raise InputError("regularization must be in (0, 1e4] and max_iter >= 10")
        if self.min_prompts < 10 or self.min_train_prompts < 10:
            raise InputError("min_prompts and min_train_prompts must be >= 10")
        if self.min_candidates < 5:
            raise InputError("min_candidates must be >= 5 (the null needs 3 unrelated others)")
        if self.scale not in ("logit", "raw"):
            raise InputError("scale must be 'logit' or 'raw'")
        if self.statistic not in ("mean_probability", "vote"):
            raise InputError("statistic must be 'mean_probability' or 'vote'")
        if not 0.0 < self.alpha < 1.0:
            raise InputError("alpha must be in (0, 1)")

    def family(self, name: str) -> str:
        return self.families.get(name, name)


@dataclass(frozen=True)
class AnswerSet:
    """One model's answers, keyed by the prompt (instruction) text."""

    name: str
    answers: Mapping[str, str]
    skipped_lines: int = 0


@dataclass(frozen=True)
class CandidateScore:
    name: str
    family: str
    share: float  # the statistic (config.statistic): mean probability, or share of votes
    null_mean: float  # mean share of unrelated held-out models for this candidate
    null_sd: float
    null_size: int
    z: float  # (share - null mean) / (null sd * sqrt(1 + 1/n)), on the config's scale
    p: float  # predictive t-test, one-sided, uncorrected
    p_holm: float  # Holm-corrected across candidates
    rank: int  # 1 = the largest share
    attributed: bool  # p_holm <= alpha


@dataclass(frozen=True)
class AttributionResult:
    suspect: str
    suspect_prompts: int
    same_prompts: bool  # True: candidates were trained on the suspect's own prompts too
    candidates: tuple[CandidateScore, ...]  # sorted by share, largest first
    verdict: str | None  # a candidate, "family:<name>", or None for "none of these"
    verdict_level: str  # "model" | "family" | "none"
    sibling_note: str  # why a family (not a model) was named, or ""
    null_shares: tuple[float, ...]  # all null shares (for the report's plot)
    config: dict = field(default_factory=dict)

    @property
    def meaning(self) -> str:
        """What the verdict claims, in one sentence a non-statistician can read."""
        if self.verdict is None:
            return (
                f"The answers of {self.suspect} resemble no candidate's more than unrelated "
                "models' answers do (none of these)."
            )
        p_holm = next(c.p_holm for c in self.candidates if c.name == self.verdict)
        return (
            f"The answers of {self.suspect} resemble those of {self.verdict} more than "
            f"unrelated models' answers do (Holm p = {p_holm:.2g}). The "
            "resemblance is symmetric: text alone does not say who learned from whom (the "
            "suspect from the candidate, the candidate from the suspect, or both from one "
            "source); other evidence (release dates, whose outputs were harvested) decides "
            "the direction."
        )

    def to_dict(self) -> dict:
        return {
            "test": "attribution",
            "method": (
                "idiosyncrasy classifier (char/word n-gram TF-IDF + stylometry, pairwise "
                "logistic regressions coupled), leave-one-out null, Holm"
            ),
            "relation": "resembles" if self.verdict else None,
            "meaning": self.meaning,
            "suspect": self.suspect,
            "suspect_prompts": self.suspect_prompts,
            "same_prompts": self.same_prompts,
            "verdict": self.verdict,
            "verdict_level": self.verdict_level,
            "sibling_note": self.sibling_note,
            "candidates": [vars(c) | {} for c in self.candidates],
            "null_shares": list(self.null_shares),
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


# --------------------------------------------------------------------------- statistics


def _scaled(share: Any, config: AttributionConfig) -> Any:
    """A share (or an array of them) on the scale of the test (``config.scale``)."""
    if config.scale == "raw":
        return share
    clipped = np.clip(share, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(clipped / (1.0 - clipped))


def predictive_t_pvalue(observed: float, null: np.ndarray) -> tuple[float, float]:
    """One-sided p that one new draw from the null population is >= ``observed``.

    null: (n,) shares of unrelated models. Returns (z, p) with
    ``z = (observed - mean) / (sd * sqrt(1 + 1/n))`` on ``n - 1`` degrees of freedom; the sd
    is floored at 1/100 (a share is a fraction of >= 50 answers: finer is noise).
    """
    n = null.size
    scale = max(float(null.std(ddof=1)), 0.01) * np.sqrt(1.0 + 1.0 / n)
    z = (observed - float(null.mean())) / scale
    return z, float(stats.t.sf(z, df=n - 1))


def sibling_sign_test(
    shares: Mapping[str, float], num_answers: int, first: str, second: str
) -> float:
    """One-sided exact sign test: of the suspect's answers assigned to ``first`` or
    ``second``, do more go to ``first`` than a fair coin gives?"""
    a, b = round(shares[first] * num_answers), round(shares[second] * num_answers)
    if a + b == 0:
        return 1.0
    return float(stats.binomtest(a, a + b, 0.5, alternative="greater").pvalue)


def attribute_features(
    suspect: str,
    suspect_features: AnswerFeatures,
    train: Mapping[str, AnswerFeatures],
    held_out: Mapping[str, AnswerFeatures],
    config: AttributionConfig,
    *,
    same_prompts: bool = False,
    representation: Representation | None = None,
    classifier: PairwiseClassifier | None = None,
) -> AttributionResult:
    """The test on featurized answers.

    suspect_features: N_s answers. train: candidate -> its training answers. held_out:
    candidate -> answers scored when that candidate is left out (for the null; ideally to
    the suspect's prompts). ``representation``: the TF-IDF and scaling, unsupervised (fitted
    on ``train`` when None). ``classifier``: pairwise classifiers already fitted on ``train``
    (benchmarks fit one over every model and reuse it for each suspect: a pair involving the
    suspect is never read); fitted here when None.
    """
    names = sorted(n for n in train if n != suspect)
    if len(names) < config.min_candidates:
        raise InputError(
            f"need >= {config.min_candidates} candidates (the null is built from the others), "
            f"got {len(names)}"
        )
    if suspect_features.num_answers < config.min_prompts:
        raise InputError(
            f"the suspect has {suspect_features.num_answers} answers; need >= {config.min_prompts}"
        )
    if classifier is None:
        rep = representation or fit_representation([train[n] for n in names], config)
        classifier = fit_pairwise({n: train[n] for n in names}, config, rep)
    elif not set(names) <= set(classifier.classes):
        raise InputError("the classifier was not fitted on every candidate")
    decisions = classifier.decisions(suspect_features)
    shares = decisions.shares(names, config.statistic)
    votes = decisions.shares(names, "vote")
    loo_shares = {  # held-out j -> its shares per candidate, j left out of the classifier
        j: classifier.decisions(held_out[j]).shares([n for n in names if n != j], config.statistic)
        for j in names
    }
    return attribute_shares(
        suspect,
        shares,
        loo_shares,
        num_answers=suspect_features.num_answers,
        config=config,
        same_prompts=same_prompts,
        votes=votes,
    )


def attribute_shares(
    suspect: str,
    shares: Mapping[str, float],
    loo_shares: Mapping[str, Mapping[str, float]],
    *,
    num_answers: int,
    config: AttributionConfig,
    same_prompts: bool = False,
    votes: Mapping[str, float] | None = None,
) -> AttributionResult:
    """The tests on shares: ``shares`` of the suspect per candidate (classifier over all
    candidates), ``loo_shares[j]`` of held-out candidate j (classifier without j). ``votes``:
    the suspect's vote shares for the sibling sign test (``shares`` when None)."""
    names = sorted(shares)
    # Families of 2+ candidates are tested as units too: a student of one sibling splits its
    # answers between siblings, which can hide it from both candidate-level tests.
    groups = {c: [c] for c in names}
    for c in names:
        members = [n for n in names if config.family(n) == config.family(c)]
        if len(members) > 1:
            groups[f"family:{config.family(c)}"] = members
    rows = []
    for label, members in groups.items():
        values = np.array(
            [
                sum(loo_shares[j][m] for m in members)
                for j in names
                if j not in members and config.family(j) != config.family(members[0])
            ]
        )  # (n,)
        if values.size < 3:
            raise InputError(
                f"candidate {label!r} has {values.size} unrelated others for its null (need "
                ">= 3): too many candidates share its family"
            )
        observed = sum(shares[m] for m in members)
        z, p = predictive_t_pvalue(_scaled(observed, config), _scaled(values, config))
        rows.append((label, observed, values, z, p))
    adjusted = holm(np.array([r[4] for r in rows])).tolist()  # (K + families,)
    order = np.argsort([-r[1] for r in rows], kind="stable")
    scores = []
    for rank, idx in enumerate(order, start=1):
        c, share, values, z, p = rows[idx]
        scores.append(
            CandidateScore(
                name=c,
                family=config.family(groups[c][0]),
                share=float(share),
                null_mean=float(values.mean()),
                null_sd=float(values.std(ddof=1)),
                null_size=int(values.size),
                z=float(z),
                p=p,
                p_holm=adjusted[idx],
                rank=rank,
                attributed=adjusted[idx] <= config.alpha,
            )
        )
    verdict, level, note = _verdict(scores, votes or shares, num_answers, config)
    return AttributionResult(
        suspect=suspect,
        suspect_prompts=num_answers,
        same_prompts=same_prompts,
        candidates=tuple(scores),
        verdict=verdict,
        verdict_level=level,
        sibling_note=note,
        null_shares=tuple(float(x) for row in loo_shares.values() for x in row.values()),
        config={
            k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
            for k, v in vars(config).items()
        },
    )


def _verdict(
    scores: Sequence[CandidateScore],
    shares: Mapping[str, float],
    num_answers: int,
    config: AttributionConfig,
) -> tuple[str | None, str, str]:
    models = [s for s in scores if s.attributed and not s.name.startswith("family:")]
    families = [s for s in scores if s.attributed and s.name.startswith("family:")]
    if models:
        top = models[0]
        # Named alone only if it beats every sibling, significant or not: a sibling that
        # shares the answers is the same evidence seen from the other side.
        siblings = [
            s
            for s in scores
            if s.family == top.family and s.name != top.name and not s.name.startswith("family:")
        ]
        unresolved = [
            s.name
            for s in siblings
            if sibling_sign_test(shares, num_answers, top.name, s.name) > config.alpha
        ]
        if not unresolved:
            return top.name, "model", ""
        note = (
            f"{top.name} is significant, but a sign test on the answers assigned to it or "
            f"to its sibling(s) {', '.join(unresolved)} (family {top.family}) cannot tell "
            f"them apart at alpha={config.alpha:g}: the answers come from this family, not "
            f"provably from one member (or the suspect is itself a member)"
        )
        return f"family:{top.family}", "family", note
    if families:
        top = families[0]
        note = (
            f"the family {top.family} as a whole is significant but none of its members alone: "
            f"the suspect's answers are split between siblings that text alone cannot tell "
            f"apart (the suspect learned from this family, or is a member of it)"
        )
        return top.name, "family", note
    return None, "none", ""


# --------------------------------------------------------------------------- entry point


def attribute(
    suspect: AnswerSet,
    candidates: Sequence[AnswerSet],
    config: AttributionConfig | None = None,
) -> AttributionResult:
    """Test each candidate as the suspect's teacher; see the module docstring."""
    config = config or AttributionConfig()
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise InputError(f"candidate names must be unique, got {names}")
    candidates = [c for c in candidates if c.name != suspect.name]
    test_prompts = set(suspect.answers)
    other = {c.name: [p for p in c.answers if p not in test_prompts] for c in candidates}
    same_prompts = any(len(v) < config.min_train_prompts for v in other.values())
    train_texts, held_texts = {}, {}
    for c in candidates:
        prompts = list(c.answers) if same_prompts else other[c.name]
        if len(prompts) < config.min_train_prompts:
            raise InputError(
                f"candidate {c.name!r} has {len(prompts)} answers; need >= "
                f"{config.min_train_prompts} to learn its habits"
            )
        train_texts[c.name] = [c.answers[p] for p in prompts]
        on_suspect_prompts = [c.answers[p] for p in c.answers if p in test_prompts]
        held_texts[c.name] = (
            on_suspect_prompts
            if len(on_suspect_prompts) >= config.min_prompts
            else list(c.answers.values())
        )
    suspect_features = answer_features(list(suspect.answers.values()), config)
    train = {n: answer_features(t, config) for n, t in train_texts.items()}
    # The representation (TF-IDF weights, SVD basis, scaling) is unsupervised: fitted on every
    # text at hand, the suspect's included, so that the suspect's habits are as visible to it
    # as those of the held-out candidates of the null (their training answers are in it).
    representation = fit_representation([*train.values(), suspect_features], config)
    return attribute_features(
        suspect.name,
        suspect_features,
        train,
        {n: answer_features(t, config) for n, t in held_texts.items()},
        config,
        same_prompts=same_prompts,
        representation=representation,
    )


def read_families(path: Path) -> dict[str, str]:
    """A JSON object ``{"candidate": "family", ...}``; InputError on anything else."""
    import json

    if not Path(path).is_file():
        raise InputError(f"families file not found: {path}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise InputError(f'{path}: expected a JSON object {{"candidate": "family"}}')
    return data
