"""How the batch runner shows progress (lib.runtime.progress.Progress): rich progress bars on a
terminal; under cron or a pipe, plain lines: one when a stage starts, one when it ends
(counts, seconds), and one every `every` seconds within long counted work."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from lib.runtime.progress import Silent

LABELS = {
    "extract": "extracting features",
    "project": "projections",
    "gap": "gap metrics per level",
}


class RichProgress(Silent):
    """Progress bars (rich), one per counted task; stages show in the bars alone."""

    def __init__(self, bar):
        self.bar = bar
        self.tasks = {}

    def start(self, task: str, total: int) -> None:
        if task in self.tasks:  # started again (the Dask blocks of each level): its bar anew
            self.bar.reset(self.tasks[task], total=total)
        else:
            self.tasks[task] = self.bar.add_task(LABELS.get(task, task), total=total)

    def advance(self, task: str, n: int = 1) -> None:
        self.bar.advance(self.tasks[task], n)


class LineProgress:
    """One line per event, flushed at once, for logs read after the fact."""

    def __init__(self, out: TextIO | None = None, every: float = 30.0, clock=time.monotonic):
        self.out = out or sys.stdout
        self.every = every
        self.clock = clock
        self.counts: dict[str, list] = {}  # task → [done, total, started, last line]

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {text}", file=self.out, flush=True)

    def stage_started(self, stage: str, detail: str) -> None:
        self._line(f"{stage}: started" + (f" ({detail})" if detail else ""))

    def stage_done(self, stage: str, seconds: float, detail: str) -> None:
        self._line(f"{stage}: done in {seconds:.1f} s" + (f" ({detail})" if detail else ""))

    def stage_failed(self, stage: str, seconds: float, error: str) -> None:
        self._line(f"{stage}: failed after {seconds:.1f} s ({error.splitlines()[0][:200]})")

    def start(self, task: str, total: int) -> None:
        now = self.clock()
        self.counts[task] = [0, total, now, now]

    def advance(self, task: str, n: int = 1) -> None:
        state = self.counts[task]
        state[0] += n
        now = self.clock()
        if now - state[3] >= self.every and state[0] < state[1]:
            state[3] = now
            done, total, started = state[0], state[1], state[2]
            rate = done / max(now - started, 1e-9)
            self._line(
                f"{LABELS.get(task, task)}: {done}/{total} ({100 * done / total:.0f} %), "
                f"{rate:.1f}/s"
            )


class Steps:
    """A caricature job's `progress(model, step, total)` as counted tasks of a Progress:
    each batch of a model counts its optimisation steps from zero."""

    def __init__(self, progress):
        self.progress = progress
        self.done: dict[str, int] = {}

    def __call__(self, name: str, step: int, total: int) -> None:
        task = f"caricatures of {name}"
        if step == 1 or task not in self.done:
            self.progress.start(task, total)
            self.done[task] = 0
        self.progress.advance(task, step - self.done[task])
        self.done[task] = step


@contextmanager
def progress_for_terminal(console) -> Iterator[object]:
    """Rich bars when stdout is a terminal, else plain lines on stdout."""
    if not sys.stdout.isatty():
        yield LineProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        yield RichProgress(bar)
