"""CPU seconds of a test run's whole process tree: what the suite costs on a loaded machine.

Wall time on a shared 2-core machine says more about the neighbours than about the tests.
This runs a command (normally ``python -m pytest ...``) as a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``): every descendant that outlives its parent (a gateway, a
CLI child's JVM, a browser) is re-parented here and reaped, so ``getrusage(RUSAGE_CHILDREN)``
at the end holds the CPU of all of them, not only of the processes pytest itself waited for.
Run a file before and after a change in one go and compare the CPU lines; the load average is
printed beside them.

Run: ``.venv/bin/python benchmarks/suite_cpu.py -- .venv/bin/python -m pytest -q FILE``
(Linux only: prctl.)
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def run_reaped(command: list[str]) -> tuple[int, float, float]:
    """Run ``command``, reap every descendant; (exit code, wall s, CPU s of the whole tree)."""
    if not command:
        raise SystemExit("usage: suite_cpu.py -- COMMAND [ARGS...]")
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
    start = time.monotonic()
    rc = subprocess.Popen(command).wait()
    while True:  # orphans still running (daemons) or already dead: wait for every one
        try:
            os.wait()
        except ChildProcessError:
            break
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return rc, time.monotonic() - start, usage.ru_utime + usage.ru_stime


def main() -> None:
    args = sys.argv[1:]
    command = args[1:] if args[:1] == ["--"] else args
    load_before = os.getloadavg()[0]
    rc, wall, cpu = run_reaped(command)
    load_after = os.getloadavg()[0]
    print(
        f"suite_cpu: rc={rc} wall_s={wall:.1f} cpu_s={cpu:.1f} "
        f"load_1min before/after={load_before:.1f}/{load_after:.1f}",
        file=sys.stderr,
    )
    sys.exit(rc)


if __name__ == "__main__":
    main()
