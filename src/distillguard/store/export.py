"""The exchange log to and from the traffic log of ``shared/spec/traffic-log.md`` (§1).

Rows stream from the database in time order (``iter_exchanges``) into
``distillguard.traffic.JsonlWriter``, which writes a temporary file and moves it into place:
memory stays bounded whatever the log's size, and a failed export leaves no half file.

Attempts that never authenticated (no account, no key) belong to no account, and the format
requires both, so they are left out; ``ExportSummary.unattributed`` counts them so that the
caller can say so. Each line also carries the serving details the spec leaves optional
(``model``, ``error``, ``watermark_scheme``, ``watermark_key_id``).

Import goes the other way (a simulator's traffic, another gateway's export): lines stream
through ``distillguard.traffic``'s reader, malformed ones are skipped and counted with their
line numbers, ids already in the database are counted as duplicates and left as they are, and
rows go in by batches of ``IMPORT_BATCH`` in one transaction each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from distillguard.store.db import as_store_error, session_scope
from distillguard.store.exchanges import (
    ExchangeRecord,
    count_exchanges,
    iter_exchanges,
    record_to_row,
)
from distillguard.store.schema import Exchange
from distillguard.traffic import JsonlReader, JsonlWriter, SkippedLine

PROGRESS_EVERY = 1000  # rows between progress callbacks
IMPORT_BATCH = 1000  # rows per import transaction: bounded memory, few commits


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    written: int  # lines in the file
    unattributed: int  # unauthenticated attempts in the same window, left out


def traffic_line(record: ExchangeRecord) -> dict[str, Any]:
    """The spec §1 object for one attributed exchange (``ExchangeRecord.to_traffic``)."""
    return record.to_traffic()


def export_traffic(
    engine: Engine, out: Path, *, since: float | None = None, until: float | None = None
) -> int:
    """Write every attributed exchange (``since <= ts < until``) to ``out``; returns lines."""
    return export_traffic_summary(engine, out, since=since, until=until).written


def export_traffic_summary(
    engine: Engine,
    out: Path,
    *,
    since: float | None = None,
    until: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """``export_traffic`` that also counts the unauthenticated attempts it left out.

    ``progress(n)`` is called with the lines written so far, every ``PROGRESS_EVERY`` lines.
    """
    records = iter_exchanges(engine, since=since, until=until, attributed_only=True)
    with JsonlWriter(out) as writer:
        for record in records:
            writer.write(traffic_line(record))
            if progress is not None and writer.count % PROGRESS_EVERY == 0:
                progress(writer.count)
        written = writer.count
    if progress is not None:
        progress(written)
    with session_scope(engine) as session:
        unattributed = count_exchanges(session, since=since, until=until, attributed=False)
    return ExportSummary(path=Path(out), written=written, unattributed=unattributed)


# --- import -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSummary:
    path: Path
    lines: int  # lines read (blank ones included)
    inserted: int  # new rows
    duplicates: int  # ids already in the database (or twice in the file), left as they were
    skipped: int  # malformed lines, not imported
    examples: tuple[SkippedLine, ...]  # the first skipped lines with their reasons

    def describe(self) -> str:
        text = f"{self.path}: {self.inserted:,} exchanges imported"
        if self.duplicates:
            text += f", {self.duplicates:,} already present"
        if self.skipped:
            shown = "; ".join(f"line {e.line_no}: {e.reason}" for e in self.examples[:5])
            text += f", {self.skipped:,} malformed lines skipped ({shown})"
        return text


def _parse_line(d: dict[str, Any]) -> ExchangeRecord:
    """One traffic line as an exchange (``ExchangeRecord.from_traffic``)."""
    return ExchangeRecord.from_traffic(d)


def _insert_new(engine: Engine, records: list[ExchangeRecord]) -> int:
    """Insert the records whose id is new; returns how many went in."""
    unique = list({r.id: r for r in reversed(records)}.values())  # first of a repeated id
    with engine.begin() as connection:
        ids = [r.id for r in unique]
        existing = set(connection.scalars(select(Exchange.id).where(Exchange.id.in_(ids))))
        rows = [record_to_row(r) for r in unique if r.id not in existing]
        if rows:
            insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
            # A concurrent writer of the same id wins quietly instead of failing the batch.
            statement = insert(Exchange).on_conflict_do_nothing(index_elements=["id"])
            connection.execute(statement, rows)
    return len(rows)


def import_traffic(
    engine: Engine, path: Path, *, progress: Callable[[int], None] | None = None
) -> ImportSummary:
    """Load a traffic-log file (plain or gzip) into the exchange log; see the module docstring.

    ``progress(n)`` is called with the records read so far (malformed lines included), every
    ``IMPORT_BATCH`` records, and with the file's line count at the end.
    A Parquet log (a directory of day partitions, or a .parquet file) goes to
    ``store.parquet.import_parquet``.
    """
    from distillguard.columnar import is_parquet_log

    if is_parquet_log(Path(path)):
        return import_parquet(engine, Path(path), progress=progress)
    reader = JsonlReader(path, _parse_line)
    batch: list[ExchangeRecord] = []
    inserted = seen = 0
    try:
        for record in reader:
            batch.append(record)
            if len(batch) >= IMPORT_BATCH:
                inserted += _insert_new(engine, batch)
                seen += len(batch)
                batch = []
                if progress is not None:
                    progress(seen + reader.skipped)
        if batch:
            inserted += _insert_new(engine, batch)
            seen += len(batch)
    except SQLAlchemyError as exc:
        raise as_store_error(exc, engine) from exc
    summary = reader.summary()
    if progress is not None:
        progress(summary.lines)
    return ImportSummary(
        path=Path(path),
        lines=summary.lines,
        inserted=inserted,
        duplicates=seen - inserted,
        skipped=summary.skipped,
        examples=summary.examples,
    )


def import_parquet(
    engine: Engine, path: Path, *, progress: Callable[[int], None] | None = None
) -> ImportSummary:
    """``export.import_traffic`` for a Parquet log: every row must be a valid exchange (the
    files' schemas are checked first; a bad value is an error naming the file), ids already
    in the database are counted as duplicates."""
    from distillguard.columnar import ParquetReader

    reader = ParquetReader(path)
    batch: list[ExchangeRecord] = []
    inserted = seen = 0
    try:
        for rec in reader:
            batch.append(ExchangeRecord.from_traffic(rec.to_dict()))
            if len(batch) >= IMPORT_BATCH:
                inserted += _insert_new(engine, batch)
                seen += len(batch)
                batch = []
                if progress is not None:
                    progress(seen)
        if batch:
            inserted += _insert_new(engine, batch)
            seen += len(batch)
    except SQLAlchemyError as exc:
        raise as_store_error(exc, engine) from exc
    return ImportSummary(Path(path), seen, inserted, seen - inserted, 0, ())
