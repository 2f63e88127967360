"""Batched feature extraction: backbone levels pooled to one vector per image and level.

Poolings (`--pooling`):
- gap: global average over space → C values per level (256 for an FPN level). Default.
- channel-sum: sum over channels, spatial map flattened row-major → H·W values. Exactly
  the original tool's vectors (p2 of a 512×512 input gives 128² = 16,384 values).
- channel-mean: like channel-sum, divided by C.

Pooled vectors are cached per image content hash under a key naming the backbone's
weights, the pooling and the preprocessing, so an interrupted run resumes where it stopped
and a nightly run only computes new images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lib.errors import GapscopeError

if TYPE_CHECKING:
    import torch

    from lib.backbones import Backbone
    from lib.images import ImageRecord, ImageSet, Prepare

log = logging.getLogger(__name__)


def _gap(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.mean(dim=(2, 3))


def _channel_sum(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.sum(dim=1).flatten(1)


def _channel_mean(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.mean(dim=1).flatten(1)


POOLINGS: dict[str, Callable] = {
    "gap": _gap,
    "channel-sum": _channel_sum,
    "channel-mean": _channel_mean,
}


def pooling_fn(pooling: str) -> Callable:
    try:
        return POOLINGS[pooling]
    except KeyError:
        raise GapscopeError(
            f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}"
        ) from None


def pool(fmap: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, C, H, W) → (N, D) float32, by the named pooling."""
    return pooling_fn(pooling)(fmap.float())


class FeatureCache:
    """Pooled vectors on disk, one small .npz per image hash, under a key directory.

    Writes go to a temporary name and are renamed, so a killed run never leaves a
    half-written entry behind.
    """

    def __init__(self, root: Path, key: str):
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, image_hash: str) -> Path:
        return self.dir / image_hash[:2] / f"{image_hash}.npz"

    def get(self, image_hash: str, levels: Sequence[str]) -> dict[str, np.ndarray] | None:
        path = self._path(image_hash)
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                if all(lv in data for lv in levels):
                    return {lv: data[lv] for lv in levels}
        except Exception:  # a truncated entry raises BadZipFile, KeyError, ...: recompute
            log.warning("ignoring unreadable cache entry %s", path)
        return None

    def put(self, image_hash: str, vectors: dict[str, np.ndarray]) -> None:
        path = self._path(image_hash)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **vectors)
        tmp.replace(path)


def cache_key(backbone: Backbone, pooling: str, prepare: Prepare, precision: str = "fp32") -> str:
    text = f"{backbone.name}|{backbone.fingerprint()}|{pooling}|{prepare.describe()}"
    if precision != "fp32":  # bf16 vectors differ slightly: never mix them with fp32 ones
        text += f"|{precision}"
    return f"{backbone.name}-{pooling}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass
class Extraction:
    vectors: dict[str, np.ndarray]  # level → (N, D) float32, rows in input order
    cached: int  # images whose vectors came from the cache


class _Pixels:
    """The images still to compute, as a map-style dataset for torch's DataLoader."""

    def __init__(self, items, todo, prepare):
        self.items, self.todo, self.prepare = items, todo, prepare

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int) -> np.ndarray:
        image_set, record = self.items[self.todo[j]]
        return image_set.load(record, self.prepare)


def _stack(batch: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(batch))


def extract(
    backbone: Backbone,
    items: Sequence[tuple[ImageSet, ImageRecord]],
    prepare: Prepare,
    pooling: str = "gap",
    batch_size: int = 32,
    cache: FeatureCache | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
    precision: str = "fp32",
) -> Extraction:
    """Pooled vectors for every (image set, record), in order, per level.

    Images are decoded by `workers` DataLoader processes (pinned memory on a GPU; how many
    is lib.backend's choice) while the model runs; pooling happens on the device, so only
    pooled vectors cross to the host.
    """
    from torch.utils.data import DataLoader

    pooling_fn(pooling)  # an unknown pooling fails before any work
    levels = backbone.levels
    rows: list[dict[str, np.ndarray] | None] = [None] * len(items)
    todo: list[int] = []
    for i, (_, record) in enumerate(items):
        hit = cache.get(record.hash, levels) if cache else None
        if hit is None:
            todo.append(i)
        else:
            rows[i] = hit
    cached = len(items) - len(todo)
    if progress and cached:
        progress(cached)
    if cached:
        log.info("feature cache: %d of %d images already computed", cached, len(items))
    backbone.module.to(device)
    if device.startswith("cuda"):
        import torch

        backbone.module.to(memory_format=torch.channels_last)
    loader = DataLoader(
        _Pixels(items, todo, prepare),
        batch_size=batch_size,
        num_workers=workers if len(todo) > batch_size else 0,  # not worth a process
        pin_memory=device.startswith("cuda"),
        collate_fn=_stack,
    )
    for start, pixels in zip(range(0, len(todo), batch_size), loader, strict=True):
        batch = todo[start : start + batch_size]
        maps = backbone(pixels, device=device, precision=precision)
        pooled = {lv: pool(maps[lv], pooling).cpu().numpy() for lv in levels}
        for j, i in enumerate(batch):
            rows[i] = {lv: pooled[lv][j] for lv in levels}
            if cache:
                cache.put(items[i][1].hash, rows[i])
        if progress:
            progress(len(batch))
    vectors = {
        lv: np.ascontiguousarray(np.stack([r[lv] for r in rows]).astype(np.float32))
        for lv in levels
    }
    return Extraction(vectors=vectors, cached=cached)
