"""What makes a model's text its own: features and the classifier of teacher attribution.

Two views of one answer, both computed without fitting anything on the suspect's text:

- **n-grams** (``featurize``): hashed character (within words) and word n-grams: favourite
  phrases, spelling, punctuation and markdown tokens.
- **stylometry** (``stylometric_features``): formatting habits that n-grams see poorly
  because they live at the level of lines and whole answers: length, markdown headers, list
  items, bold, code fences, blank lines, punctuation rates, openers ("Certainly!", "As an AI")
  and closers ("I hope this helps", "Let me know").

The classifier (``fit_pairwise``) is one logistic regression per *pair* of candidates over
the sparse TF-IDF n-grams beside the standardised stylometry (discriminative: it learns what
separates a candidate from each other one, not only what it says often). The pairwise
log-odds are coupled into class probabilities among any subset of the candidates
(``PairDecisions.probabilities``): a classifier over a subset only reads classifiers fitted
on that subset's answers, so the leave-one-out null of the test needs no refit at all (the
multinomial regression before it needed 1 + K + K(K-1)/2 refits for a leave-one-model-out
run). Its per-answer probabilities are the statistic's input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import sparse


class FeatureSettings(Protocol):
    """The settings read here (``attribution.AttributionConfig`` has them, with why-comments)."""

    @property
    def char_ngrams(self) -> tuple[int, int]: ...
    @property
    def word_ngrams(self) -> tuple[int, int]: ...
    @property
    def hash_bits(self) -> int: ...
    @property
    def min_df(self) -> int: ...
    @property
    def style_weight(self) -> float: ...
    @property
    def regularization(self) -> float: ...
    @property
    def max_iter(self) -> int: ...


# Openers and closers seen in chat models' answers ("Certainly!", "I hope this helps"):
# the first and last words are where assistants' trained habits show most.
OPENERS = (
    "sure",
    "certainly",
    "of course",
    "as an ai",
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "hello",
    "hi",
    "yes",
    "no",
    "here",
    "great",
    "absolutely",
    "i'm happy",
    "i'd be happy",
    "thank",
    "there are",
    "the ",
    "1.",
    "#",
    "it ",
)
CLOSERS = (
    "i hope this helps",
    "let me know",
    "hope this",
    "overall",
    "in conclusion",
    "in summary",
    "ultimately",
    "enjoy",
    "good luck",
)
# Line-level markdown habits: headers, numbered and bulleted items, fences, bold, blank
# lines, quotes, tables.
LINE_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"^#{1,6} ",
        r"^\s*\d+[.)] ",
        r"^\s*[-*\u2022] ",
        r"^```",
        r"\*\*[^*]+\*\*",
        r"^\s*$",
        r"^>",
        r"\|",
    )
)
PUNCTUATION = "!?:;()\"'\u2014\u2013\u2026-*_`"
SENTENCE_END = re.compile(r"[.!?]+\s")
NUM_STYLOMETRIC = 6 + 2 * len(LINE_PATTERNS) + len(PUNCTUATION) + 4 + len(OPENERS)
NUM_STYLOMETRIC += len(CLOSERS) + 5 + 2


def _stylometry(text: str) -> list[float]:
    body = text.strip()
    low = body.lower()
    lines = body.split("\n")
    words = body.split()
    num_chars, num_words = max(len(body), 1), max(len(words), 1)
    sentences = [s for s in SENTENCE_END.split(body) if s.strip()]
    out = [
        float(np.log1p(len(body))),
        float(np.log1p(len(words))),
        float(np.log1p(len(lines))),
        float(np.mean([len(w) for w in words])) if words else 0.0,
        num_words / max(len(sentences), 1) / 20.0,
        len({w.lower() for w in words}) / num_words,
    ]
    for pattern in LINE_PATTERNS:
        hits = sum(bool(pattern.search(line)) for line in lines)
        out += [hits / len(lines), float(hits > 0)]
    out += [1000.0 * body.count(ch) / num_chars for ch in PUNCTUATION]
    out += [
        sum(c.isupper() for c in body) / num_chars,
        sum(c.isdigit() for c in body) / num_chars,
        100.0 * sum(ord(c) > 127 for c in body) / num_chars,
        float("\u201c" in body or "\u2019" in body),  # typographic quotes
    ]
    out += [float(low.startswith(o)) for o in OPENERS]
    tail = low[-80:]
    out += [float(c in tail) for c in CLOSERS]
    out += [float(low.endswith(c)) for c in "!?.):"]
    out += [float("ai language model" in low), float("as an ai" in low)]
    return out


def stylometric_features(texts: Sequence[str]) -> np.ndarray:
    """Formatting and phrasing habits of each answer. texts: N answers. Returns (N, S)."""
    if not texts:
        return np.zeros((0, NUM_STYLOMETRIC))
    return np.array([_stylometry(t) for t in texts], dtype=np.float64)  # (N, S)


def featurize(texts: Sequence[str], config: FeatureSettings) -> sparse.csr_matrix:
    """Hashed character and word n-gram counts. texts: N answers. Returns (N, 2 * 2^bits)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    common = {"n_features": 1 << config.hash_bits, "alternate_sign": False, "norm": None}
    vectorizers = [
        HashingVectorizer(analyzer="char_wb", ngram_range=config.char_ngrams, **common),
        HashingVectorizer(
            ngram_range=config.word_ngrams,
            lowercase=False,
            token_pattern=r"(?u)\b\w+\b|[^\w\s]",
            **common,
        ),
    ]
    return sparse.hstack([v.transform(texts) for v in vectorizers]).tocsr()


