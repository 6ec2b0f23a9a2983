"""``monitor score --engine stream`` on a JSON Lines log: ``offline.score_traffic`` with the
account fold of ``engines.fold`` (request features per chunk of records, each account's rows of
a chunk folded at once) instead of one ``observe_record`` per line.

The reading is ``offline``'s: ``traffic.read_traffic`` validates every line and counts and
locates the malformed ones; ``offline.collect_file`` splits the accounts over ``workers``
forked processes and merges the parts, with this fold in place of ``collect``. The verdicts
are ``offline``'s (``account_views``, ``context_for``, ``score_views``), so they equal
``score_traffic``'s (tests/monitor/test_engines.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from distillguard.errors import InputError
from distillguard.monitor.engines.common import EngineOptions, judge_accounts
from distillguard.monitor.engines.fold import collect_records
from distillguard.monitor.offline import ScoreReport, collect_file, default_workers


def score_jsonl(path: Path, opts: EngineOptions, workers: int | None = None) -> ScoreReport:
    """Score the JSON Lines log at ``path`` (see the module docstring)."""
    t0 = time.perf_counter()
    part = collect_file(
        path,
        workers=workers or default_workers(path),
        cfg=opts.signal_cfg,
        link_cfg=opts.link_cfg,
        fold=collect_records,
    )
    summary = part.summary
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
    verdicts, clusters = judge_accounts(part.signals, part.keys, opts)
    return ScoreReport(
        verdicts, clusters, summary, part.exchanges, time.perf_counter() - t0, part.out_of_order
    )
