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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from distillguard.errors import ConfigError, InputError
from distillguard.monitor.coordination import (
    ClusterTest,
    CoordinationConfig,
    coordination_tests,
)
from distillguard.monitor.links import (
    Cluster,
    LinkConfig,
    LinkKeys,
    find_clusters,
    minhash_tuple,
)
from distillguard.monitor.score import (
    ScoreModel,
    best_end_user,
    feature_vector,
    joint_p,
    merge_signals,
    reasons,
    tiered_score,
    without,
)
from distillguard.monitor.signals import (
    AccountSignals,
    AccountSketch,
    MinHasher,
    SignalConfig,
    new_sketch,
    observe_record,
)
from distillguard.monitor.trust import AccountInfo, TrustPolicy, creation_keys
from distillguard.traffic import (
    MAX_SKIP_EXAMPLES,
    JsonlWriter,
    ReadSummary,
    TrafficRecord,
    Verdict,
    read_traffic,
)


@dataclass(frozen=True)
class DecisionConfig:
    """How the two kinds of evidence become a flag (designed, not fitted on any generator)."""

    # Pooled topic breadth above which a coordinated cluster is "sweeping broad content":
    # a single-domain integration stays well below (one domain: ~0.1), a sweep of many
    # capability domains well above (half the lexicon evenly: ~0.75).
    broad_bar: float = 0.45
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)

    def __post_init__(self) -> None:
        if not 0 < self.broad_bar < 1:
            raise ConfigError("DecisionConfig.broad_bar must be within (0, 1)")


@dataclass(frozen=True)
class Context:
    """Population-level facts a verdict needs besides its own account."""

    tests: dict[str, ClusterTest]  # cluster id -> coordination test
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    accounts: dict[str, AccountInfo] | None = None  # the optional accounts file
    decision: DecisionConfig = field(default_factory=DecisionConfig)


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


# Request counts at which the online monitor's view of a growing account is sampled for
# fitting (its bar must clear honest accounts while they are young, not only when complete).
CHECKPOINTS = (20, 40, 80, 160, 320, 640, 1280, 2560, 5120)


def collect(
    records: Iterable[TrafficRecord],
    cfg: SignalConfig | None = None,
    progress: Callable[[int], None] | None = None,
    prefixes: dict[str, list[AccountSignals]] | None = None,
) -> dict[str, AccountSketch]:
    """One pass: fold every record into its account's sketch. With ``prefixes`` (a dict to
    fill), each account's signals at every ``CHECKPOINTS`` request count are kept too."""
    cfg = cfg or SignalConfig()
    hasher = MinHasher(cfg.minhash_k, cfg.seed)
    sketches: dict[str, AccountSketch] = {}
    marks = frozenset(CHECKPOINTS)
    for n, rec in enumerate(records, 1):
        sk = sketches.get(rec.account_id)
        if sk is None:
            sk = sketches[rec.account_id] = new_sketch(cfg, hasher, rec.account_id)
        observe_record(sk, rec)
        if prefixes is not None and sk.n in marks:
            prefixes.setdefault(rec.account_id, []).append(sk.signals())
        if progress is not None and n % 50_000 == 0:
            progress(50_000)
    return sketches


def account_views(
    signals: dict[str, AccountSignals],
    keys: dict[str, LinkKeys],
    link_cfg: LinkConfig | None = None,
) -> list[AccountView]:
    """Clusters of linked accounts and their merged signals, one view per account."""
    return views_with_clusters(signals, find_clusters(keys, link_cfg or LinkConfig()))


def views_with_clusters(
    signals: dict[str, AccountSignals], clusters: Iterable[Cluster]
) -> list[AccountView]:
    """``account_views`` for clusters found elsewhere (an engine's own links and connected
    components): the same pooling, one view per account in account order."""
    member_of: dict[str, tuple[Cluster, AccountSignals]] = {}
    for cl in clusters:
        pooled = merge_signals([signals[m] for m in cl.members])
        for m in cl.members:
            member_of[m] = (cl, pooled)
    views = []
    for a in sorted(signals):
        cluster, cluster_signals = member_of.get(a, (None, None))
        views.append(AccountView(a, signals[a], cluster, cluster_signals))
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