@dataclass(frozen=True)
class AnswerFeatures:
    """Both views of a set of answers, row-aligned."""

    ngrams: sparse.csr_matrix  # (N, F) hashed n-gram counts
    style: np.ndarray  # (N, S) stylometric features

    @property
    def num_answers(self) -> int:
        return int(self.ngrams.shape[0])


def answer_features(texts: Sequence[str], config: FeatureSettings) -> AnswerFeatures:
    return AnswerFeatures(featurize(texts, config), stylometric_features(texts))


# Standardised stylometric features are clipped to this many standard deviations: one
# freak answer (a 40-level list) must not dominate a linear classifier's margin.
STYLE_CLIP = 5.0


@dataclass(frozen=True)
class Representation:
    """TF-IDF over the n-gram columns that enough answers of the pool use, beside the
    standardised stylometry. Unsupervised: fitted on answers without their labels."""

    columns: np.ndarray  # (F',) kept n-gram columns of the hashed space
    tfidf: Any  # TfidfTransformer over the kept columns
    scaler: Any  # StandardScaler over the stylometry
    style_weight: float

    @property
    def width(self) -> int:
        return int(self.columns.size + self.scaler.n_features_in_)

    def transform(self, features: AnswerFeatures) -> sparse.csr_matrix:
        """(N, F' + S): unit-length TF-IDF rows beside the weighted, clipped stylometry."""
        weighted = self.tfidf.transform(features.ngrams[:, self.columns])  # (N, F')
        style = self.scaler.transform(features.style)  # (N, S)
        style = np.clip(style, -STYLE_CLIP, STYLE_CLIP) * self.style_weight
        return sparse.hstack([weighted, sparse.csr_matrix(style)]).tocsr()


