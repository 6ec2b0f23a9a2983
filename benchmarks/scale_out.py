"""Scale-out benchmark: a simulated log replicated to N exchanges, exported to Parquet, scored by
each engine (streaming pass over the Parquet log as the baseline, DuckDB, Spark local, Spark
standalone with a master and two workers started here); exchanges/s, peak memory, wall time.

    PYTHONPATH=src nice -n 10 python benchmarks/scale_out.py --sizes 100000,400000

How the big logs are made (fast, no simulator run per size): one simulated base log (every
persona) is exported to Parquet with the real writer (``store.parquet``: the export figure),
then copied k times with Arrow compute: ids, accounts, keys and payment fingerprints get a
``~r<k>`` suffix, IPs move to another /24 per copy, and time shifts by whole days (hour of day,
and so every per-account signal, is unchanged; copies do not share timing buckets). Each
engine runs as a child process (``distillguard monitor score``); peak memory is the largest
sum of RSS over the child's process tree (JVMs and Python workers included) and, for the
standalone cluster, its master and worker daemons.

What a tiled log means for the figures: the work per exchange is the base log's (same persona
mix, same texts, same share of non-ASCII rows that take the reference path), and no engine
caches anything by content, so repeating texts makes nothing cheaper; the number of accounts
grows with the size (129 per copy). Copies do not share accounts, IPs, payment fingerprints or
time buckets, but they do share user agents and template shingles, so past a few copies those
keys exceed the link cap (``LinkConfig.max_key_accounts``) and stop linking: clusters and flags
of a tiled log are not k times the base's. The engines' equality is what is compared per size.
``--work DIR`` keeps the base and the tiled logs for the next run (``_rows`` marks a complete
one).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from distillguard.columnar import SEQ, open_dataset
from distillguard.sim.simulate import SimConfig, simulate
from distillguard.store.parquet import write_parquet_log
from distillguard.traffic import read_traffic

DAY = 86_400
ROOT = Path(__file__).resolve().parents[1]
console = Console()


# --- the logs -------------------------------------------------------------------------------


def base_log(work: Path, data_dir: Path, accounts: int, campaigns: int, days: int) -> dict:
    """Simulate the base log, export it to Parquet with the real writer (timed); a base left
    in ``work`` by an earlier run (``base/`` and ``base.json``) is reused."""
    if (work / "base.json").exists() and (work / "base").is_dir():
        return dict(json.loads((work / "base.json").read_text()), reused=True)
    jsonl = work / "base.jsonl"
    cfg = SimConfig(accounts=accounts, campaigns=campaigns, seed=7, split="test", days=days)
    simulate(cfg, data_dir=data_dir, out=jsonl, labels=work / "labels.jsonl")
    t0 = time.perf_counter()
    res = write_parquet_log(read_traffic(jsonl), work / "base")
    secs = time.perf_counter() - t0
    out = {"rows": res.written, "export_s": secs, "export_rate": res.written / secs}
    (work / "base.json").write_text(json.dumps(out))
    return out


def _shift_ip(ip: str, k: int) -> str:
    parts = ip.split(".")
    if len(parts) != 4:
        return f"{ip}~r{k}"
    a, b, c, d = (int(p) for p in parts)
    return f"{a}.{(b + k // 256) % 256}.{(c + k) % 256}.{d}"


def replicate(base_dir: Path, out: Path, target: int) -> int:
    """Write ``target`` rows (rounded up to whole copies of the base) as a day-partitioned log
    (a complete log left by an earlier run, marked by ``_rows``, is reused)."""
    if (out / "_rows").exists():
        return int((out / "_rows").read_text())
    base = pq.read_table([str(f) for f in open_dataset(base_dir).files]).sort_by(SEQ)
    n = base.num_rows
    ts = base.column("ts").to_numpy()
    span_days = math.ceil((ts.max() - ts.min()) / DAY) + 1
    day_idx = (ts // DAY).astype("int64")
    cuts = [0] + [i for i in range(1, n) if day_idx[i] != day_idx[i - 1]] + [n]
    uniq_ip = pc.unique(base.column("ip"))
    ip_pos = pc.index_in(base.column("ip"), uniq_ip)
    copies = math.ceil(target / n)
    for k in range(copies):
        sfx = f"~r{k}"
        t = base
        for name in ("id", "account_id", "key_id", "payment_fingerprint"):
            i = t.schema.get_field_index(name)
            t = t.set_column(i, name, pc.binary_join_element_wise(t.column(name), sfx, ""))
        shift = k * span_days * DAY
        t = t.set_column(t.schema.get_field_index("ts"), "ts", pc.add(t.column("ts"), float(shift)))
        ips = pa.array([_shift_ip(ip, k) for ip in uniq_ip.to_pylist()])
        t = t.set_column(t.schema.get_field_index("ip"), "ip", pc.take(ips, ip_pos))
        t = t.set_column(t.schema.get_field_index(SEQ), SEQ, pc.add(t.column(SEQ), k * n))
        for lo, hi in itertools.pairwise(cuts):
            day = time.strftime("%Y-%m-%d", time.gmtime(int(day_idx[lo]) * DAY + shift))
            folder = out / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                t.slice(lo, hi - lo), folder / f"part-{k * n + lo:012d}.parquet", compression="zstd"
            )
    (out / "_rows").write_text(str(copies * n))
    return copies * n


# --- measuring a child ----------------------------------------------------------------------


class PeakRss:
    """Largest total RSS over the process trees of ``roots`` (polled every 0.2 s)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots, self.peak, self._stop = roots, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.roots:
                try:
                    p = psutil.Process(pid)
                    procs = [p, *p.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for q in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += q.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def score(log: Path, engine: str, extra: list[str], daemons: list[int], env: dict) -> dict:
    out = log.parent / f"verdicts-{engine}.jsonl"
    cmd = [sys.executable, "-m", "distillguard", "monitor", "score", str(log), "--out", str(out)]
    cmd += ["--engine", "spark" if engine.startswith("spark") else engine, *extra]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with PeakRss([proc.pid, *daemons]) as rss:
        output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the child's whole tree (JVM, forked workers, Python workers; not a standalone
    # cluster's executors): on a shared machine, the figure load does not inflate.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        return {"error": output.strip().splitlines()[-1] if output.strip() else "failed"}
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_mb": rss.peak / 2**20,
        "accounts": len(verdicts),
        "flagged": sum(v["flagged"] for v in verdicts),
        "digest": hash(tuple((v["account_id"], v["score"], v["cluster_id"]) for v in verdicts)),
    }


