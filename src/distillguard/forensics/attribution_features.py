"""What makes a model's text its own: features and the classifier of teacher attribution.

Two views of one answer, both computed without fitting anything on the suspect's text:

- **n-grams** (``featurize``): hashed character (within words) and word n-grams: favourite
  phrases, spelling, punctuation and markdown tokens.
- **stylometry** (``stylometric_features``): formatting habits that n-grams see poorly
  because they live at the level of lines and whole answers: length, markdown headers, list
  items, bold, code fences, blank lines, punctuation rates, openers ("Certainly!", "As an AI")
  and closers ("I hope this helps", "Let me know").

The classifier (``fit_classifier``) is a multinomial logistic regression over the
candidates (discriminative: it learns what separates each candidate from the others, not
only what it says often) on the TF-IDF n-grams reduced by a truncated SVD, beside the
standardised stylometric features. Its per-answer probabilities are the statistic's input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    def svd_components(self) -> int: ...
    @property
    def ngram_columns(self) -> int: ...
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


@dataclass(frozen=True)
class Representation:
    """TF-IDF + truncated SVD of the n-grams beside the stylometry, standardised. Fitted on
    the candidates' training answers only (never on the suspect's)."""

    full_tfidf: Any  # TfidfTransformer over all n-gram columns (for the centroids)
    columns: np.ndarray  # (F',) the n-gram columns kept: the most frequent in the pool
    tfidf: Any  # TfidfTransformer over the kept columns
    svd: Any  # TruncatedSVD
    scaler: Any  # StandardScaler over [svd components | stylometry]
    style_weight: float
    # Transforms of answer sets already seen (the leave-one-out null refits on the same
    # training answers K + 1 times): id -> (the features, kept alive so the id stays theirs,
    # their full TF-IDF rows, their dense rows).
    seen: dict[int, tuple[AnswerFeatures, Any, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def prepare(self, features: AnswerFeatures) -> tuple[Any, np.ndarray]:
        """(full TF-IDF rows (N, F), dense rows (N, D + S)), computed once per answer set."""
        hit = self.seen.get(id(features))
        if hit is not None and hit[0] is features:
            return hit[1], hit[2]
        out = (self.full_tfidf.transform(features.ngrams), self.transform(features))
        self.seen[id(features)] = (features, *out)
        return out

    def transform(self, features: AnswerFeatures) -> np.ndarray:
        """(N, D + S) standardised features of N answers."""
        from sklearn.preprocessing import normalize

        weighted = self.tfidf.transform(features.ngrams[:, self.columns])  # (N, F')
        # Unit length after the projection (as in LSA): an answer full of topic words the
        # basis does not hold projects short, and its habits would read as "no habit".
        reduced = normalize(self.svd.transform(weighted))  # (N, D)
        joined = np.hstack([reduced, features.style])  # (N, D + S)
        scaled = self.scaler.transform(joined)
        scaled[:, reduced.shape[1] :] *= self.style_weight
        return scaled


def fit_representation(train: Sequence[AnswerFeatures], config: FeatureSettings) -> Representation:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import StandardScaler, normalize

    ngrams = sparse.vstack([f.ngrams for f in train]).tocsr()  # (sum N, F)
    style = np.vstack([f.style for f in train])  # (sum N, S)
    # The SVD's cost grows with the width: keep the columns most documents use (rare n-grams
    # carry topic more than habit, and a habit is by definition frequent).
    full_tfidf = TfidfTransformer(sublinear_tf=True).fit(ngrams)
    document_frequency = np.asarray((ngrams > 0).sum(axis=0)).ravel()  # (F,)
    keep = min(config.ngram_columns, int((document_frequency > 0).sum()))
    columns = np.sort(np.argsort(-document_frequency, kind="stable")[:keep])  # (F',)
    ngrams = ngrams[:, columns]
    tfidf = TfidfTransformer(sublinear_tf=True).fit(ngrams)
    weighted = tfidf.transform(ngrams)
    components = min(config.svd_components, weighted.shape[0] - 1, weighted.shape[1] - 1)
    svd = TruncatedSVD(components, random_state=0).fit(weighted)
    scaler = StandardScaler().fit(np.hstack([normalize(svd.transform(weighted)), style]))
    return Representation(full_tfidf, columns, tfidf, svd, scaler, config.style_weight)


def _centroid_sums(weighted: sparse.csr_matrix, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, F) sum of the unit-length rows of each class."""
    return np.vstack([np.asarray(weighted[labels == c].sum(axis=0)) for c in range(k)])


