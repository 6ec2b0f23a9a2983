"""The three engines (streaming, DuckDB, Spark) give the same verdicts and clusters on simulated
traffic with every persona; bad Parquet input and a dead Spark master are clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillguard.columnar import traffic_schema
from distillguard.errors import ConfigError, InputError
from distillguard.monitor.engines import score_log
from distillguard.monitor.engines.common import EngineOptions
from distillguard.monitor.engines.duckdb import (
    DuckDBConfig,
    _connect,
    duckdb_clusters,
    score_duckdb,
)
from distillguard.monitor.links import LinkConfig, find_clusters
from distillguard.monitor.offline import collect, read_out
from distillguard.monitor.score import ScoreModel
from distillguard.monitor.signals import SignalConfig
from distillguard.monitor.trust import TrustPolicy
from distillguard.sim.personas import CAMPAIGN_ACTORS, HONEST_ACTORS
from distillguard.sim.simulate import SimConfig, simulate
from distillguard.store.parquet import write_parquet_log
from distillguard.traffic import TrafficRecord, read_labels, read_traffic, read_verdicts

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def every_persona(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """(JSON Lines log, the same log as Parquet) with every honest and campaign persona."""
    d = tmp_path_factory.mktemp("engines")
    cfg = SimConfig(accounts=40, campaigns=5, mimic_campaigns=1, seed=5, split="test", days=2)
    simulate(cfg, data_dir=shared_data, out=d / "traffic.jsonl", labels=d / "labels.jsonl")
    personas = {lab.persona for lab in read_labels(d / "labels.jsonl")}
    assert personas == set(HONEST_ACTORS) | set(CAMPAIGN_ACTORS) | {"campaign_mimic"}
    write_parquet_log(read_traffic(d / "traffic.jsonl"), d / "parquet", part_rows=3000)
    return d / "traffic.jsonl", d / "parquet"


def _opts() -> EngineOptions:
    return EngineOptions(ScoreModel.load(), SignalConfig(), LinkConfig(), TrustPolicy(), None, None)


def _cli_score(log: Path, out: Path, *extra: str) -> None:
    """``monitor score`` in a child of its own, each with Python's default (random) hash
    salt: the verdicts must not depend on it."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("PYTHONHASHSEED", None)
    cmd = [sys.executable, "-m", "distillguard", "monitor", "score", str(log), "--out", str(out)]
    proc = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.usefixtures("spark")
def test_three_engines_same_verdicts(every_persona: tuple[Path, Path], tmp_path: Path) -> None:
    """Streaming and DuckDB through the CLI in children, Spark through the same ``score_log``
    in this process on the shared Spark session (a third hash salt: this process's)."""
    jsonl, parquet = every_persona
    runs = {
        "stream": (jsonl, tmp_path / "stream.jsonl", ()),
        "duckdb": (parquet, tmp_path / "duckdb.jsonl", ("--engine", "duckdb", "--workers", "2")),
    }
    for log, out, extra in runs.values():
        _cli_score(log, out, *extra)
    spark_out = tmp_path / "spark.parquet"
    score_log(parquet, spark_out, model=ScoreModel.load(), engine="spark", master="local[1]")
    stream = list(read_verdicts(runs["stream"][1]))
    duck = list(read_verdicts(runs["duckdb"][1]))
    spark = pq.read_table(spark_out).to_pylist()
    assert len(stream) == len({t.account_id for t in read_traffic(jsonl)}) > 40
    assert any(v.flagged for v in stream) and any(v.cluster_id for v in stream)
    for other in (duck, [type(stream[0]).from_dict(row) for row in spark]):
        assert [v.account_id for v in other] == [v.account_id for v in stream]
        for a, b in zip(stream, other, strict=True):
            assert abs(a.score - b.score) <= 1e-9, a.account_id
            assert (a.flagged, a.cluster_id, a.reasons) == (b.flagged, b.cluster_id, b.reasons)


def test_engine_clusters_equal_find_clusters(
    every_persona: tuple[Path, Path], request: pytest.FixtureRequest
) -> None:
    """The engines' SQL links + connected components against links.find_clusters, on the
    same link keys (DuckDB in process, Spark in local mode)."""
    jsonl, _ = every_persona
    cfg = LinkConfig()
    _, keys = read_out(collect(read_traffic(jsonl)), cfg)
    expected = find_clusters(keys, cfg)
    assert len(expected) >= 2
    con = _connect(DuckDBConfig(), Path(os.environ.get("TMPDIR", "/tmp")), threads=1)
    assert duckdb_clusters(keys, cfg, con) == expected
    # a lower bar links more pairs: longer chains for the label propagation
    loose = LinkConfig(link_threshold=1.0)
    assert duckdb_clusters(keys, loose, con) == find_clusters(keys, loose)
    pytest.importorskip("pyspark")
    spark = request.getfixturevalue("spark")
    from distillguard.monitor.engines.common import key_rows
    from distillguard.monitor.engines.spark import spark_clusters

    key_df = spark.createDataFrame(key_rows(keys))
    assert spark_clusters(spark, key_df, keys, cfg) == expected