def fit_representation(pool: Sequence[AnswerFeatures], config: FeatureSettings) -> Representation:
    """Fit the representation on a pool of answer sets (no labels are used)."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import StandardScaler

    ngrams = sparse.vstack([f.ngrams for f in pool]).tocsr()  # (sum N, F)
    # A habit is frequent by definition: n-grams that fewer than min_df answers use carry
    # topic or noise, and dropping them shrinks every pairwise fit.
    document_frequency = np.asarray((ngrams > 0).sum(axis=0)).ravel()  # (F,)
    columns = np.flatnonzero(document_frequency >= config.min_df)  # (F',)
    if columns.size == 0:
        raise ValueError(f"no n-gram is used by {config.min_df} answers of the pool")
    tfidf = TfidfTransformer(sublinear_tf=True).fit(ngrams[:, columns])
    scaler = StandardScaler().fit(np.vstack([f.style for f in pool]))
    return Representation(columns, tfidf, scaler, config.style_weight)


def log_sigmoid(values: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -values)


@dataclass(frozen=True)
class PairDecisions:
    """The decision values of every pairwise classifier on one set of N answers."""

    index: Mapping[tuple[str, str], int]  # (a, b), a < b -> column; > 0 means "a, not b"
    values: np.ndarray  # (N, P)

    @property
    def num_answers(self) -> int:
        return int(self.values.shape[0])

    def decision(self, first: str, second: str) -> np.ndarray:
        """(N,) log-odds that each answer is ``first``'s rather than ``second``'s."""
        if first < second:
            return self.values[:, self.index[(first, second)]]
        return -self.values[:, self.index[(second, first)]]

    def log_scores(self, classes: Sequence[str]) -> np.ndarray:
        """(N, K): per class c, the sum over the other classes d of log P(c, not d | answer),
        the pairwise classifiers coupled as a Bradley-Terry model. Only classifiers between
        two of ``classes`` are read, so a class left out was never in any fit used here."""
        out = np.zeros((self.num_answers, len(classes)))  # (N, K)
        for i, first in enumerate(classes):
            for k in range(i + 1, len(classes)):
                value = self.decision(first, classes[k])  # (N,)
                out[:, i] += log_sigmoid(value)
                out[:, k] += log_sigmoid(-value)
        return out

    def probabilities(self, classes: Sequence[str]) -> np.ndarray:
        """(N, K) class probabilities among ``classes`` (softmax of ``log_scores``)."""
        scores = self.log_scores(classes)
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        return weights / weights.sum(axis=1, keepdims=True)

    def shares(self, classes: Sequence[str], statistic: str) -> dict[str, float]:
        """Per class, the mean probability over the answers ("mean_probability") or the
        fraction of answers whose most probable class it is ("vote")."""
        probs = self.probabilities(classes)  # (N, K)
        if statistic == "vote":
            share = np.bincount(probs.argmax(axis=1), minlength=len(classes)) / len(probs)
        else:
            share = probs.mean(axis=0)
        return dict(zip(classes, share.tolist(), strict=True))


@dataclass(frozen=True)
class PairwiseClassifier:
    """One logistic regression per pair of classes (a, b), each fitted on the answers of a
    and b only. Any subset of the classes is then a classifier over that subset that never
    saw the other classes' answers: the leave-one-out null needs no refit."""

    classes: tuple[str, ...]
    representation: Representation
    index: Mapping[tuple[str, str], int]
    weights: np.ndarray  # (P, F' + S) float32
    intercepts: np.ndarray  # (P,)

    def decisions(self, features: AnswerFeatures) -> PairDecisions:
        x = self.representation.transform(features)  # (N, F' + S)
        values = np.asarray(x @ self.weights.T, dtype=np.float64) + self.intercepts  # (N, P)
        return PairDecisions(self.index, values)


def fit_pairwise(
    train: Mapping[str, AnswerFeatures],
    config: FeatureSettings,
    representation: Representation | None = None,
) -> PairwiseClassifier:
    """A logistic regression (L2, balanced classes) for each pair of classes of ``train``
    (name -> its training answers): K (K - 1) / 2 small fits on two classes' answers each."""
    from sklearn.linear_model import LogisticRegression

    classes = tuple(sorted(train))
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    rep = representation or fit_representation([train[c] for c in classes], config)
    rows = {c: rep.transform(train[c]) for c in classes}  # (N_c, D) each
    pairs = [(a, b) for i, a in enumerate(classes) for b in classes[i + 1 :]]
    weights = np.zeros((len(pairs), rep.width), dtype=np.float32)  # (P, D)
    intercepts = np.zeros(len(pairs))  # (P,)
    for k, (a, b) in enumerate(pairs):
        x = sparse.vstack([rows[a], rows[b]]).tocsr()
        y = np.r_[np.ones(rows[a].shape[0]), np.zeros(rows[b].shape[0])]
        model = LogisticRegression(
            C=config.regularization,
            solver="liblinear",
            class_weight="balanced",
            max_iter=config.max_iter,
            random_state=0,  # liblinear shuffles: fixed, so that a fit is reproducible
        ).fit(x, y)
        weights[k] = model.coef_[0]
        intercepts[k] = model.intercept_[0]
    index = {pair: k for k, pair in enumerate(pairs)}
    return PairwiseClassifier(classes, rep, index, weights, intercepts)
