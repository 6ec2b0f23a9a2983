"""``monitor score --engine spark [--master URL]``: the same verdicts as Spark DataFrame jobs.

- Per-account signals: ``groupBy("account_id").applyInArrow`` hands each account's rows (an
  Arrow table) to a Python worker, which sorts them by ``seq`` and runs
  ``common.fold_sorted_batches`` (the streaming engine's sketch code, request features
  computed for the account's rows at once by ``vectorized``). It returns one row holding
  the pickled ``Folded`` and one row per link key, so the keys stay in Spark.
- Links: ``common.link_sql`` as Spark SQL over those key rows (a self-join on the keys).
- Clusters: connected components by min-label propagation, one Spark SQL step per round
  until no label changes (lineage cut by a local checkpoint each round).
- Verdicts: computed on the driver from the folded accounts (small: one row per account) and
  written as Parquet or JSON Lines.

PySpark is the optional extra ``spark``; Java comes from the system (Debian:
``default-jre-headless``). Python workers get the driver's ``PYTHONHASHSEED`` (PySpark's
default is 0) because PySpark asks for one; the sketches do not depend on it (frame shingles
are hashed with CRC-32, the same in every process).
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa

from distillguard.columnar import SEQ, open_dataset
from distillguard.errors import ConfigError, InputError
from distillguard.monitor.engines.common import (
    CLUSTER_EVIDENCE_SQL,
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

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

INSTALL_HINT = "pip install 'distillguard[spark]'"
_OUT_SCHEMA = "account string, kind string, key string, blob binary"


@dataclass(frozen=True)
class SparkConfig:
    """Where and how the Spark job runs."""

    master: str = "local[2]"  # local[N] (in process), or spark://host:port of a standalone master
    connect_timeout_s: float = 10.0  # a master that does not accept a connection by then is down
    driver_memory: str = "1g"  # the driver only holds one small row per account
    executor_memory: str = "1g"  # per executor: one account's rows at a time in Python
    # Shuffle partitions of the group-by and the joins: a few per core keeps tasks short.
    shuffle_partitions: int = 8
    app_name: str = "distillguard-score"

    def __post_init__(self) -> None:
        if not (self.master.startswith("local") or self.master.startswith("spark://")):
            raise ConfigError(
                f"--master must be local[N] or spark://host:port, got {self.master!r}"
            )
        if self.connect_timeout_s <= 0 or self.shuffle_partitions < 1:
            raise ConfigError("SparkConfig.connect_timeout_s > 0 and shuffle_partitions >= 1")


def require_pyspark() -> None:
    """A clear error when PySpark or Java is missing (before any work starts)."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--engine spark needs PySpark: {INSTALL_HINT}") from exc
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise ConfigError(
            "--engine spark needs a Java runtime: apt-get install -y default-jre-headless "
            "(or set JAVA_HOME)"
        )


def check_master(master: str, timeout_s: float) -> None:
    """Fail fast, naming the master, when a standalone master does not accept connections
    (Spark itself would retry registering for minutes)."""
    if not master.startswith("spark://"):
        return
    errors = []
    for hostport in master.removeprefix("spark://").split(","):
        parts = urlsplit(f"//{hostport}")
        host, port = parts.hostname or "", parts.port or 7077
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc or 'timed out'}")
    raise InputError(
        f"Spark master {master} does not answer within {timeout_s:g} s ({'; '.join(errors)})"
    )


def spark_session(cfg: SparkConfig) -> SparkSession:
    require_pyspark()
    check_master(cfg.master, cfg.connect_timeout_s)
    from pyspark.sql import SparkSession

    # Workers run this interpreter (its venv has pyarrow and distillguard).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.executor.memory", cfg.executor_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.executorEnv.PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))
    )
    if os.environ.get("PYTHONPATH"):  # workers import this checkout's distillguard
        builder = builder.config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _fold_function(signal_cfg: SignalConfig, link_cfg: LinkConfig) -> Any:
    def fold(table: pa.Table) -> pa.Table:  # one account's rows -> its Folded + key rows
        table = table.sort_by(SEQ)
        account = table.column("account_id")[0].as_py()
        folded = next(fold_sorted_batches([table], signal_cfg, link_cfg, f"account {account}"))
        keys = key_rows({account: folded.keys})
        return pa.table(
            {
                "account": [account, *keys.column("account").to_pylist()],
                "kind": ["", *keys.column("kind").to_pylist()],
                "key": ["", *keys.column("key").to_pylist()],
                "blob": [pickle.dumps(folded), *([None] * keys.num_rows)],
            },
            schema=pa.schema(
                [
                    ("account", pa.string()),
                    ("kind", pa.string()),
                    ("key", pa.string()),
                    ("blob", pa.binary()),
                ]
            ),
        )

    return fold


def spark_clusters(
    spark: SparkSession, key_df: DataFrame, keys: dict[str, LinkKeys], link_cfg: LinkConfig
) -> list[Cluster]:
    """Links by Spark SQL over the key rows (plus the driver's account-creation keys);
    connected components by min-label propagation in Spark."""
    created = {a: LinkKeys(created=k.created) for a, k in keys.items() if k.created}
    if created:
        key_df = key_df.unionByName(spark.createDataFrame(key_rows(created)))
    key_df.createOrReplaceTempView("link_keys")
    edges = spark.sql(link_sql(link_cfg, len(keys))).persist()
    edges.createOrReplaceTempView("edges")
    labels = spark.sql(INIT_LABELS_SQL).localCheckpoint()
    while True:
        labels.createOrReplaceTempView("labels")
        nxt = spark.sql(PROPAGATE_SQL).localCheckpoint()
        changed = nxt.alias("n").join(labels.alias("o"), "v").where("n.l <> o.l").count()
        labels = nxt
        if changed == 0:
            break
    labels.createOrReplaceTempView("labels")
    pairs = [(r["v"], r["l"]) for r in labels.collect()]
    evidence = [tuple(r) for r in spark.sql(CLUSTER_EVIDENCE_SQL).collect()]
    edges.unpersist()
    return clusters_of(pairs, evidence)


def score_spark(path: Path, opts: EngineOptions, cfg: SparkConfig | None = None) -> ScoreReport:
    """Score the Parquet log at ``path`` with Spark (see the module docstring)."""
    cfg = cfg or SparkConfig()
    t0 = time.perf_counter()
    ds = open_dataset(path)
    spark = spark_session(cfg)
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        df = spark.read.option("mergeSchema", "true").parquet(*(str(f) for f in ds.files))
        out = (
            df.groupBy("account_id")
            .applyInArrow(_fold_function(opts.signal_cfg, opts.link_cfg), _OUT_SCHEMA)
            .localCheckpoint()  # computed once: both the blobs and the key rows read it
        )
        folded: dict[str, Folded] = {}
        for row in out.where("kind = ''").select("blob").toLocalIterator():
            f = pickle.loads(row["blob"])
            folded[f.account_id] = f
        key_df = out.where("kind <> ''").select("account", "kind", "key")
        report = finish(
            folded,
            lambda keys: spark_clusters(spark, key_df, keys, opts.link_cfg),
            opts,
            ds.root,
            ds.rows,
            t0,
        )
        return report
    except (PySparkException, Py4JError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise InputError(
            f"{ds.root}: the Spark job failed ({lines[-1] if lines else exc!r})"
        ) from exc