def test_stream_engine_reads_parquet(every_persona: tuple[Path, Path]) -> None:
    jsonl, parquet = every_persona
    model = ScoreModel.load()
    from_jsonl = score_log(jsonl, None, model=model, engine="stream", workers=1)
    from_parquet = score_log(parquet, None, model=model, engine="stream")
    duck = score_duckdb(parquet, _opts(), DuckDBConfig(workers=1, bucket_rows=5000))
    assert from_parquet.verdicts == from_jsonl.verdicts == duck.verdicts
    assert from_parquet.clusters == from_jsonl.clusters == duck.clusters
    assert duck.exchanges == from_jsonl.exchanges


# --- bad input ----------------------------------------------------------------------------


def _record(account: str, i: int) -> TrafficRecord:
    req = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
    return TrafficRecord(
        f"ex-{account}-{i}",
        1.7e9 + 60 * i,
        account,
        "k1",
        "10.0.0.1",
        "/v1/chat/completions",
        req,
        200,
    )


def test_one_account_and_none(tmp_path: Path) -> None:
    write_parquet_log([_record("acct-one", i) for i in range(30)], tmp_path / "one")
    rep = score_duckdb(tmp_path / "one", _opts())
    assert [v.account_id for v in rep.verdicts] == ["acct-one"] and rep.clusters == ()
    assert rep.exchanges == 30
    empty = tmp_path / "empty" / "day=2026-01-01"
    empty.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([], schema=traffic_schema()), empty / "part-000000000000.parquet"
    )
    with pytest.raises(InputError, match="no traffic records"):
        score_duckdb(tmp_path / "empty", _opts())
    with pytest.raises(InputError, match="no traffic records"):
        score_log(tmp_path / "empty", None, model=ScoreModel.load(), engine="stream")


def _part(root: Path, table: pa.Table) -> Path:
    (root / "day=2026-01-01").mkdir(parents=True, exist_ok=True)
    path = root / "day=2026-01-01" / "part-000000000000.parquet"
    pq.write_table(table, path)
    return path


def test_missing_and_mistyped_column_and_bad_partition(tmp_path: Path) -> None:
    write_parquet_log([_record("acct-a", i) for i in range(5)], tmp_path / "good")
    table = pq.read_table(next((tmp_path / "good").glob("day=*/part-*.parquet")))
    missing = _part(tmp_path / "missing", table.drop_columns(["account_id"]))
    with pytest.raises(InputError, match=f"{missing}: missing column 'account_id'"):
        score_duckdb(tmp_path / "missing", _opts())
    ts_text = table.set_column(table.schema.get_field_index("ts"), "ts", pa.array(["x"] * 5))
    mistyped = _part(tmp_path / "mistyped", ts_text)
    with pytest.raises(InputError, match=f"{mistyped}: column 'ts' has type string"):
        score_duckdb(tmp_path / "mistyped", _opts())
    broken = tmp_path / "good" / "day=2026-01-02" / "part-000000000099.parquet"
    broken.parent.mkdir()
    broken.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(InputError, match=f"{broken}: cannot read this Parquet partition"):
        score_log(tmp_path / "good", None, model=ScoreModel.load())


def test_engine_choice_errors(tmp_path: Path, every_persona: tuple[Path, Path]) -> None:
    jsonl, _ = every_persona
    with pytest.raises(InputError, match="reads a Parquet log"):
        score_log(jsonl, None, model=ScoreModel.load(), engine="duckdb")
    with pytest.raises(InputError, match="--engine must be one of"):
        score_log(jsonl, None, model=ScoreModel.load(), engine="polars")


def test_spark_master_that_does_not_answer(every_persona: tuple[Path, Path]) -> None:
    _, parquet = every_persona
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytest.importorskip("pyspark")
    with pytest.raises(InputError, match=f"Spark master spark://127.0.0.1:{port} does not answer"):
        score_log(
            parquet,
            None,
            model=ScoreModel.load(),
            engine="spark",
            master=f"spark://127.0.0.1:{port}",
        )


def test_spark_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from distillguard.monitor.engines.spark import require_pyspark

    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'distillguard\[spark\]'"):
        require_pyspark()
