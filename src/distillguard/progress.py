"""The one rich progress bar that long work shows (training, harvesting, scoring, export).

``progress_bar`` is the bar (description, bar, done/total, elapsed, remaining; a smoothed loss
column for training loops); ``tracked`` is the bar with one task, as a context manager that
yields an ``update(done, total)`` callback, which is what library functions take as their
``progress`` argument. No total (``None``) shows a pulsing bar and the count so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ProgressFn = Callable[..., None]  # update(done, total=None): what library code calls back


def progress_bar(
    *,
    console: Console | None = None,
    transient: bool = False,
    enabled: bool = True,
    loss: bool = False,
) -> Progress:
    """A bar for any long task; ``loss=True`` adds ``{task.fields[loss]}`` (training loops
    pass ``loss=`` to ``add_task`` and ``update``)."""
    columns: list[str | ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if loss:
        columns.append(TextColumn("loss {task.fields[loss]:.3f}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient, disable=not enabled)


@contextmanager
def tracked(
    label: str,
    *,
    total: int | None = None,
    console: Console | None = None,
    transient: bool = False,
    enabled: bool = True,
) -> Iterator[ProgressFn]:
    """One task on a bar; yields ``update(done, total=None)`` (a new total replaces the old)."""
    with progress_bar(console=console, transient=transient, enabled=enabled) as bar:
        task = bar.add_task(label, total=total)

        def update(done: int, new_total: int | None = None) -> None:
            if new_total is None:
                bar.update(task, completed=done)
            else:
                bar.update(task, completed=done, total=new_total)

        yield update
