"""The offline detector: one streaming pass over a traffic log, then links, clusters, scores.

Reads only the traffic fields of the spec (``distillguard.traffic``): never labels, personas
or anything a simulator knows. Memory is one bounded ``AccountSketch`` per account, whatever
the size of the log; records may come in any order (late arrivals are counted, and kept out
of the inter-arrival moments only).
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillguard.errors import InputError
from distillguard.monitor.links import (
    Cluster,
    LinkConfig,
    LinkKeys,
    find_clusters,
    minhash_tuple,
)
from distillguard.monitor.score import ScoreModel, feature_vector, merge_signals, reasons
from distillguard.monitor.signals import (
    AccountSignals,
    AccountSketch,
    MinHasher,
    SignalConfig,
    new_sketch,
    observe_record,
)
from distillguard.traffic import (
    MAX_SKIP_EXAMPLES,
    JsonlWriter,
    ReadSummary,
    TrafficRecord,
    Verdict,
    read_traffic,
)


@dataclass(frozen=True)
class AccountView:
    """Everything the scorer knows about one account after the pass."""

    account_id: str
    signals: AccountSignals
    cluster: Cluster | None
    cluster_signals: AccountSignals | None  # merged over the cluster's members


@dataclass(frozen=True)
class ScoreReport:
    verdicts: tuple[Verdict, ...]
    clusters: tuple[Cluster, ...]
    read: ReadSummary | None  # None when records did not come from a file
    exchanges: int
    seconds: float
    out_of_order: int  # records earlier than one already seen for their account


def link_keys(sk: AccountSketch, cfg: LinkConfig) -> LinkKeys:
    return LinkKeys(
        payments=frozenset(sk.payments),
        prefixes=frozenset(sk.prefixes),
        user_agents=frozenset(sk.user_agents),
        shingles=sk.frequent_shingles(),
        minhash=minhash_tuple(sk.bottom_k(), sk.buckets, cfg),
    )


def collect(
    records: Iterable[TrafficRecord],
    cfg: SignalConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, AccountSketch]:
    """One pass: fold every record into its account's sketch."""
    cfg = cfg or SignalConfig()
    hasher = MinHasher(cfg.minhash_k, cfg.seed)
    sketches: dict[str, AccountSketch] = {}
    for n, rec in enumerate(records, 1):
        sk = sketches.get(rec.account_id)
        if sk is None:
            sk = sketches[rec.account_id] = new_sketch(cfg, hasher, rec.account_id)
        observe_record(sk, rec)
        if progress is not None and n % 50_000 == 0:
            progress(50_000)
    return sketches


def account_views(
    signals: dict[str, AccountSignals],
    keys: dict[str, LinkKeys],
    link_cfg: LinkConfig | None = None,
) -> list[AccountView]:
    """Clusters of linked accounts and their merged signals, one view per account."""
    link_cfg = link_cfg or LinkConfig()
    clusters = find_clusters(keys, link_cfg)
    member_of: dict[str, tuple[Cluster, AccountSignals]] = {}
    for c in clusters:
        merged = merge_signals([signals[m] for m in c.members])
        for m in c.members:
            member_of[m] = (c, merged)
    views = []
    c: Cluster | None
    merged: AccountSignals | None
    for a in sorted(signals):
        c, merged = member_of.get(a) or (None, None)
        views.append(AccountView(a, signals[a], c, merged))
    return views


def read_out(
    sketches: dict[str, AccountSketch],
    link_cfg: LinkConfig | None = None,
) -> tuple[dict[str, AccountSignals], dict[str, LinkKeys]]:
    """Signals and link keys of every sketch (what scoring needs; small and picklable)."""
    link_cfg = link_cfg or LinkConfig()
    return (
        {a: sk.signals() for a, sk in sketches.items()},
        {a: link_keys(sk, link_cfg) for a, sk in sketches.items()},
    )


_ACCOUNT_FIELD = re.compile(rb'"account_id"\s*:\s*"([^"\\]*)"')


def _partition_filter(part: int, parts: int) -> Callable[[bytes], bool]:
    """Keep the lines whose account hashes to ``part``; lines without a readable account id
    go to part 0, which parses them (and counts them if they are malformed)."""

    def keep(raw: bytes) -> bool:
        m = _ACCOUNT_FIELD.search(raw)
        if m is None:
            return part == 0
        return zlib.crc32(m.group(1)) % parts == part

    return keep


@dataclass(frozen=True)
class _PartResult:
    signals: dict[str, AccountSignals]
    keys: dict[str, LinkKeys]
    exchanges: int
    out_of_order: int
    summary: ReadSummary


def _collect_part(
    path: str, part: int, parts: int, cfg: SignalConfig, link_cfg: LinkConfig
) -> _PartResult:
    reader = read_traffic(path, line_filter=_partition_filter(part, parts) if parts > 1 else None)
    sketches = collect(reader, cfg)
    signals, keys = read_out(sketches, link_cfg)
    return _PartResult(
        signals,
        keys,
        sum(sk.n for sk in sketches.values()),
        sum(sk.out_of_order for sk in sketches.values()),
        reader.summary(),
    )


