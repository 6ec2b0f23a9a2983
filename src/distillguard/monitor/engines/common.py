"""What the DuckDB and Spark engines share: the per-account fold, the link SQL, the verdicts.

Equality with the streaming engine holds by construction. The engines differ only in how the
log is read, partitioned, ordered and joined; every account's exchanges still go, in ``seq``
(arrival) order, through the same ``AccountSketch`` / ``observe_record`` (``fold_account``),
and the verdicts come from the same ``views_with_clusters`` / ``context_for`` /
``score_views``. The cross-account links are one SQL text (``LINK_SQL``) that both engines
run; it restates ``links.pair_evidence`` + ``links.link_weight`` (same cap on a key's
accounts, same minimum counts, the weights summed in ``KINDS`` order so the float sum is the
same), and the engines' connected components must equal ``links.find_clusters``' union-find
(tests/monitor/test_engines.py checks both on every persona).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from distillguard.errors import InputError
from distillguard.monitor.engines.fold import sorted_sketches
from distillguard.monitor.links import KINDS, Cluster, LinkConfig, LinkKeys, cluster_id_of
from distillguard.monitor.offline import (
    AccountView,
    DecisionConfig,
    ScoreReport,
    account_views,
    context_for,
    link_keys,
    read_out,
    score_views,
    views_with_clusters,
    with_creation_keys,
)
from distillguard.monitor.score import ScoreModel
from distillguard.monitor.signals import (
    AccountSignals,
    AccountSketch,
    MinHasher,
    SignalConfig,
    new_sketch,
    observe_record,
)
from distillguard.monitor.trust import AccountInfo, TrustPolicy
from distillguard.traffic import ReadSummary, TrafficRecord, Verdict

# The order an engine folds rows in: an account's rows together, in arrival (``seq``) order.
ENGINE_ORDER = "account_id, seq"


@dataclass(frozen=True)
class Folded:
    """One account after its pass: what scoring and linking need (small, picklable)."""

    account_id: str
    signals: AccountSignals
    keys: LinkKeys
    exchanges: int
    out_of_order: int


def fold_account(
    account_id: str,
    records: Iterable[TrafficRecord],
    cfg: SignalConfig,
    link_cfg: LinkConfig,
) -> Folded:
    """The streaming engine's per-account work, for one account's records in arrival order."""
    sk = new_sketch(cfg, MinHasher(cfg.minhash_k, cfg.seed), account_id)
    for rec in records:
        observe_record(sk, rec)
    return Folded(account_id, sk.signals(), link_keys(sk, link_cfg), sk.n, sk.out_of_order)


def fold_sorted_batches(
    batches: Iterable[pa.RecordBatch | pa.Table],
    cfg: SignalConfig,
    link_cfg: LinkConfig,
    where: str,
) -> Iterator[Folded]:
    """Fold batches of rows sorted by (account_id, seq): one ``Folded`` per account, equal to
    ``fold_account`` over its records (request features computed per batch: ``vectorized``)."""
    for acct, sk in sorted_sketches(batches, cfg, where):
        yield Folded(acct, sk.signals(), link_keys(sk, link_cfg), sk.n, sk.out_of_order)


# --------------------------------------------------------------------------------------------
# Links as SQL (DuckDB and Spark SQL both run this text)
# --------------------------------------------------------------------------------------------


def key_rows(keys: dict[str, LinkKeys]) -> pa.Table:
    """(account, kind, key) rows of every account's link keys (keys as text)."""
    accounts: list[str] = []
    kinds: list[str] = []
    values: list[str] = []
    for acct, lk in keys.items():
        per_kind: dict[str, Iterable[object]] = {
            "payment": lk.payments,
            "ip_prefix": lk.prefixes,
            "user_agent": lk.user_agents,
            "template": lk.shingles,
            "timing": lk.minhash or (),
            "created": lk.created,
        }
        for kind, vals in per_kind.items():
            for v in vals:
                accounts.append(acct)
                kinds.append(kind)
                values.append(str(v))
    return pa.table(
        {"account": accounts, "kind": kinds, "key": values},
        schema=pa.schema([("account", pa.string()), ("kind", pa.string()), ("key", pa.string())]),
    )