# A fold of records into account sketches (``collect`` without prefixes, or an engine's own).
Fold = Callable[[Iterable[TrafficRecord], SignalConfig], dict[str, AccountSketch]]


@dataclass(frozen=True)
class _PartResult:
    signals: dict[str, AccountSignals]
    keys: dict[str, LinkKeys]
    exchanges: int
    out_of_order: int
    summary: ReadSummary
    prefixes: dict[str, list[AccountSignals]] = field(default_factory=dict)


def _collect_part(
    path: str,
    part: int,
    parts: int,
    cfg: SignalConfig,
    link_cfg: LinkConfig,
    with_prefixes: bool = False,
    fold: Fold | None = None,
) -> _PartResult:
    reader = read_traffic(path, line_filter=_partition_filter(part, parts) if parts > 1 else None)
    prefixes: dict[str, list[AccountSignals]] | None = {} if with_prefixes else None
    if fold is not None and not with_prefixes:
        sketches = fold(reader, cfg)
    else:
        sketches = collect(reader, cfg, prefixes=prefixes)
    signals, keys = read_out(sketches, link_cfg)
    return _PartResult(
        signals,
        keys,
        sum(sk.n for sk in sketches.values()),
        sum(sk.out_of_order for sk in sketches.values()),
        reader.summary(),
        prefixes or {},
    )


def collect_file(
    path: Path,
    *,
    workers: int = 1,
    cfg: SignalConfig | None = None,
    link_cfg: LinkConfig | None = None,
    with_prefixes: bool = False,
    fold: Fold | None = None,
) -> _PartResult:
    """Signals and link keys of every account in the log at ``path`` (and, with
    ``with_prefixes``, its signals at each of ``CHECKPOINTS``). ``fold`` replaces
    :func:`collect` without prefixes (the engines' batched fold, equal to it).

    With ``workers`` > 1 the accounts are split by a hash of their id and each worker
    process reads the file, parsing only its own accounts' lines (a raw byte search finds
    the id); results are merged. Every line is counted exactly once.
    """
    cfg, link_cfg = cfg or SignalConfig(), link_cfg or LinkConfig()
    if workers <= 1:
        return _collect_part(str(path), 0, 1, cfg, link_cfg, with_prefixes, fold)
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
                [with_prefixes] * workers,
                [fold] * workers,
            )
        )
    signals: dict[str, AccountSignals] = {}
    keys: dict[str, LinkKeys] = {}
    prefixes: dict[str, list[AccountSignals]] = {}
    for p in parts:
        signals.update(p.signals)
        keys.update(p.keys)
        prefixes.update(p.prefixes)
    examples = sorted((e for p in parts for e in p.summary.examples), key=lambda e: e.line_no)
    summary = ReadSummary(
        str(path),
        parts[0].summary.lines,
        sum(p.summary.records for p in parts),
        sum(p.summary.skipped for p in parts),
        tuple(examples[:MAX_SKIP_EXAMPLES]),
    )
    return _PartResult(
        signals,
        keys,
        sum(p.exchanges for p in parts),
        sum(p.out_of_order for p in parts),
        summary,
        prefixes,
    )


