"""The extraction engine: an item source's units through a backbone, in batches, into one
(N, D) float32 array per output level, with the feature cache in front.

An item source (`Source`) says what a unit is and how a batch of units becomes vectors:

- `lib.features.sources.Images`: an image → one row per level;
- `lib.features.objects.Objects`: an image → one row per object on it (ROIAlign on the
  levels, or each box cropped and run as an image);
- `lib.jobs.whatif.Variants`: a synthetic image → one row per transform and level;
- `lib.jobs.training`'s outputs: an image → the trained model's output.

`extract(source, backbone, executor, cache)` takes what the cache holds and hands the rest
to the executor (lib.runtime.executor: here, or lib.runtime.dask: on a cluster's workers),
which runs `batches`, the one loop that feeds a backbone, wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from lib.features.cache import FeatureCache, from_cache

if TYPE_CHECKING:
    from lib.features.backbones import Backbone
    from lib.runtime.executor import Executor


class Source(Protocol):
    """What extraction computes, unit by unit."""

    levels: tuple  # the outputs each row has (a backbone's levels, `roi`, ...)
    keys: Sequence[str]  # each output row's feature-cache key
    per_batch: int  # units per forward pass
    stacked: bool  # batches are one tensor of equal-sized images (pinned memory on a GPU)

    def __len__(self) -> int: ...  # units

    def rows(self, units: Sequence[int]) -> np.ndarray: ...  # their output rows, in order

    def todo(self, done: np.ndarray) -> list[int]: ...  # units with rows not in `done`

    def load(self, unit: int): ...  # in a decoding process: what `collate` batches

    def collate(self, loaded: list): ...

    def forward(
        self, backbone, batch, units: Sequence[int], device: str, precision: str
    ) -> dict[str, np.ndarray]: ...  # the units' rows, per level

    def part(self, units: Sequence[int]) -> Source: ...  # those units alone, for a worker


@dataclass
class Extraction:
    vectors: dict[str, np.ndarray]  # level → (N, D) float32, rows in the source's order
    cached: int  # rows whose vectors came from the cache


class Output:
    """The (N, D) arrays extraction fills, allocated when a level's D is first known
    (`allocate(level, shape)`: the run's memory-mapped feature files; memory by default)."""

    def __init__(self, n: int, allocate: Callable | None = None):
        self.n = n
        self.allocate = allocate or (lambda level, shape: np.empty(shape, np.float32))
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, row: int, vectors: dict[str, np.ndarray]) -> None:
        self.put_rows(np.array([row]), {lv: v[None] for lv, v in vectors.items()})

    def put_rows(self, rows: np.ndarray, vectors: dict[str, np.ndarray]) -> None:
        for lv, v in vectors.items():
            if lv not in self.arrays:
                self.arrays[lv] = self.allocate(lv, (self.n, v.shape[1]))
            self.arrays[lv][rows] = v


def extract(
    source: Source,
    backbone: Backbone,
    executor: Executor,
    cache: FeatureCache | None = None,
    allocate: Callable | None = None,
    task: str = "extract",
) -> Extraction:
    """Every row of `source`: from `cache` where it has them, the rest computed by
    `executor` (a shard of the cache written as each fills). Progress is counted in rows
    as `task`."""
    out = Output(len(source.keys), allocate)
    executor.progress.start(task, len(source.keys))

    def advance(n: int) -> None:
        executor.progress.advance(task, n)

    done = from_cache(cache, source.keys, source.levels, out.put, advance)
    executor.extract(source, backbone, source.todo(done), out, cache, advance)
    return Extraction(out.arrays, int(done.sum()))


class _Loading:
    """A source's units as a map-style dataset for torch's DataLoader."""

    def __init__(self, source: Source, units: Sequence[int]):
        self.source, self.units = source, units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, j: int):
        return self.source.load(self.units[j])


def place(backbone: Backbone, device: str) -> None:
    """The backbone on `device` (channels_last on a GPU, where convolutions want it)."""
    backbone.module.to(device)
    if device.startswith("cuda"):
        import torch

        backbone.module.to(memory_format=torch.channels_last)


def batches(
    source: Source,
    backbone: Backbone,
    units: Sequence[int],
    device: str = "cpu",
    precision: str = "fp32",
    workers: int = 0,
) -> Iterator[tuple[Sequence[int], dict[str, np.ndarray]]]:
    """The extraction loop: (the batch's units, their rows' vectors per level) for every
    `source.per_batch` units in order, decoded by `workers` DataLoader processes while the
    model runs (pinned memory on a GPU); pooling happens on the device, so only pooled
    vectors cross to the host."""
    from torch.utils.data import DataLoader

    place(backbone, device)
    size = source.per_batch
    loader = DataLoader(
        _Loading(source, units),
        batch_size=size,
        num_workers=workers if len(units) > size else 0,  # not worth a process
        pin_memory=device.startswith("cuda") and source.stacked,
        collate_fn=source.collate,
    )
    for start, batch in zip(range(0, len(units), size), loader, strict=True):
        part = units[start : start + size]
        yield part, source.forward(backbone, batch, part, device, precision)