def _lit(x: float) -> str:
    return f"CAST('{x!r}' AS DOUBLE)"  # exact binary value in both engines


def link_sql(cfg: LinkConfig, accounts: int, table: str = "link_keys") -> str:
    """Linked pairs (a < b) with one boolean per kind that counted: ``pair_evidence`` +
    ``link_weight`` + the threshold of ``find_clusters``."""
    cap = min(cfg.max_key_accounts, max(60, int(cfg.max_key_share * accounts)))
    minimum = {"template": cfg.min_shared_shingles, "timing": cfg.min_sync_bands}
    counts = ",\n".join(f"SUM(CASE WHEN x.kind = '{k}' THEN 1 ELSE 0 END) AS n_{k}" for k in KINDS)
    flags = ",\n".join(f"n_{k} >= {minimum.get(k, 1)} AS has_{k}" for k in KINDS)
    weight = " + ".join(
        [_lit(0.0)]
        + [f"CASE WHEN has_{k} THEN {_lit(getattr(cfg, k))} ELSE {_lit(0.0)} END" for k in KINDS]
    )
    has = ", ".join(f"has_{k}" for k in KINDS)
    return f"""
WITH informative AS (
  SELECT kind, key FROM {table} GROUP BY kind, key
  HAVING COUNT(*) >= 2 AND COUNT(*) <= {cap}
), k AS (
  SELECT t.account, t.kind, t.key FROM {table} t
  JOIN informative i ON t.kind = i.kind AND t.key = i.key
), shared AS (
  SELECT x.account AS a, y.account AS b,
{counts}
  FROM k x JOIN k y ON x.kind = y.kind AND x.key = y.key AND x.account < y.account
  GROUP BY x.account, y.account
), flagged AS (
  SELECT a, b,
{flags}
  FROM shared
), weighted AS (
  SELECT a, b, {has}, {weight} AS weight FROM flagged
)
SELECT a, b, {has} FROM weighted WHERE weight >= {_lit(cfg.link_threshold)}
"""


# One step of min-label propagation over the linked pairs (``edges``) and labels (``labels``).
PROPAGATE_SQL = """
SELECT v, MIN(l) AS l FROM (
  SELECT v, l FROM labels
  UNION ALL SELECT e.a AS v, lb.l AS l FROM edges e JOIN labels lb ON lb.v = e.b
  UNION ALL SELECT e.b AS v, la.l AS l FROM edges e JOIN labels la ON la.v = e.a
) t GROUP BY v
"""
INIT_LABELS_SQL = (
    "SELECT v, v AS l FROM (SELECT a AS v FROM edges UNION SELECT b AS v FROM edges) t"
)
EVIDENCE_SQL = ", ".join(f"MAX(CASE WHEN has_{k} THEN 1 ELSE 0 END) AS e_{k}" for k in KINDS)
CLUSTER_EVIDENCE_SQL = f"""
SELECT lb.l AS root, {EVIDENCE_SQL}
FROM edges e JOIN labels lb ON lb.v = e.a GROUP BY lb.l
"""


