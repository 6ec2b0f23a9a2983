"""Traffic records straight from the gateway's own database (the ``exchanges`` table).

Streams rows in time order through the store's reader and converts each with the same code
that exports the traffic log, so ``monitor score --db`` and ``monitor score`` on an export
see identical records. Rows that do not make a valid record are skipped and counted. It
lives in the store: the monitor reads records, never SQL.
"""

from __future__ import annotations

from collections.abc import Iterator

from distillguard.store.db import make_engine
from distillguard.store.exchanges import iter_exchanges
from distillguard.store.export import traffic_line
from distillguard.traffic import MAX_SKIP_EXAMPLES, SkippedLine, TrafficRecord


class DbTrafficSource:
    """Iterable of ``TrafficRecord`` over the attributed exchanges of one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.rows = 0
        self.skipped = 0
        self.examples: list[SkippedLine] = []

    def __iter__(self) -> Iterator[TrafficRecord]:
        self.rows = self.skipped = 0
        self.examples = []
        for row in iter_exchanges(self.engine, attributed_only=True):
            self.rows += 1
            try:
                yield TrafficRecord.from_dict(traffic_line(row))
            except (ValueError, TypeError) as exc:
                self.skipped += 1
                if len(self.examples) < MAX_SKIP_EXAMPLES:
                    self.examples.append(SkippedLine(self.rows, f"exchange {row.id}: {exc}"))

    def describe(self) -> str:
        msg = f"database: {self.rows - self.skipped:,} exchanges"
        if self.skipped:
            shown = "; ".join(e.reason for e in self.examples[:3])
            msg += f", {self.skipped:,} rows skipped ({shown})"
        return msg


def read_exchanges_db(url: str) -> DbTrafficSource:
    return DbTrafficSource(url)