def verdict_of(view: AccountView, model: ScoreModel, ctx: Context | None = None) -> Verdict:
    """Content score (own or the cluster's, whichever is higher) and coordination, with the
    reasons behind whichever decided; the account's trust tier raises both bars."""
    ctx = ctx or Context({})
    info = ctx.accounts.get(view.account_id) if ctx.accounts else None
    offset = ctx.trust.offset(view.account_id, info)
    granted = ctx.trust.granted(view.account_id, info)
    created = info.created_ts if info is not None else None
    x = without(feature_vector(view.signals, 1, created), granted)
    own = tiered_score(model, x, offset)
    score, why = own, None
    eu = best_end_user(model, view.signals, granted, offset)
    if eu is not None and eu[0] > own:
        score = own = eu[0]
        why = (
            f"end user {eu[1]!r} of this account ({eu[3].requests:,} requests), judged on its own:",
            *reasons(model, eu[2], eu[3]),
        )
    coordinated = False
    if view.cluster is not None and view.cluster_signals is not None:
        n = len(view.cluster.members)
        merged = view.cluster_signals
        # A verified organization holding the cluster's majority explains its links: its
        # members are separate people of one org (a cohort, a team), not one actor pooled.
        org = ctx.trust.explaining_org(view.cluster.members, ctx.accounts)
        xc = without(feature_vector(merged, n, _cluster_created(view, ctx)), granted)
        cs = tiered_score(model, xc, offset) if org is None else 0.0
        shared = ", ".join(view.cluster.evidence)
        linked = f"linked with {n - 1} other accounts (shared {shared})"
        if cs > own:
            score = cs
            why = (*reasons(model, xc, merged, n, view.cluster.evidence), linked)
        test = ctx.tests.get(view.cluster.cluster_id)
        alpha = ctx.decision.coordination.alpha * 10.0 ** (-offset)
        if (
            test is not None
            and org is None
            and test.p_value <= alpha
            and merged.topic_breadth >= ctx.decision.broad_bar
        ):
            coordinated = True
            score = max(score, 1.0 - test.p_value)
            why = (
                f"coordinated cluster of {n} accounts: p = {test.p_value:.1e} that chance "
                f"links a cluster this large (shared {shared})",
                f"the cluster sweeps broad content (breadth {merged.topic_breadth:.2f} "
                f"over {int(sum(merged.topic_counts))} topical prompts)",
                *_age_reason(view, ctx),
            )
        elif (
            test is not None
            and org is None
            and merged.topic_breadth >= ctx.decision.broad_bar
            and (pj := joint_p(test.p_value, 1.0 - cs)) < 1.0 - score
        ):
            # Neither line of evidence alone, both together: the links' chance p-value and
            # the pooled content's p-value against honest accounts (Fisher's combination).
            score = 1.0 - pj
            why = (
                f"linked cluster of {n} accounts (shared {shared}): p = {test.p_value:.1e} "
                f"that chance links a cluster this large, and its pooled content p = "
                f"{1.0 - cs:.1e} against honest accounts; together p = {pj:.1e}",
                *reasons(model, xc, merged, n, view.cluster.evidence),
                *_age_reason(view, ctx),
            )
    if why is None:
        why = reasons(model, x, view.signals)
    flagged = coordinated or score >= model.threshold
    if flagged and not coordinated:
        p = model.p_honest(score)
        if p is not None:
            why = (*why, f"p = {p:.1e} against honest accounts of the fitting generator")
    if granted and (flagged or score >= model.threshold / 2):
        why = (*why, f"access by trust tier: {', '.join(granted)} not counted as evidence")
    if offset and (flagged or score >= model.threshold / 2):
        why = (
            *why,
            f"trust tier {ctx.trust.tier_of(view.account_id, info)} "
            f"(+{offset:g} log-odds required)",
        )
    return Verdict(
        account_id=view.account_id,
        score=float(round(min(1.0, max(0.0, score)), 6)),
        flagged=flagged,
        cluster_id=view.cluster.cluster_id if view.cluster else None,
        reasons=why if flagged or score >= model.threshold / 2 else (),
    )


def _cluster_created(view: AccountView, ctx: Context) -> float | None:
    """The oldest member's creation time (a cluster is as old as its oldest account)."""
    if not ctx.accounts or view.cluster is None:
        return None
    times = [
        i.created_ts
        for m in view.cluster.members
        if (i := ctx.accounts.get(m)) is not None and i.created_ts is not None
    ]
    return min(times) if times else None


def _age_reason(view: AccountView, ctx: Context) -> tuple[str, ...]:
    if not ctx.accounts or view.cluster is None:
        return ()
    infos = [ctx.accounts.get(m) for m in view.cluster.members]
    ages = [
        (view.cluster_signals.first_ts - i.created_ts) / 86_400.0  # type: ignore[union-attr]
        for i in infos
        if i is not None and i.created_ts is not None
    ]
    young = sum(a <= ctx.trust.young_days for a in ages)
    if not young:
        return ()
    return (
        f"{young} of {len(view.cluster.members)} accounts were created at most "
        f"{ctx.trust.young_days:g} days before the cluster's first request",
    )