# --- a standalone Spark cluster on this machine ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(env: dict, workers: int = 2) -> tuple[str, list[subprocess.Popen]]:
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    port, ui = _free_port(), _free_port()
    master = f"spark://127.0.0.1:{port}"
    log = open(Path(tempfile.gettempdir()) / f"dg-spark-{port}.log", "w")  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                str(spark_class),
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
    ]
    for _ in range(workers):
        procs.append(
            subprocess.Popen(
                [
                    str(spark_class),
                    "org.apache.spark.deploy.worker.Worker",
                    master,
                    "--cores",
                    "1",
                    "--memory",
                    "1g",
                    "--webui-port",
                    str(_free_port()),
                    "--host",
                    "127.0.0.1",
                ],
                env=env,
                stdout=log,
                stderr=log,
            )
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5) as r:
                if json.load(r).get("aliveworkers", 0) >= workers:
                    return master, procs
        except OSError:
            pass
        time.sleep(1)
    stop_cluster(procs)
    raise RuntimeError(f"the standalone cluster did not come up (see {log.name})")


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,400000", help="exchanges per log, comma-separated")
    ap.add_argument("--engines", default="stream,duckdb,spark-local,spark-cluster")
    ap.add_argument("--base-accounts", type=int, default=150)
    ap.add_argument("--base-campaigns", type=int, default=6)
    ap.add_argument("--base-days", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = ap.parse_args()
    data_dir = Path(os.environ.get("DISTILLGUARD_DATA_DIR", ROOT.parent / "shared" / "data"))
    work = args.work or Path(tempfile.mkdtemp(prefix="dg-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = args.engines.split(",")
    console.print(f"load before: {os.getloadavg()} on {os.cpu_count()} cores (shared machine)")
    base = base_log(work, data_dir, args.base_accounts, args.base_campaigns, args.base_days)
    console.print(
        f"base log: {base['rows']:,} exchanges; Parquet export {base['export_rate']:,.0f} "
        f"exchanges/s ({base['export_s']:.1f} s)"
    )
    results: list[dict] = []
    cluster: tuple[str, list[subprocess.Popen]] | None = None
    try:
        with Progress(console=console) as bar:
            task = bar.add_task("scoring", total=len(sizes) * len(engines))
            for size in sizes:
                log = work / f"log-{size}"
                t0 = time.perf_counter()
                rows = replicate(work / "base", log, size)
                gen_s = time.perf_counter() - t0
                for engine in engines:
                    extra: list[str] = []
                    daemons: list[int] = []
                    if engine == "spark-cluster":
                        if cluster is None:
                            cluster = start_cluster(env)
                        extra = ["--master", cluster[0]]
                        daemons = [p.pid for p in cluster[1]]
                    bar.update(task, description=f"{engine} on {rows:,}")
                    r = score(log, engine, extra, daemons, env)
                    r.update(
                        engine=engine, exchanges=rows, generate_s=gen_s, load=os.getloadavg()[0]
                    )
                    results.append(r)
                    console.print(json.dumps(r))  # each figure as soon as it is measured
                    bar.advance(task)
    finally:
        if cluster is not None:
            stop_cluster(cluster[1])
    table = Table(title="monitor score on a Parquet log (shared 2-core machine)")
    for col in (
        "exchanges",
        "engine",
        "wall s",
        "exchanges/s",
        "CPU s",
        "peak MB",
        "accounts",
        "flagged",
        "same verdicts",
        "load",
    ):
        table.add_column(col)
    for r in results:
        if "error" in r:
            table.add_row(
                f"{r['exchanges']:,}", r["engine"], "error", r["error"][:60], "", "", "", "", "", ""
            )
            continue
        peer = next(x for x in results if x["exchanges"] == r["exchanges"] and "digest" in x)
        table.add_row(
            f"{r['exchanges']:,}",
            r["engine"],
            f"{r['wall_s']:.1f}",
            f"{r['exchanges'] / r['wall_s']:,.0f}",
            f"{r['cpu_s']:.1f}",
            f"{r['peak_mb']:,.0f}",
            f"{r['accounts']:,}",
            f"{r['flagged']:,}",
            "yes" if r["digest"] == peer["digest"] else "NO",
            f"{r['load']:.1f}",
        )
    console.print(table)
    console.print(f"load after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"base": base, "results": results}, indent=1))


if __name__ == "__main__":
    main()
