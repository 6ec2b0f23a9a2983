"""The engines' per-account fold: ``AccountSketch.observe`` + ``observe_response`` over many rows
of one account at once, with the same resulting sketch as one call per row.

``signals.AccountSketch`` is the one definition of an account's state and of how a request
changes it. Most of that change is order-free or a prefix computation, and is done here per
segment (an account's consecutive rows of a batch) with numpy: counters and sums, the
hour-of-day histogram, first/last time and late arrivals (a running maximum), the synchronized-
timing MinHash (the k smallest hashes of the distinct time buckets: independent of order), the
capped link-key maps (the first ``max_keys`` distinct keys in order of appearance, with their
counts), the model history, the topic sketch's decay (a running product, then ``np.add.at``,
which adds in row order, as the sketch does). What is truly sequential stays a plain loop with
the sketch's own arithmetic: the inter-arrival Welford moments, the frame-shingle table (its
pruning depends on every earlier row) and the prompt reservoir (one draw of the account's
``random.Random`` per row). The model table (a model's first row and the requests before it:
switches), the time-decayed windows (their anchor moves), the space-saving shape table and the
end-user table (pruned by weight) are order-dependent too: the segment calls the sketch's own
``_model`` / ``_weight`` / ``_recent`` / ``_shape`` / ``_end_user`` per row (with ``n`` as
``observe`` has it), which keeps them exact by construction.

Exactness guard: the fast fold (and ``engines.vectorized``) restates code of ``signals``,
``topics`` and ``language``. It is used only while that code is the code it was written
against (``RESTATED``: a hash of the source of each restated function and of the features'
and sketches' fields); when the detection room changes any of them, the engines fall back to
``observe_record`` per validated record (the code before the batched fold: same verdicts,
slower) until this module is brought up to date. ``tests/monitor/test_vectorized.py`` checks
that both paths give the same sketches, and that the guard holds on this checkout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import inspect
from collections import Counter, _count_elements  # type: ignore[attr-defined]
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from itertools import islice, repeat
from operator import itemgetter

import numpy as np
import pyarrow as pa

from distillguard.columnar import records_from_table
from distillguard.monitor import signals as sig
from distillguard.monitor import topics as tp
from distillguard.monitor.engines.vectorized import (
    BatchFeatures,
    Rows,
    batch_features,
    batch_languages,
    decode_rows,
)
from distillguard.monitor.language import prompt_language
from distillguard.monitor.signals import (
    AccountSketch,
    MinHasher,
    SignalConfig,
    new_sketch,
    observe_record,
)
from distillguard.traffic import TrafficRecord

# sha256 (first 16 hex digits) of the restated source; see ``restated_digest``.
RESTATED = "b03c6490a7f82bee"


def restated_digest() -> str:
    """A digest of the source this module and ``engines.vectorized`` restate (and of the
    features' and sketches' fields)."""
    parts = [
        inspect.getsource(f)
        for f in (
            sig.AccountSketch.observe,
            sig.AccountSketch.observe_response,
            sig.AccountSketch._time,
            sig.AccountSketch._model,
            sig.AccountSketch._template,
            sig._bump,
            sig.observe_record,
            tp.TopicSketch.observe,
            # what engines.vectorized restates
            sig.request_features,
            sig.frame_shingles,
            sig._reasoning_model,
            tp.prompt_topic,
            prompt_language,
        )
    ]
    parts.append(",".join(f.name for f in dataclasses.fields(sig.RequestFeatures)))
    parts.append(",".join(f.name for f in dataclasses.fields(sig.AccountSketch)))
    parts.append(",".join(f.name for f in dataclasses.fields(tp.TopicSketch)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@cache
def fast_fold_ok() -> bool:
    try:
        return restated_digest() == RESTATED
    except (OSError, TypeError):  # no source (a frozen build): the reference path
        return False


# --------------------------------------------------------------------------------------------
# One account's segment
# --------------------------------------------------------------------------------------------


def _merge_counts(d: dict[str, int], keys: list[str], cap: int) -> None:
    """``_bump(d, key, cap)`` for each key in order (Counter keeps first-appearance order)."""
    for key, c in Counter(keys).items():
        if key in d:
            d[key] += c
        elif len(d) < cap:
            d[key] = c


def language_offset(n0: int, every: int) -> int:
    """Index, in a segment that starts after ``n0`` requests, of the first request whose
    count is a multiple of ``every`` (the ones whose language is read)."""
    return (-(n0 + 1)) % every


def _languages(
    groups: dict[str, list[int]],
    n0_of: Callable[[str], int],
    rows: Rows,
    feats: BatchFeatures,
    every: int,
) -> dict[int, tuple[int, ...]]:
    """The languages ``observe`` / ``observe_response`` read, for every row that reads one:
    row -> (prompt's, answer's when ok and non-empty), all texts in one batch."""
    pick: list[int] = []
    for acct, idx in groups.items():
        pick += idx[language_offset(n0_of(acct), every) :: every]
    texts: list[str] = []
    owners: list[int] = []
    for i in pick:
        texts.append(feats.text[i])
        owners.append(i)
        resp = rows.response_text[i]
        if resp and 200 <= rows.status[i] < 300:
            texts.append(resp)
            owners.append(i)
    out: dict[int, tuple[int, ...]] = {}
    for i, la in zip(owners, batch_languages(texts).tolist(), strict=True):
        out[i] = (*out.get(i, ()), la)
    return out


def observe_segment(
    sk: AccountSketch,
    idx: list[int],
    rows: Rows,
    feats: BatchFeatures,
    prefix_of: Callable[[str], str],
    lang_of: dict[int, tuple[int, ...]],
) -> None:
    """Fold rows ``idx`` (one account's, in arrival order) into ``sk``: the same state as
    ``sk.observe(...)`` + ``sk.observe_response(...)`` per row."""
    cfg = sk.cfg
    m = len(idx)
    n0 = sk.n
    ns = range(n0 + 1, n0 + m + 1)  # the sketch's n after each row's increment
    ix = np.asarray(idx, dtype=np.int64)
    ts_list = [rows.ts[i] for i in idx]
    ts = np.asarray(ts_list, dtype=np.float64)
    sk.n = n0 + m

    # _time: hours, first/last, late arrivals, gaps (Welford in order), buckets and MinHash
    hours = np.bincount((np.floor_divide(ts, 3600.0).astype(np.int64)) % 24, minlength=24)
    sk.hours = [a + int(b) for a, b in zip(sk.hours, hours.tolist(), strict=True)]
    sk.first_ts = min(sk.first_ts, float(ts.min()))
    prev = np.maximum.accumulate(np.concatenate(([sk.last_ts], ts)))[:-1]  # (m,) last_ts before
    in_order = ts >= prev
    sk.out_of_order += int(m - in_order.sum())
    gaps = (ts - prev)[in_order & (prev > -np.inf)].tolist()
    burst_s = cfg.burst_gap_s
    gap_n, mean, m2, bursts = sk.gap_n, sk.gap_mean, sk.gap_m2, sk.bursts
    for gap in gaps:  # AccountSketch._time's arithmetic, in the same order
        bursts += gap < burst_s
        gap_n += 1
        d = gap - mean
        mean += d / gap_n
        m2 += d * (gap - mean)
    sk.gap_n, sk.gap_mean, sk.gap_m2, sk.bursts = gap_n, mean, m2, bursts
    sk.last_ts = max(sk.last_ts, float(ts.max()))
    buckets = np.floor_divide(ts, cfg.sync_bucket_s).astype(np.int64)
    prev_b = np.concatenate(([sk.last_bucket], buckets[:-1]))
    sk.buckets += int((buckets != prev_b).sum())
    sk.last_bucket = int(buckets[-1])
    heap = sk.minhash
    have = set(heap)
    for b in np.unique(buckets).tolist():
        h = -sk.hasher.hash(b)
        if h in have:
            continue
        if len(heap) < cfg.minhash_k:
            heapq.heappush(heap, h)
            have.add(h)
        elif h > heap[0]:
            have.discard(heapq.heapreplace(heap, h))
            have.add(h)

    # counters
    sk.cot += int(feats.cot[ix].sum())
    sk.greedy += int(feats.greedy[ix].sum())
    sk.harvest += int(feats.harvest[ix].sum())
    sk.stream += int(feats.stream[ix].sum())
    sk.samples += int(feats.samples[ix].sum())
    texts = [feats.text[i] for i in idx]
    sk.prompt_chars += sum(map(len, texts))

    # _template (sequential: the table's pruning depends on every earlier row). Per row: the
    # shingles already at the floor count as hits, then every shingle's count goes up by one
    # (``_count_elements``: the dict increments of the sketch's loop, in the same order, in C).
    table = sk.shingles
    fmin, fshare = cfg.frequent_min, cfg.frequent_share
    need, size = cfg.templated_hits, cfg.shingle_table
    templated = 0
    zeros = repeat(0)
    for n, i in zip(ns, idx, strict=True):
        sh = feats.shingles[i]
        floor = float(max(fmin, fshare * n))  # counts are ints < 2**53: same comparisons
        templated += sum(map(floor.__le__, map(table.get, sh, zeros))) >= need
        _count_elements(table, sh)
        if len(table) > 2 * size:
            keep = sorted(table.items(), key=itemgetter(1), reverse=True)[:size]  # stable
            table = dict(keep)
    sk.shingles = table
    sk.templated += templated

    # topics (TopicSketch.observe: a running product of the decay, adds in row order)
    if sk.topics is None:
        sk.topics = tp.TopicSketch(cfg.topics)
    topics = feats.topic[ix]
    ts_ = sk.topics
    decay = 0.5 ** (1.0 / ts_.cfg.half_life)
    scales = np.multiply.accumulate(np.concatenate(([ts_._scale], np.full(m, decay))))[1:]
    if scales[-1] < 1e-150:  # the sketch folds its scale back in here: its own loop
        for t in topics.tolist():
            ts_.observe(t)
    else:
        seen = np.arange(ts_.seen + 1, ts_.seen + m + 1)
        has = topics >= 0
        early = has & (seen <= ts_.cfg.history)
        for t, c in Counter(topics[early].tolist()).items():
            ts_.early[t] += c
        recent = np.asarray(ts_._recent, dtype=np.float64)
        np.add.at(recent, topics[has], 1.0 / scales[has])
        ts_._recent = recent.tolist()
        for t, c in Counter(topics[has].tolist()).items():
            ts_.total[t] += c
        ts_.seen += m
        ts_._scale = float(scales[-1])

    # language: every k-th request's prompt (and its answer, when the answer is ok), read
    # for the batch by ``observe_rows`` (``lang_of[i]``: the row's languages, -1 none)
    status = [rows.status[i] for i in idx]
    answers = [rows.response_text[i] for i in idx]
    langs = sk.languages
    for j in range(language_offset(n0, cfg.language_every), m, cfg.language_every):
        for la in lang_of[idx[j]]:
            if la >= 0:
                langs[la] += 1

    # _model, _weight, _recent, _shape, _end_user: order-dependent (a model's first row and
    # the requests before it, the decay anchor moving, the space-saving shape table, the
    # end-user table's pruning), so the sketch's own methods, row by row, with ``sk.n`` as
    # ``observe`` has it after that row's increment
    models = [feats.model[i] for i in idx]
    topic_l = topics.tolist()
    shape_l = feats.shape[ix].tolist()
    users = feats.user
    model_, weight_, recent_, shape_, end_user_ = (
        sk._model,
        sk._weight,
        sk._recent,
        sk._shape,
        sk._end_user,
    )
    for n, i, t, model, topic, shape in zip(
        ns, idx, ts_list, models, topic_l, shape_l, strict=True
    ):
        sk.n = n
        model_(model, t)
        w = weight_(t)
        recent_(topic, w)
        shape_(shape, w)
        if users[i]:
            end_user_(feats.row(i), t)
    sk.n = n0 + m

    # reservoir: fill, then one draw of the account's RNG per request
    res, cap = sk.reservoir, cfg.reservoir
    rng = sk.rng
    for n, text in zip(ns, texts, strict=True):
        if len(res) < cap:
            res.append(text[:400])
        else:
            j = rng.randrange(n)
            if j < cap:
                res[j] = text[:400]

    # link keys
    _merge_counts(sk.prefixes, [prefix_of(rows.ip[i]) for i in idx], cfg.max_keys)
    _merge_counts(sk.user_agents, [u for i in idx if (u := rows.user_agent[i])], cfg.max_keys)
    _merge_counts(sk.payments, [p for i in idx if (p := rows.payment[i])], cfg.max_keys)

    # observe_response: failures, completion tokens (estimated from the answer when absent)
    tokens = [rows.completion_tokens[i] for i in idx]
    total, count = 0, 0
    for st, ct, resp in zip(status, tokens, answers, strict=True):
        if not 200 <= st < 300:
            sk.n_failed += 1
            continue
        if ct is None and resp is not None:
            ct = max(1, len(resp) // 4)
        if ct is not None:
            total += ct
            count += 1
    sk.completion_tokens += total
    sk.responses += count


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def observe_rows(
    sketch_of: Callable[[str], AccountSketch],
    table: pa.Table | pa.RecordBatch,
    cfg: SignalConfig,
    where: str,
    fast: bool | None = None,
) -> list[str]:
    """Fold the rows of ``table`` (arrival order within each account) into
    ``sketch_of(account)``; returns the rows' account ids (n,). Without the fast fold (the
    guard, or ``fast=False``): the reference, ``observe_record`` per validated record."""
    if not (fast_fold_ok() if fast is None else fast):
        accounts = []
        for rec in records_from_table(table, where):
            observe_record(sketch_of(rec.account_id), rec)
            accounts.append(rec.account_id)
        return accounts
    return observe_decoded(sketch_of, decode_rows(table, where), cfg)


def observe_decoded(
    sketch_of: Callable[[str], AccountSketch], rows: Rows, cfg: SignalConfig
) -> list[str]:
    """The fast fold of rows already decoded (``decode_rows`` or ``rows_of_records``)."""
    feats = batch_features(rows.request, cfg)
    accounts = rows.account_id
    groups: dict[str, list[int]] = {}
    for i, acct in enumerate(accounts):  # each account's rows, in row order
        g = groups.get(acct)
        if g is None:
            groups[acct] = [i]
        else:
            g.append(i)
    prefixes: dict[str, str] = {}

    def prefix_of(ip: str) -> str:
        p = prefixes.get(ip)
        if p is None:
            p = prefixes[ip] = sig.ip_prefix(ip)
        return p

    lang_of = _languages(groups, lambda a: sketch_of(a).n, rows, feats, cfg.language_every)
    for acct, idx in groups.items():
        observe_segment(sketch_of(acct), idx, rows, feats, prefix_of, lang_of)
    return accounts


def rows_of_records(records: list[TrafficRecord]) -> Rows:
    """The ``Rows`` of validated records (a JSON Lines reader's)."""
    return Rows(
        [r.account_id for r in records],
        [r.ts for r in records],
        [r.ip for r in records],
        [r.user_agent for r in records],
        [r.payment_fingerprint for r in records],
        [r.request for r in records],
        [r.status for r in records],
        [r.completion_tokens for r in records],
        [r.response_text for r in records],
    )


def collect_records(
    records: Iterable[TrafficRecord],
    cfg: SignalConfig,
    fast: bool | None = None,
    chunk: int = 8192,
) -> dict[str, AccountSketch]:
    """``offline.collect`` (without prefixes) in chunks of ``chunk`` records: the request
    features per chunk, the accounts' rows of a chunk folded at once."""
    hasher = MinHasher(cfg.minhash_k, cfg.seed)
    sketches: dict[str, AccountSketch] = {}

    def sketch_of(acct: str) -> AccountSketch:
        sk = sketches.get(acct)
        if sk is None:
            sk = sketches[acct] = new_sketch(cfg, hasher, acct)
        return sk

    if not (fast_fold_ok() if fast is None else fast):
        for rec in records:  # the reference (``offline.collect``)
            observe_record(sketch_of(rec.account_id), rec)
        return sketches
    it = iter(records)
    while batch := list(islice(it, chunk)):
        observe_decoded(sketch_of, rows_of_records(batch), cfg)
    return sketches


def sorted_sketches(
    batches: Iterable[pa.RecordBatch | pa.Table],
    cfg: SignalConfig,
    where: str,
    fast: bool | None = None,
) -> Iterator[tuple[str, AccountSketch]]:
    """Batches of rows sorted by ``(account_id, seq)``: each account's finished sketch, as soon
    as its last row is read (an account may span batches; memory: one batch + one sketch)."""
    hasher = MinHasher(cfg.minhash_k, cfg.seed)
    open_: dict[str, AccountSketch] = {}

    def sketch_of(acct: str) -> AccountSketch:
        sk = open_.get(acct)
        if sk is None:
            sk = open_[acct] = new_sketch(cfg, hasher, acct)
        return sk

    for batch in batches:
        if batch.num_rows == 0:
            continue
        accounts = observe_rows(sketch_of, batch, cfg, where, fast)
        last = accounts[-1]
        for acct in [a for a in open_ if a != last]:  # sorted input: these are complete
            yield acct, open_.pop(acct)
    yield from open_.items()


def collect_tables(
    tables: Iterable[tuple[pa.RecordBatch | pa.Table, str]],
    cfg: SignalConfig,
    fast: bool | None = None,
) -> dict[str, AccountSketch]:
    """``offline.collect`` over (table, where) pairs of rows in arrival order (the streaming
    engine; ``where`` names the file in errors)."""
    hasher = MinHasher(cfg.minhash_k, cfg.seed)
    sketches: dict[str, AccountSketch] = {}

    def sketch_of(acct: str) -> AccountSketch:
        sk = sketches.get(acct)
        if sk is None:
            sk = sketches[acct] = new_sketch(cfg, hasher, acct)
        return sk

    for t, where in tables:
        if t.num_rows:
            observe_rows(sketch_of, t, cfg, where, fast)
    return sketches