def clusters_of(
    labels: Iterable[tuple[str, str]], evidence: Iterable[tuple[str, ...]]
) -> list[Cluster]:
    """Clusters from an engine's (account, component label) rows and per-label evidence rows
    (label, 0/1 per kind in ``KINDS`` order), in ``find_clusters``' order."""
    members: dict[str, list[str]] = {}
    for v, label in labels:
        members.setdefault(label, []).append(v)
    kinds = {
        row[0]: tuple(k for k, flag in zip(KINDS, row[1:], strict=True) if flag) for row in evidence
    }
    out = [
        Cluster(cluster_id_of(ms), tuple(sorted(ms)), kinds.get(label, ()))
        for label, ms in members.items()
        if len(ms) > 1
    ]
    return sorted(out, key=lambda c: (-len(c.members), c.cluster_id))


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineOptions:
    """What every engine is told besides the log (the streaming engine's keywords)."""

    model: ScoreModel
    signal_cfg: SignalConfig
    link_cfg: LinkConfig
    trust: TrustPolicy
    accounts: dict[str, AccountInfo] | None
    decision: DecisionConfig | None


def judge(
    views: list[AccountView], keys: dict[str, LinkKeys], opts: EngineOptions
) -> tuple[tuple[Verdict, ...], tuple[Cluster, ...]]:
    """``offline``'s verdicts on linked accounts, under the engine's options."""
    ctx = context_for(
        views,
        keys,
        link_cfg=opts.link_cfg,
        trust=opts.trust,
        accounts=opts.accounts,
        decision=opts.decision,
    )
    return score_views(views, opts.model, ctx)


def judge_accounts(
    signals: dict[str, AccountSignals], keys: dict[str, LinkKeys], opts: EngineOptions
) -> tuple[tuple[Verdict, ...], tuple[Cluster, ...]]:
    """Link the accounts in process (``account_views``), then :func:`judge` them."""
    keys = with_creation_keys(keys, signals, opts.accounts, opts.trust.young_days)
    return judge(account_views(signals, keys, opts.link_cfg), keys, opts)


def finish(
    folded: dict[str, Folded],
    clusters_for: Callable[[dict[str, LinkKeys]], list[Cluster]],
    opts: EngineOptions,
    source: Path,
    rows: int,
    t0: float,
) -> ScoreReport:
    """Verdicts from the folded accounts; ``clusters_for(keys)`` is the engine's link job."""
    if not folded:
        raise InputError(f"{source}: no traffic records ({rows:,} rows)")
    signals = {a: f.signals for a, f in folded.items()}
    keys = {a: f.keys for a, f in folded.items()}
    keys = with_creation_keys(keys, signals, opts.accounts, opts.trust.young_days)
    clusters = clusters_for(keys)
    views = views_with_clusters(signals, clusters)
    verdicts, found = judge(views, keys, opts)
    exchanges = sum(f.exchanges for f in folded.values())
    return ScoreReport(
        verdicts,
        found,
        ReadSummary(str(source), rows, exchanges, 0, ()),
        exchanges,
        time.perf_counter() - t0,
        sum(f.out_of_order for f in folded.values()),
    )


def score_sketches(
    sketches: dict[str, AccountSketch],
    opts: EngineOptions,
    read: ReadSummary | None,
    t0: float,
) -> ScoreReport:
    """``offline.score_records`` after its ``collect``: the streaming engine's verdicts."""
    signals, keys = read_out(sketches, opts.link_cfg)
    verdicts, clusters = judge_accounts(signals, keys, opts)
    return ScoreReport(
        verdicts,
        clusters,
        read,
        sum(sk.n for sk in sketches.values()),
        time.perf_counter() - t0,
        sum(sk.out_of_order for sk in sketches.values()),
    )


def write_verdicts(verdicts: Iterable[Verdict], out: Path) -> None:
    """Verdicts as Parquet (``out`` ending in .parquet) or JSON Lines (anything else)."""
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [v.to_dict() for v in verdicts]
        schema = pa.schema(
            [
                ("account_id", pa.string()),
                ("score", pa.float64()),
                ("flagged", pa.bool_()),
                ("cluster_id", pa.string()),
                ("reasons", pa.list_(pa.string())),
            ]
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp, compression="zstd")
        tmp.replace(out)
        return
    from distillguard.traffic import JsonlWriter

    with JsonlWriter(out) as w:
        for v in verdicts:
            w.write(v)
