"""Drive a generator job with a rich progress bar on stderr (quiet with --json / non-tty)."""

from __future__ import annotations

import sys

from studio.core.jobs import JobContext, Progress, drive


def run_with_progress(gen, *, label: str = "working", quiet: bool = False):
    if quiet or not sys.stderr.isatty():
        return drive(gen)
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
             TimeElapsedColumn(), TimeRemainingColumn(), transient=True, console=None) as bar:  # fmt: skip
        task = bar.add_task(label, total=1.0)

        def on(p: Progress):
            if p.fraction >= 0:
                bar.update(task, completed=p.fraction, description=f"{label}: {p.message}"[:70])

        return drive(gen, JobContext(on))
