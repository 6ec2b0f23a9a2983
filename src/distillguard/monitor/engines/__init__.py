"""Scoring engines for the Parquet log: DuckDB (embedded default) and Spark (a cluster).

Both give the streaming engine's verdicts (``monitor.offline``) by construction: see
``common``. ``ENGINES`` names every engine ``monitor score --engine`` accepts.
"""

from __future__ import annotations

ENGINES = ("stream", "duckdb", "spark")