def score_views(
    views: list[AccountView],
    model: ScoreModel,
    ctx: Context | None = None,
) -> tuple[tuple[Verdict, ...], tuple[Cluster, ...]]:
    verdicts = tuple(verdict_of(v, model, ctx) for v in views)
    clusters = tuple({v.cluster.cluster_id: v.cluster for v in views if v.cluster}.values())
    return verdicts, clusters


def with_creation_keys(
    keys: dict[str, LinkKeys],
    signals: dict[str, AccountSignals],
    accounts: dict[str, AccountInfo] | None,
    young_days: float,
) -> dict[str, LinkKeys]:
    """Link keys plus account-creation bursts from the accounts file (unchanged without)."""
    if not accounts:
        return keys
    created = creation_keys(accounts, {a: s.first_ts for a, s in signals.items()}, young_days)
    return {a: replace(k, created=created.get(a, frozenset())) for a, k in keys.items()}


def context_for(
    views: list[AccountView],
    keys: dict[str, LinkKeys],
    *,
    link_cfg: LinkConfig | None = None,
    trust: TrustPolicy | None = None,
    accounts: dict[str, AccountInfo] | None = None,
    decision: DecisionConfig | None = None,
) -> Context:
    """Run the coordination test over the population's clusters once."""
    decision = decision or DecisionConfig()
    clusters = list({v.cluster.cluster_id: v.cluster for v in views if v.cluster}.values())
    tests = coordination_tests(keys, clusters, link_cfg, decision.coordination)
    return Context(tests, trust or TrustPolicy(), accounts, decision)


def score_records(
    records: Iterable[TrafficRecord],
    *,
    model: ScoreModel | None = None,
    signal_cfg: SignalConfig | None = None,
    link_cfg: LinkConfig | None = None,
    progress: Callable[[int], None] | None = None,
    trust: TrustPolicy | None = None,
    accounts: dict[str, AccountInfo] | None = None,
    decision: DecisionConfig | None = None,
) -> ScoreReport:
    """Score records from any source (a reader, the database, a list)."""
    model = model or ScoreModel.load()
    t0 = time.perf_counter()
    sketches = collect(records, signal_cfg, progress)
    signals, keys = read_out(sketches, link_cfg)
    keys = with_creation_keys(keys, signals, accounts, (trust or TrustPolicy()).young_days)
    views = account_views(signals, keys, link_cfg)
    ctx = context_for(
        views, keys, link_cfg=link_cfg, trust=trust, accounts=accounts, decision=decision
    )
    verdicts, clusters = score_views(views, model, ctx)
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
    trust: TrustPolicy | None = None,
    accounts: dict[str, AccountInfo] | None = None,
    decision: DecisionConfig | None = None,
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
    keys = with_creation_keys(res.keys, res.signals, accounts, (trust or TrustPolicy()).young_days)
    views = account_views(res.signals, keys, link_cfg)
    ctx = context_for(
        views, keys, link_cfg=link_cfg, trust=trust, accounts=accounts, decision=decision
    )
    verdicts, clusters = score_views(views, model, ctx)
    if out is not None:
        with JsonlWriter(out) as w:
            for v in verdicts:
                w.write(v)
    return ScoreReport(
        verdicts, clusters, summary, res.exchanges, time.perf_counter() - t0, res.out_of_order
    )


def feature_matrix(
    views: list[AccountView],
    *,
    trust: TrustPolicy | None = None,
    accounts: dict[str, AccountInfo] | None = None,
) -> tuple[np.ndarray, list[str], list[str | None]]:
    """(N, F) own features of every account, plus one row per cluster (merged) that no
    verified organization explains, as the scorer sees them (trust grants applied).

    Returns the matrix, the account id of each row (the first member for cluster rows) and
    the cluster id of each row (None for own rows).
    """
    trust = trust or TrustPolicy()
    ctx = Context({}, trust, accounts)
    rows: list[np.ndarray] = []
    ids: list[str] = []
    cids: list[str | None] = []
    seen = set()
    for v in views:
        info = accounts.get(v.account_id) if accounts else None
        granted = trust.granted(v.account_id, info)
        created = info.created_ts if info is not None else None
        rows.append(without(feature_vector(v.signals, 1, created), granted))
        ids.append(v.account_id)
        cids.append(None)
        for _user, usig in v.signals.end_users:  # end users are judged like accounts
            rows.append(without(feature_vector(usig), granted))
            ids.append(v.account_id)
            cids.append(None)
        cl = v.cluster
        if cl is not None and cl.cluster_id not in seen and v.cluster_signals:
            seen.add(cl.cluster_id)
            if trust.explaining_org(cl.members, accounts) is not None:
                continue
            x = feature_vector(v.cluster_signals, len(cl.members), _cluster_created(v, ctx))
            rows.append(without(x, granted))
            ids.append(v.account_id)
            cids.append(cl.cluster_id)
    return np.array(rows), ids, cids


