"""How long work reports itself: stages that start and end, and counts within them.

The library only calls a `Progress`; the CLI decides how it looks (rich progress bars on a
terminal, one plain line per event under cron: batch.progress).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from lib.runtime.threads import stage_threads

log = logging.getLogger(__name__)


class Progress(Protocol):
    def stage_started(self, stage: str, detail: str) -> None: ...
    def stage_done(self, stage: str, seconds: float, detail: str) -> None: ...
    def stage_failed(self, stage: str, seconds: float, error: str) -> None: ...
    def start(self, task: str, total: int) -> None: ...  # a counted task within a stage
    def advance(self, task: str, n: int = 1) -> None: ...


class Silent:
    def stage_started(self, stage: str, detail: str) -> None:
        pass

    def stage_done(self, stage: str, seconds: float, detail: str) -> None:
        pass

    def stage_failed(self, stage: str, seconds: float, error: str) -> None:
        pass

    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, n: int = 1) -> None:
        pass


class Stage:
    """What a running stage may say when it ends (`summary`)."""

    summary = ""


class Stages(dict):
    """Seconds per stage; each stage tells the progress reporter and the log when it
    starts and when it ends."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    @contextmanager
    def __call__(self, name: str, detail: str = "") -> Iterator[Stage]:
        stage = Stage()
        self.progress.stage_started(name, detail)
        log.info("stage %s: started %s", name, detail)
        t0 = time.perf_counter()
        try:
            with stage_threads(name):  # lib.runtime.threads: each stage's thread counts
                yield stage
        except BaseException as exc:  # a log read the next morning says where it stopped
            seconds = time.perf_counter() - t0
            self.progress.stage_failed(name, seconds, str(exc) or type(exc).__name__)
            log.info("stage %s: failed after %.2f s", name, seconds)
            raise
        self[name] = round(time.perf_counter() - t0, 3)
        self.progress.stage_done(name, self[name], stage.summary)
        log.info("stage %s: %.2f s %s", name, self[name], stage.summary)
