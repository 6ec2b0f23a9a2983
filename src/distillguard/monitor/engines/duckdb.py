"""``monitor score --engine duckdb``: SQL over the Parquet log, out of core, in bounded memory.

How the work is split: accounts are hash-partitioned into buckets
(``hash(account_id) % buckets``); for each bucket DuckDB scans the Parquet files, keeps the
bucket's rows and sorts them by ``(account_id, seq)`` (spilling to ``temp_directory`` past
``memory_limit``), and streams Arrow batches into ``common.fold_sorted_batches``: the
streaming engine's sketch code, one account at a time, with the request features computed per
batch (``vectorized``). Buckets run in ``workers`` forked processes (fork: the children inherit
the imported modules). Memory is one bucket's sort (bounded by ``memory_limit``, beyond it on
disk) plus one small ``Folded`` per account.

The cross-account links (``common.link_sql``) and their connected components (min-label
propagation until no label changes) then run as SQL over the accounts' link keys.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from distillguard.columnar import ParquetDataset, open_dataset
from distillguard.errors import ConfigError, InputError
from distillguard.monitor.engines.common import (
    CLUSTER_EVIDENCE_SQL,
    ENGINE_ORDER,
    INIT_LABELS_SQL,
    PROPAGATE_SQL,
    EngineOptions,
    Folded,
    clusters_of,
    finish,
    fold_sorted_batches,
    key_rows,
    link_sql,
)
from distillguard.monitor.links import Cluster, LinkConfig, LinkKeys
from distillguard.monitor.offline import ScoreReport
from distillguard.monitor.signals import SignalConfig


@dataclass(frozen=True)
class DuckDBConfig:
    """Resources of the DuckDB engine."""

    # Memory DuckDB may use per worker process before it spills to temp_directory: the bound
    # that keeps a log larger than memory out of core.
    memory_limit_mb: int = 1024
    temp_directory: Path | None = None  # spill files (default: a fresh temporary directory)
    # Rows per bucket (one sorted pass each): larger buckets mean fewer scans of the files,
    # smaller ones less to sort (and spill) at once.
    bucket_rows: int = 2_000_000
    workers: int = 0  # processes folding buckets (0: one per core, at most 8)
    batch_rows: int = 20_000  # rows per Arrow batch streamed out of DuckDB into Python

    def __post_init__(self) -> None:
        if self.memory_limit_mb < 64:
            raise ConfigError("DuckDBConfig.memory_limit_mb must be at least 64")
        if self.bucket_rows < 1 or self.batch_rows < 1 or self.workers < 0:
            raise ConfigError("DuckDBConfig bucket_rows/batch_rows >= 1 and workers >= 0")

    def resolved_workers(self) -> int:
        return self.workers or max(1, min(os.cpu_count() or 1, 8))


def _connect(cfg: DuckDBConfig, spill: Path, threads: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        config={
            "memory_limit": f"{cfg.memory_limit_mb}MB",
            "temp_directory": str(spill),
            "threads": threads,
            "preserve_insertion_order": False,
        }
    )
    return con


def _files_sql(ds: ParquetDataset) -> str:
    files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in ds.files)
    return f"read_parquet([{files}], union_by_name = true, hive_partitioning = false)"


def _fold_bucket(
    ds: ParquetDataset,
    bucket: int,
    buckets: int,
    cfg: DuckDBConfig,
    spill: Path,
    signal_cfg: SignalConfig,
    link_cfg: LinkConfig,
) -> list[Folded]:
    con = _connect(cfg, spill, threads=1)
    try:
        where = f"WHERE hash(account_id) % {buckets} = {bucket}" if buckets > 1 else ""
        query = f"SELECT * FROM {_files_sql(ds)} {where} ORDER BY {ENGINE_ORDER}"
        reader = con.sql(query).to_arrow_reader(cfg.batch_rows)
        return list(
            fold_sorted_batches(reader, signal_cfg, link_cfg, f"{ds.root} (bucket {bucket})")
        )
    except duckdb.Error as exc:
        raise InputError(f"{ds.root}: DuckDB could not read the log ({exc})") from exc
    finally:
        con.close()


def fold_dataset(
    ds: ParquetDataset,
    cfg: DuckDBConfig,
    signal_cfg: SignalConfig,
    link_cfg: LinkConfig,
    spill: Path,
) -> dict[str, Folded]:
    buckets = max(1, math.ceil(ds.rows / cfg.bucket_rows))
    workers = min(cfg.resolved_workers(), max(1, ds.rows // 100_000))
    if workers > 1:
        buckets = max(buckets, workers)
    args = [(ds, b, buckets, cfg, spill, signal_cfg, link_cfg) for b in range(buckets)]
    if workers <= 1:
        parts = [_fold_bucket(*a) for a in args]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            parts = list(pool.map(_fold_bucket, *zip(*args, strict=True)))
    return {f.account_id: f for part in parts for f in part}


def duckdb_clusters(
    keys: dict[str, LinkKeys], link_cfg: LinkConfig, con: duckdb.DuckDBPyConnection
) -> list[Cluster]:
    """Linked pairs by SQL self-join on link keys; clusters by min-label propagation."""
    con.register("link_keys", key_rows(keys))
    con.execute(f"CREATE OR REPLACE TEMP TABLE edges AS {link_sql(link_cfg, len(keys))}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE labels AS {INIT_LABELS_SQL}")
    while True:
        con.execute(f"CREATE OR REPLACE TEMP TABLE next_labels AS {PROPAGATE_SQL}")
        row = con.execute(
            "SELECT COUNT(*) FROM next_labels n JOIN labels o ON n.v = o.v WHERE n.l <> o.l"
        ).fetchone()
        con.execute("CREATE OR REPLACE TEMP TABLE labels AS SELECT * FROM next_labels")
        if row is None or row[0] == 0:
            break
    labels = con.execute("SELECT v, l FROM labels").fetchall()
    evidence = con.execute(CLUSTER_EVIDENCE_SQL).fetchall()
    return clusters_of(labels, evidence)


def score_duckdb(path: Path, opts: EngineOptions, cfg: DuckDBConfig | None = None) -> ScoreReport:
    """Score the Parquet log at ``path`` with DuckDB (see the module docstring)."""
    cfg = cfg or DuckDBConfig()
    t0 = time.perf_counter()
    ds = open_dataset(path)
    with tempfile.TemporaryDirectory(prefix="dg-duckdb-", dir=cfg.temp_directory) as spill:
        folded = fold_dataset(ds, cfg, opts.signal_cfg, opts.link_cfg, Path(spill))
        con = _connect(cfg, Path(spill), threads=cfg.resolved_workers())
        try:
            return finish(
                folded,
                lambda keys: duckdb_clusters(keys, opts.link_cfg, con),
                opts,
                ds.root,
                ds.rows,
                t0,
            )
        finally:
            con.close()