def fit_on_traffic(
    traffic: Path,
    labels: Path,
    *,
    generator: str,
    split: str,
    target_fpr: float = 1e-3,
    workers: int = 1,
    accounts: dict[str, AccountInfo] | None = None,
) -> ScoreModel:
    """Fit the content model on a labelled log (see ``fit_on_signals``)."""
    from distillguard.traffic import read_labels

    res = collect_file(Path(traffic), workers=workers, with_prefixes=True)
    labs = {lab.account_id: lab.label for lab in read_labels(labels)}
    missing = [a for a in res.signals if a not in labs]
    if missing:
        raise InputError(f"{labels}: no label for {len(missing)} accounts (e.g. {missing[0]})")
    return fit_on_signals(
        res.signals,
        res.keys,
        labs,
        exchanges=res.exchanges,
        generator=generator,
        split=split,
        target_fpr=target_fpr,
        prefixes=res.prefixes,
        accounts=accounts,
    )


def fit_on_signals(
    signals: dict[str, AccountSignals],
    keys: dict[str, LinkKeys],
    labels: dict[str, str],
    *,
    exchanges: int,
    generator: str,
    split: str,
    target_fpr: float = 1e-3,
    prefixes: dict[str, list[AccountSignals]] | None = None,
    accounts: dict[str, AccountInfo] | None = None,
    trust: TrustPolicy | None = None,
) -> ScoreModel:
    """The honest reference of one labelled population: one row per account plus one merged
    row per linked cluster (labelled by the majority of its members); ``labels`` maps account
    -> "honest" | "campaign". Honest accounts' ``prefixes`` (signals at ``CHECKPOINTS``) set
    the online bar. Provenance (generator, split, date, counts, features, target FPR) goes
    into the model."""
    import time as _time

    from distillguard.monitor.score import fit_model

    trust = trust or TrustPolicy()
    keys = with_creation_keys(keys, signals, accounts, trust.young_days)
    views = account_views(signals, keys)
    xs, ids, cids = feature_matrix(views, trust=trust, accounts=accounts)
    members = {v.cluster.cluster_id: v.cluster.members for v in views if v.cluster}
    ys = []
    for a, c in zip(ids, cids, strict=True):
        if c is None:
            ys.append(labels[a] == "campaign")
        else:
            m = [labels[x] == "campaign" for x in members[c]]
            ys.append(sum(m) * 2 > len(m))
    prefix_rows = []
    for a, sigs in (prefixes or {}).items():
        if labels.get(a) != "honest":
            continue
        info = accounts.get(a) if accounts else None
        granted = trust.granted(a, info)
        created = info.created_ts if info is not None else None
        prefix_rows += [without(feature_vector(s, 1, created), granted) for s in sigs]
    date = _time.strftime("%Y-%m-%d")
    y = np.array(ys, dtype=int)
    return fit_model(
        xs,
        y,
        target_fpr=target_fpr,
        prefix_rows=np.array(prefix_rows) if prefix_rows else None,
        fitted_on=f"generator {generator}, {split} split, {len(views)} accounts, "
        f"{exchanges} exchanges, {date}",
        provenance={
            "generator": generator,
            "split": split,
            "date": date,
            "accounts": len(views),
            "exchanges": exchanges,
            "honest_rows": int((y == 0).sum()),
            "campaign_rows": int(y.sum()),
            "accounts_file": accounts is not None,
        },
    )
