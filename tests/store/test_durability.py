"""A row whose write was acknowledged survives SIGKILL of the writing process (real process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from sqlalchemy import Engine

from distillguard.store.exchanges import iter_exchanges

# The child acknowledges each record on stdout only after `await log.write(...)` returned,
# and keeps writing until it is killed: it never closes the log or the engine. It uses the
# weaker commit mode (flush_wal=False: PostgreSQL's synchronous_commit=off; SQLite is always
# synchronous=NORMAL), so the default mode's promise is covered a fortiori.
CHILD = """
import asyncio, sys
from distillguard.store import ExchangeLog, ExchangeRecord, make_engine

log = ExchangeLog(make_engine(sys.argv[1]), flush_wal=False)

async def main():
    i = 0
    while True:
        record = ExchangeRecord(
            id=f"row-{i:06d}", account_id="acct_k", key_id="00000000000000aa", ip="127.0.0.1",
            endpoint="/v1/chat/completions", request={"model": "m", "i": i}, response_text="ok",
        )
        await log.write(record)
        sys.stdout.write(record.id + "\\n")
        sys.stdout.flush()
        i += 1

asyncio.run(main())
"""


def test_acknowledged_rows_survive_sigkill(engine: Engine, store_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 200:
            line = child.stdout.readline()
            assert line, f"child ended early: {child.stderr.read()[-2000:]}"
            acknowledged.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: it is writing the next rows
        child.wait(timeout=30)
        acknowledged += [x.strip() for x in child.stdout.read().splitlines() if x.strip()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    stored = {r.id for r in iter_exchanges(engine)}
    missing = [x for x in acknowledged if x not in stored]
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {missing[:3]}"


WRITER = """
import sys
from distillguard.store import ExchangeLog, ExchangeRecord, make_engine

with ExchangeLog(make_engine(sys.argv[1])) as log:
    for i in range(int(sys.argv[3])):
        log.write_sync(ExchangeRecord(id=f"{sys.argv[2]}-{i}", ip="127.0.0.1", endpoint="/v1/x"))
"""


def test_several_processes_write_one_log(engine: Engine, store_url: str) -> None:
    """Two gateway processes (or the CLI beside a gateway) write one database file or server."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, name, "150"], stderr=subprocess.PIPE
        )
        for name in ("p1", "p2")
    ]
    errors = [child.communicate(timeout=120)[1].decode()[-2000:] for child in children]
    assert [child.returncode for child in children] == [0, 0], errors
    stored = {r.id for r in iter_exchanges(engine)}
    assert stored == {f"{p}-{i}" for p in ("p1", "p2") for i in range(150)}