def collect_file(
    path: Path,
    *,
    workers: int = 1,
    cfg: SignalConfig | None = None,
    link_cfg: LinkConfig | None = None,
) -> _PartResult:
    """Signals and link keys of every account in the log at ``path``.

    With ``workers`` > 1 the accounts are split by a hash of their id and each worker
    process reads the file, parsing only its own accounts' lines (a raw byte search finds
    the id); results are merged. Every line is counted exactly once.
    """
    cfg, link_cfg = cfg or SignalConfig(), link_cfg or LinkConfig()
    if workers <= 1:
        return _collect_part(str(path), 0, 1, cfg, link_cfg)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        parts = list(
            pool.map(
                _collect_part,
                [str(path)] * workers,
                range(workers),
                [workers] * workers,
                [cfg] * workers,
                [link_cfg] * workers,
            )
        )
    signals: dict[str, AccountSignals] = {}
    keys: dict[str, LinkKeys] = {}
    for p in parts:
        signals.update(p.signals)
        keys.update(p.keys)
    examples = sorted((e for p in parts for e in p.summary.examples), key=lambda e: e.line_no)
    summary = ReadSummary(
        str(path),
        parts[0].summary.lines,
        sum(p.summary.records for p in parts),
        sum(p.summary.skipped for p in parts),
        tuple(examples[:MAX_SKIP_EXAMPLES]),
    )
    return _PartResult(
        signals, keys, sum(p.exchanges for p in parts), sum(p.out_of_order for p in parts), summary
    )


def verdict_of(view: AccountView, model: ScoreModel) -> Verdict:
    """Own score or the cluster's, whichever is higher, with the reasons behind it."""
    x = feature_vector(view.signals)
    own = model.score(x)
    score, why = own, None
    if view.cluster is not None and view.cluster_signals is not None:
        n = len(view.cluster.members)
        xc = feature_vector(view.cluster_signals, n)
        cs = model.score(xc)
        if cs > own:
            score = cs
            why = reasons(model, xc, view.cluster_signals, n, view.cluster.evidence)
            if not any(r.startswith("acts with") for r in why):
                why = (
                    *why,
                    f"linked with {n - 1} other accounts "
                    f"(shared {', '.join(view.cluster.evidence)})",
                )
    if why is None:
        why = reasons(model, x, view.signals)
    flagged = score >= model.threshold
    return Verdict(
        account_id=view.account_id,
        score=float(round(score, 6)),
        flagged=flagged,
        cluster_id=view.cluster.cluster_id if view.cluster else None,
        reasons=why if flagged or score >= model.threshold / 2 else (),
    )


def score_views(
    views: list[AccountView],
    model: ScoreModel,
) -> tuple[tuple[Verdict, ...], tuple[Cluster, ...]]:
    verdicts = tuple(verdict_of(v, model) for v in views)
    clusters = tuple({v.cluster.cluster_id: v.cluster for v in views if v.cluster}.values())
    return verdicts, clusters


def score_records(
    records: Iterable[TrafficRecord],
    *,
    model: ScoreModel | None = None,
    signal_cfg: SignalConfig | None = None,
    link_cfg: LinkConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScoreReport:
    """Score records from any source (a reader, the database, a list)."""
    model = model or ScoreModel.load()
    t0 = time.perf_counter()
    sketches = collect(records, signal_cfg, progress)
    signals, keys = read_out(sketches, link_cfg)
    verdicts, clusters = score_views(account_views(signals, keys, link_cfg), model)
    return ScoreReport(
        verdicts=verdicts,
        clusters=clusters,
        read=None,
        exchanges=sum(sk.n for sk in sketches.values()),
        seconds=time.perf_counter() - t0,
        out_of_order=sum(sk.out_of_order for sk in sketches.values()),
    )


def default_workers(path: Path) -> int:
    """One process per core for big logs (over 64 MB); small ones are not worth the fork."""
    try:
        big = path.stat().st_size > 64 * 1024 * 1024
    except OSError:
        big = False
    return max(1, min(os.cpu_count() or 1, 8)) if big else 1


def score_traffic(
    path: Path,
    out: Path | None = None,
    *,
    model: ScoreModel | None = None,
    workers: int | None = None,
    signal_cfg: SignalConfig | None = None,
    link_cfg: LinkConfig | None = None,
) -> ScoreReport:
    """Score the traffic log at ``path``; write one verdict per account to ``out``."""
    model = model or ScoreModel.load()
    t0 = time.perf_counter()
    res = collect_file(
        Path(path),
        workers=workers or default_workers(Path(path)),
        cfg=signal_cfg,
        link_cfg=link_cfg,
    )
    summary = res.summary
    if summary.records == 0:
        raise InputError(
            f"{path}: no valid traffic records ({summary.lines:,} lines, "
            f"{summary.skipped:,} skipped)"
            + (
                f"; first problem: line {summary.examples[0].line_no}: {summary.examples[0].reason}"
                if summary.examples
                else ""
            )
        )
    verdicts, clusters = score_views(account_views(res.signals, res.keys, link_cfg), model)
    if out is not None:
        with JsonlWriter(out) as w:
            for v in verdicts:
                w.write(v)
    return ScoreReport(
        verdicts, clusters, summary, res.exchanges, time.perf_counter() - t0, res.out_of_order
    )


def feature_matrix(views: list[AccountView]) -> tuple[np.ndarray, list[str], list[str | None]]:
    """(N, F) own features of every account, plus one row per cluster (merged), for fitting.

    Returns the matrix, the account id of each row (the first member for cluster rows) and
    the cluster id of each row (None for own rows).
    """
    rows: list[np.ndarray] = []
    ids: list[str] = []
    cids: list[str | None] = []
    seen = set()
    for v in views:
        rows.append(feature_vector(v.signals))
        ids.append(v.account_id)
        cids.append(None)
        if v.cluster is not None and v.cluster.cluster_id not in seen and v.cluster_signals:
            seen.add(v.cluster.cluster_id)
            rows.append(feature_vector(v.cluster_signals, len(v.cluster.members)))
            ids.append(v.account_id)
            cids.append(v.cluster.cluster_id)
    return np.array(rows), ids, cids