@dataclass(frozen=True)
class FittedClassifier:
    classes: tuple[str, ...]
    representation: Representation
    centroids: np.ndarray  # (K, F) unit-length mean TF-IDF vector of each class (all n-grams)
    similarity_scaler: Any  # StandardScaler over the (K,) cosines to the centroids
    model: Any  # LogisticRegression over the classes

    def _inputs(self, features: AnswerFeatures) -> np.ndarray:
        weighted, dense = self.representation.prepare(features)  # (N, F), (N, D + S)
        cosines = np.asarray(weighted @ self.centroids.T)  # (N, K)
        return np.hstack([self.similarity_scaler.transform(cosines), dense])  # (N, K + D + S)

    def probabilities(self, features: AnswerFeatures) -> np.ndarray:
        """(N, K) probability of each class for each answer."""
        return np.asarray(self.model.predict_proba(self._inputs(features)))

    def vote_shares(self, features: AnswerFeatures) -> dict[str, float]:
        """Fraction of the answers assigned (argmax) to each class."""
        counts = np.bincount(
            self.probabilities(features).argmax(axis=1), minlength=len(self.classes)
        )  # (K,)
        return dict(zip(self.classes, (counts / features.num_answers).tolist(), strict=True))

    def mean_probabilities(self, features: AnswerFeatures) -> dict[str, float]:
        """Mean probability of each class over the answers (a soft vote share)."""
        mean = self.probabilities(features).mean(axis=0)  # (K,)
        return dict(zip(self.classes, mean.tolist(), strict=True))


def fit_classifier(
    train: Mapping[str, AnswerFeatures],
    config: FeatureSettings,
    representation: Representation | None = None,
) -> FittedClassifier:
    """Logistic regression over the classes of ``train`` (name -> its training answers).

    Inputs per answer: its cosine to each class's TF-IDF centroid over all n-grams (rare,
    exact phrases; for a training answer, to its own class's centroid *without* it, so the
    regression learns how close an unseen answer of the class comes), the SVD of the
    frequent n-grams and the stylometry. ``representation``: fitted beforehand on the same
    pool (benchmarks reuse one across the leave-one-out fits); fitted on ``train`` if None.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    classes = tuple(sorted(train))
    rep = representation or fit_representation([train[c] for c in classes], config)
    labels = np.repeat(np.arange(len(classes)), [train[c].num_answers for c in classes])
    prepared = [rep.prepare(train[c]) for c in classes]
    weighted = sparse.vstack([w for w, _ in prepared]).tocsr()  # (sum N_c, F) unit rows
    sums = _centroid_sums(weighted, labels, len(classes))  # (K, F)
    norms = np.linalg.norm(sums, axis=1)  # (K,)
    dots = np.asarray(weighted @ sums.T)  # (sum N_c, K)
    cosines = dots / norms  # (sum N_c, K)
    rows = np.arange(len(labels))
    own = dots[rows, labels]  # x.S_k for the answer's own class
    cosines[rows, labels] = (own - 1.0) / np.sqrt(
        np.maximum(norms[labels] ** 2 - 2.0 * own + 1.0, 1e-12)
    )  # cosine to the own centroid without the answer itself
    similarity_scaler = StandardScaler().fit(cosines)
    dense = np.vstack([d for _, d in prepared])  # (sum N_c, D + S)
    x = np.hstack([similarity_scaler.transform(cosines), dense])
    model = LogisticRegression(C=config.regularization, max_iter=config.max_iter)
    model.fit(x, labels)
    centroids = sums / norms[:, None]
    return FittedClassifier(classes, rep, centroids, similarity_scaler, model)
