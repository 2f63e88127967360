"""Whole images as an item source of the extraction engine (lib.features.engine): one
row per image and level."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from lib.features.pooling import DEFAULT, key_name, pool, pool_valid, resolve_pooling
from lib.inputs.images import ImageRecord, Prepare, loader_of

BATCH_SIZE = 32  # images per forward pass (`batch run --batch-size`)


@dataclass
class Images:
    """Each (image set or loader, record) of `items`, prepared by `prepare`, pooled by
    `pooling` on every level of `levels`, `batch_size` images per forward pass. Images
    of mixed sizes (the detector's resize keeps each one's aspect) are computed as if
    alone (those of one padded size share a pass), and each pools only its own part of
    the map: a vector never depends on its batch."""

    items: Sequence[tuple[object, ImageRecord]]
    prepare: Prepare
    levels: tuple[str, ...]
    pooling: str = DEFAULT
    batch_size: int = BATCH_SIZE

    def __post_init__(self):
        self.pooling = resolve_pooling(self.pooling)  # an unknown one fails before any work

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def keys(self) -> list[str]:
        return [record.hash for _, record in self.items]

    @property
    def per_batch(self) -> int:
        return self.batch_size

    @property
    def stacked(self) -> bool:
        return not self.prepare.detector

    def rows(self, units: Sequence[int]) -> np.ndarray:
        return np.asarray(units, dtype=np.int64)

    def todo(self, done: np.ndarray) -> list[int]:
        return np.flatnonzero(~done).tolist()

    def load(self, unit: int) -> np.ndarray:
        images, record = self.items[unit]
        return images.load(record, self.prepare)

    def collate(self, loaded: list[np.ndarray]):
        if not self.stacked:
            return loaded
        import torch

        return torch.from_numpy(np.stack(loaded))

    def forward(self, backbone, batch, units, device: str, precision: str) -> dict:
        if not self.stacked:  # each image as if alone (Backbone.forward_alike)
            out = {lv: [None] * len(batch) for lv in self.levels}
            for positions, maps, size in backbone.forward_alike(batch, device, precision):
                sizes = [batch[i].shape[:2] for i in positions]
                for lv in self.levels:
                    pooled = pool_valid(maps[lv], sizes, size, self.pooling)
                    for i, row in zip(positions, pooled, strict=True):
                        out[lv][i] = row
            return {lv: np.stack(rows) for lv, rows in out.items()}
        maps = backbone(batch, device=device, precision=precision)
        return {lv: pool(maps[lv], self.pooling).cpu().numpy() for lv in self.levels}

    def part(self, units: Sequence[int]) -> Images:
        items = [(loader_of(images), record) for images, record in (self.items[u] for u in units)]
        return replace(self, items=items)

    def describe(self) -> str:
        """How the images are pooled, as the feature cache's key names it."""
        return key_name(self.pooling)
