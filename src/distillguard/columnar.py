"""The traffic log as Parquet (hive layout by day): its schema, its files, and a reader.

The columns are derived from ``TrafficRecord``'s fields, so a field another room adds to the
record (say ``choices``) becomes a column without an edit here: strings, integers and floats
map to their Arrow types, anything structured (``request``, lists, dicts) is stored as a JSON
string. One extra column, ``seq``, is the exchange's position in the exported log (arrival
order): every engine folds an account's exchanges in ``seq`` order, which is the order the
streaming engine reads a JSON Lines log in, so all engines see the same sequence per account.

A data set is a directory ``DIR/day=YYYY-MM-DD/part-<first seq>.parquet`` (see
``distillguard.store.parquet`` for the writer). ``open_dataset`` lists and checks every file's
schema up front, so a missing or mistyped column, or a file that cannot be read, is an
``InputError`` naming the file and column before any work starts; nothing is skipped.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from distillguard.errors import InputError, NotFound
from distillguard.traffic import ReadSummary, TrafficRecord

SEQ = "seq"  # arrival order of the exchange in the exported log (int64, unique)
PART_GLOB = "day=*/part-*.parquet"


@dataclass(frozen=True)
class Column:
    """One column of the log: its name, Arrow type, whether it may be null, and whether it
    holds a JSON document (structured record fields)."""

    name: str
    type: pa.DataType
    nullable: bool
    json: bool


def _column(name: str, hint: Any) -> Column:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    nullable = (origin is typing.Union or origin is types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if nullable else hint
    if base is str:
        return Column(name, pa.string(), nullable, False)
    if base is float:
        return Column(name, pa.float64(), nullable, False)
    if base is bool:
        return Column(name, pa.bool_(), nullable, False)
    if base is int:
        return Column(name, pa.int64(), nullable, False)
    return Column(name, pa.string(), nullable, True)  # dict, list, tuple, Any: JSON text


@cache
def traffic_columns() -> tuple[Column, ...]:
    """The record's fields, in ``TrafficRecord.to_dict`` order, then ``seq``."""
    hints = typing.get_type_hints(TrafficRecord)
    by_name = {f.name: _column(f.name, hints[f.name]) for f in dataclasses.fields(TrafficRecord)}
    sample = TrafficRecord("x", 0.0, "a", "k", "0.0.0.0", "/", {}, 200).to_dict()
    order = [n for n in sample if n in by_name] + [n for n in by_name if n not in sample]
    return (*(by_name[n] for n in order), Column(SEQ, pa.int64(), False, False))


def traffic_schema() -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in traffic_columns()])


def record_row(rec: TrafficRecord, seq: int) -> dict[str, Any]:
    """One record as a row of ``traffic_schema`` (structured fields as JSON text)."""
    d = rec.to_dict()
    row: dict[str, Any] = {}
    for c in traffic_columns()[:-1]:
        v = d.get(c.name)
        row[c.name] = orjson.dumps(v).decode() if c.json and v is not None else v
    row[SEQ] = seq
    return row


def records_from_table(
    table: pa.Table | pa.RecordBatch, where: str = ""
) -> Iterator[TrafficRecord]:
    """The records of a table of log rows, in row order (every engine goes through here).

    A row that does not make a valid record is an ``InputError`` naming ``where`` and the
    exchange, never a silent skip: the file's schema was checked, so it is a corrupt value."""
    cols = {c.name: c for c in traffic_columns()[:-1]}
    present = [n for n in cols if n in table.schema.names]
    data = {n: table.column(n).to_pylist() for n in present}
    json_cols = [n for n in present if cols[n].json]
    loads = orjson.loads
    for i in range(table.num_rows):
        d = {n: data[n][i] for n in present}
        try:
            for n in json_cols:
                if d[n] is not None:
                    d[n] = loads(d[n])
            yield TrafficRecord.from_dict(d)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{where}: exchange {d.get('id')!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------


_COMPATIBLE = {
    "string": (pa.types.is_string, pa.types.is_large_string),
    "int64": (pa.types.is_integer,),
    "double": (pa.types.is_floating, pa.types.is_integer),
    "bool": (pa.types.is_boolean,),
}


def check_schema(schema: pa.Schema, where: str) -> None:
    """Raise ``InputError`` for the first required column missing or any column mistyped."""
    for c in traffic_columns():
        if c.name not in schema.names:
            if c.nullable:
                continue  # an optional field newer than the file: read as null
            raise InputError(f"{where}: missing column {c.name!r} (expected {c.type})")
        got = schema.field(c.name).type
        if not any(ok(got) for ok in _COMPATIBLE[str(c.type)]):
            raise InputError(f"{where}: column {c.name!r} has type {got}, expected {c.type}")


@dataclass(frozen=True)
class ParquetDataset:
    """A checked hive-partitioned traffic log: its part files in ``seq`` order."""

    root: Path
    files: tuple[Path, ...]
    rows: int

    def summary(self) -> ReadSummary:
        return ReadSummary(str(self.root), self.rows, self.rows, 0, ())


def is_parquet_log(path: Path) -> bool:
    """A directory of day partitions or a single ``.parquet`` file."""
    return path.is_dir() or path.suffix == ".parquet"


def _first_seq(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1  # a part named otherwise: ordered first, its rows still read in seq order


def open_dataset(path: Path | str) -> ParquetDataset:
    """List and check every part file of the log at ``path`` (a directory or one file)."""
    root = Path(path)
    if not root.exists():
        raise NotFound(f"Parquet log not found: {root}")
    files = [root] if root.is_file() else sorted(root.glob(PART_GLOB))
    if not files:
        raise InputError(f"{root}: no Parquet part files ({PART_GLOB})")
    rows = 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{f}: cannot read this Parquet partition ({exc})") from exc
        check_schema(schema, str(f))
        rows += meta.num_rows
    files.sort(key=lambda f: (_first_seq(f), str(f)))
    return ParquetDataset(root, tuple(files), rows)


class ParquetReader:
    """Iterate the ``TrafficRecord`` s of a Parquet log in ``seq`` (arrival) order, one part
    file at a time (memory: one file). The counterpart of ``traffic.JsonlReader``."""

    def __init__(self, path: Path | str) -> None:
        self.dataset = open_dataset(path)
        self.records = 0

    def tables(self) -> Iterator[tuple[pa.Table, str]]:
        """Each part file's rows in ``seq`` order, with the file's name (for errors)."""
        for f in self.dataset.files:
            try:
                table = pq.read_table(f).sort_by(SEQ)
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"{f}: cannot read this Parquet partition ({exc})") from exc
            yield table, str(f)

    def __iter__(self) -> Iterator[TrafficRecord]:
        self.records = 0
        for table, where in self.tables():
            for rec in records_from_table(table, where):
                self.records += 1
                yield rec

    def summary(self) -> ReadSummary:
        return self.dataset.summary()
