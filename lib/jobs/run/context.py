"""What every stage of a run receives besides its own parameters."""

from __future__ import annotations

from dataclasses import dataclass

from lib.runtime.executor import Executor
from lib.runtime.progress import Stages
from lib.store.runs import RunStore, RunWriter

DOMAINS = ("real", "synthetic")


@dataclass
class Context:
    """The run being written, where its work runs and how its stages report."""

    writer: RunWriter  # the partial run (published when every stage succeeded)
    store: RunStore  # the results folder: its feature cache, the users' annotations
    executor: Executor  # device, precision, decoding workers, block maps, progress
    stages: Stages  # each stage's seconds; tells the progress reporter and the log
    seed: int  # seeds every sample after the scan's (attribution, the search's probe)
