"""``monitor score --engine stream`` on a JSON Lines log: ``offline.score_traffic`` with the
account fold of ``engines.fold`` (request features per chunk of records, each account's rows of
a chunk folded at once) instead of one ``observe_record`` per line.

The reading is ``offline``'s: ``traffic.read_traffic`` validates every line and counts and
locates the malformed ones; with ``workers`` > 1 each forked worker parses only its own
accounts' lines (``offline._partition_filter``), and the parts are merged as
``offline.collect_file`` merges them. The verdicts are ``offline``'s (``account_views``,
``context_for``, ``score_views``), so they equal ``score_traffic``'s
(tests/monitor/test_engines.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from distillguard.errors import InputError
from distillguard.monitor.engines.common import EngineOptions, judge_accounts
from distillguard.monitor.engines.fold import collect_records
from distillguard.monitor.links import LinkConfig, LinkKeys
from distillguard.monitor.offline import (
    ScoreReport,
    _partition_filter,
    default_workers,
    read_out,
)
from distillguard.monitor.signals import AccountSignals, SignalConfig
from distillguard.traffic import MAX_SKIP_EXAMPLES, ReadSummary, read_traffic


@dataclass(frozen=True)
class _Part:
    signals: dict[str, AccountSignals]
    keys: dict[str, LinkKeys]
    exchanges: int
    out_of_order: int
    summary: ReadSummary


def _collect_part(path: str, part: int, parts: int, cfg: SignalConfig, link: LinkConfig) -> _Part:
    reader = read_traffic(path, line_filter=_partition_filter(part, parts) if parts > 1 else None)
    sketches = collect_records(reader, cfg)
    signals, keys = read_out(sketches, link)
    return _Part(
        signals,
        keys,
        sum(sk.n for sk in sketches.values()),
        sum(sk.out_of_order for sk in sketches.values()),
        reader.summary(),
    )


def score_jsonl(path: Path, opts: EngineOptions, workers: int | None = None) -> ScoreReport:
    """Score the JSON Lines log at ``path`` (see the module docstring)."""
    t0 = time.perf_counter()
    n = workers or default_workers(path)
    args = (opts.signal_cfg, opts.link_cfg)
    if n <= 1:
        parts = [_collect_part(str(path), 0, 1, *args)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(n, mp_context=mp.get_context("fork")) as pool:
            futures = [pool.submit(_collect_part, str(path), p, n, *args) for p in range(n)]
            parts = [f.result() for f in futures]
    examples = sorted((e for p in parts for e in p.summary.examples), key=lambda e: e.line_no)
    summary = ReadSummary(
        str(path),
        parts[0].summary.lines,
        sum(p.summary.records for p in parts),
        sum(p.summary.skipped for p in parts),
        tuple(examples[:MAX_SKIP_EXAMPLES]),
    )
    if summary.records == 0:
        first = (
            f"; first problem: line {summary.examples[0].line_no}: {summary.examples[0].reason}"
            if summary.examples
            else ""
        )
        raise InputError(
            f"{path}: no valid traffic records ({summary.lines:,} lines, "
            f"{summary.skipped:,} skipped){first}"
        )
    signals = {a: s for p in parts for a, s in p.signals.items()}
    keys = {a: k for p in parts for a, k in p.keys.items()}
    verdicts, clusters = judge_accounts(signals, keys, opts)
    return ScoreReport(
        verdicts,
        clusters,
        summary,
        sum(p.exchanges for p in parts),
        time.perf_counter() - t0,
        sum(p.out_of_order for p in parts),
    )
