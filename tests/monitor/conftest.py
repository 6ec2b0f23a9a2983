"""A small simulated population, written once per test session (about a second), and one
local Spark session shared by the monitor tests that run Spark."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distillguard.sim.simulate import SimConfig, simulate

SRC = Path(__file__).resolve().parents[2] / "src"
# Short-lived test JVMs: C1 only, serial GC; HotSpot ignores what another JVM would not know.
JVM_OPTIONS = "-XX:+IgnoreUnrecognizedVMOptions -XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@pytest.fixture(scope="session")
def small_traffic(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """(traffic, labels) of 40 honest accounts and 5 campaigns (one of each kind), test split."""
    d = tmp_path_factory.mktemp("small_traffic")
    cfg = SimConfig(accounts=40, campaigns=5, seed=11, split="test", days=3)
    simulate(cfg, data_dir=shared_data, out=d / "traffic.jsonl", labels=d / "labels.jsonl")
    return d / "traffic.jsonl", d / "labels.jsonl"


@pytest.fixture(scope="package")
def spark():
    """One local Spark session (one JVM) for every Spark run under tests/monitor: starting
    Spark is most of a Spark test's cost. ``score_spark`` (``score_log(engine="spark")``)
    finds it through ``getOrCreate``; its Python workers import this checkout's distillguard
    (as the CLI children do). Where PySpark is missing it is an error (as `--engine spark`
    is): a test that may do without Spark calls ``pytest.importorskip("pyspark")`` first.

    The driver JVM compiles with C1 only and collects with the serial collector: a test's
    Spark job is seconds long, where C2's compiler threads cost more CPU than they win
    (measured on the cluster test: 52 -> 31 CPU s for the whole process tree). Neither
    changes what Spark computes."""
    from distillguard.monitor.engines.spark import SparkConfig, spark_session

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
        )
        if "PYSPARK_SUBMIT_ARGS" not in os.environ:  # an operator's own setting wins
            mp.setenv("PYSPARK_SUBMIT_ARGS", f"--driver-java-options '{JVM_OPTIONS}' pyspark-shell")
        session = spark_session(SparkConfig(master="local[1]", shuffle_partitions=2))
    yield session
    session.stop()
