"""Scoring engines: the streaming pass (``monitor.offline``), DuckDB (embedded default for a
Parquet log) and Spark (a cluster).

All three give the same verdicts by construction (see ``common``). ``score_log`` picks one:
``--engine`` if given, else DuckDB for a Parquet log and the streaming pass for JSON Lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from distillguard.errors import InputError

ENGINES = ("stream", "duckdb", "spark")

if TYPE_CHECKING:
    from distillguard.monitor.offline import DecisionConfig, ScoreReport
    from distillguard.monitor.score import ScoreModel
    from distillguard.monitor.trust import AccountInfo, TrustPolicy


def default_engine(path: Path) -> str:
    from distillguard.columnar import is_parquet_log

    return "duckdb" if is_parquet_log(path) else "stream"


def score_log(
    path: Path,
    out: Path | None,
    *,
    model: ScoreModel,
    engine: str | None = None,
    master: str | None = None,
    workers: int | None = None,
    trust: TrustPolicy | None = None,
    accounts: dict[str, AccountInfo] | None = None,
    decision: DecisionConfig | None = None,
) -> ScoreReport:
    """Score the log at ``path`` (JSON Lines or Parquet) with ``engine``; write verdicts to
    ``out`` (Parquet when it ends in .parquet, else JSON Lines)."""
    from distillguard.columnar import ParquetReader, is_parquet_log
    from distillguard.monitor.engines.common import EngineOptions, write_verdicts
    from distillguard.monitor.links import LinkConfig
    from distillguard.monitor.offline import score_traffic
    from distillguard.monitor.signals import SignalConfig
    from distillguard.monitor.trust import TrustPolicy

    engine = engine or default_engine(path)
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if master is not None and engine != "spark":
        raise InputError("--master is for --engine spark")
    parquet = is_parquet_log(path)
    if engine != "stream" and not parquet:
        raise InputError(
            f"--engine {engine} reads a Parquet log; {path} is not one (make one with "
            "`distillguard log export --format parquet --out DIR`)"
        )
    opts = EngineOptions(
        model, SignalConfig(), LinkConfig(), trust or TrustPolicy(), accounts, decision
    )
    if engine == "stream" and not parquet:
        from distillguard.monitor.engines.fold import fast_fold_ok

        if fast_fold_ok():  # the batched fold (same verdicts; see engines.stream)
            from distillguard.monitor.engines.stream import score_jsonl

            rep = score_jsonl(path, opts, workers)
        else:
            rep = score_traffic(
                path,
                None,
                model=model,
                workers=workers,
                trust=trust,
                accounts=accounts,
                decision=decision,
            )
    elif engine == "stream":
        import time

        from distillguard.monitor.engines.common import score_sketches
        from distillguard.monitor.engines.fold import collect_tables

        t0 = time.perf_counter()
        reader = ParquetReader(path)
        sketches = collect_tables(reader.tables(), opts.signal_cfg)
        if not sketches:
            raise InputError(f"{path}: no traffic records")
        rep = score_sketches(sketches, opts, reader.summary(), t0)
    elif engine == "duckdb":
        from distillguard.monitor.engines.duckdb import DuckDBConfig, score_duckdb

        rep = score_duckdb(path, opts, DuckDBConfig(workers=workers or 0))
    else:
        from distillguard.monitor.engines.spark import SparkConfig, score_spark

        rep = score_spark(path, opts, SparkConfig(master=master) if master else SparkConfig())
    if out is not None:
        write_verdicts(rep.verdicts, out)
    return rep
