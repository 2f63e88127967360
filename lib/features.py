"""Batched feature extraction: backbone levels pooled to one vector per image and level.

Poolings (`--pooling`):
- gap: global average over space → C values per level (256 for an FPN level). Default.
- channel-sum: sum over channels, spatial map flattened row-major → H·W values. Exactly
  the original tool's vectors (p2 of a 512×512 input gives 128² = 16,384 values).
- channel-mean: like channel-sum, divided by C.

Pooled vectors are cached by image content hash, in shards of 4,096 images, under a key
naming the backbone's weights, the pooling and the preprocessing, so an interrupted run
resumes after the last complete shard and a nightly run only computes new images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lib.errors import GapscopeError, first_line

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
    """Pooled vectors on disk in shards: each a folder of `hashes.npy` (the images' content
    hashes) and one `<level>.npy` (n, D) per level, under a key directory.

    A shard is written under a temporary name and renamed into place whole, so a run
    killed mid-extraction loses at most the shard it was filling and the next run resumes
    after the last complete one. A shard that cannot be read back whole (a truncated or
    damaged file) is reported, removed and its images computed again; it is never used.
    """

    def __init__(self, root: Path, key: str, shard: int = 4096):
        self.shard = shard  # images per shard: ~250 shards at 1M images
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] | None = None

    def shards(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def index(self) -> dict[str, tuple[Path, int]]:
        """hash → (shard, row) over every complete shard."""
        if self._index is None:
            self._index = {}
            for shard in self.shards():
                try:
                    hashes = np.load(shard / "hashes.npy", allow_pickle=False)
                except (OSError, ValueError, EOFError):
                    self._drop(shard, "unreadable hash list")
                    continue
                for row, h in enumerate(hashes.tolist()):
                    self._index[h] = (shard, row)
        return self._index

    def read(self, hashes: Sequence[str], levels: Sequence[str]):
        """Yield (position in `hashes`, {level: vector}) for every cached hash, a shard at a
        time (memory-mapped); positions of damaged shards are simply not yielded."""
        index = self.index()
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, h in enumerate(hashes):
            if h in index:
                shard, row = index[h]
                by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            arrays = self._open(shard, levels)
            if arrays is None:
                continue
            for i, row in pairs:
                yield i, {lv: np.asarray(arrays[lv][row]) for lv in levels}

    def _open(self, shard: Path, levels: Sequence[str]) -> dict[str, np.ndarray] | None:
        try:
            n = len(np.load(shard / "hashes.npy", mmap_mode="r", allow_pickle=False))
            arrays = {lv: np.load(shard / f"{lv}.npy", mmap_mode="r", allow_pickle=False)
                      for lv in levels}  # fmt: skip
            if any(a.ndim != 2 or len(a) != n or a.dtype != np.float32 for a in arrays.values()):
                raise ValueError("levels disagree with the hash list")
        except (OSError, ValueError, EOFError) as exc:
            self._drop(shard, first_line(exc))
            return None
        return arrays

    def _drop(self, shard: Path, why: str) -> None:
        import shutil

        log.warning("feature cache: ignoring and removing damaged shard %s (%s)", shard, why)
        shutil.rmtree(shard, ignore_errors=True)
        if self._index is not None:
            self._index = {h: v for h, v in self._index.items() if v[0] != shard}

    def put(self, hashes: Sequence[str], vectors: dict[str, np.ndarray]) -> None:
        """One complete shard: the images' hashes and their vectors per level."""
        import os
        import secrets
        import shutil

        name = f"{len(self.shards()):06d}-{secrets.token_hex(4)}"
        tmp = self.dir / f".tmp-{name}"
        tmp.mkdir()
        try:
            np.save(tmp / "hashes.npy", np.array(hashes, dtype="U64"))
            for lv, v in vectors.items():
                np.save(tmp / f"{lv}.npy", np.ascontiguousarray(v, dtype=np.float32))
            os.replace(tmp, self.dir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self._index is not None:
            self._index.update((h, (self.dir / name, row)) for row, h in enumerate(hashes))


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


def pool_valid(fmap, sizes: list[tuple[int, int]], padded: tuple[int, int], pooling: str):
    """Each image's vector from its own (unpadded) part of a padded batch's map: the
    first ceil(h / stride) rows and ceil(w / stride) columns."""
    import math

    sh, sw = padded[0] / fmap.shape[-2], padded[1] / fmap.shape[-1]
    rows = [pool(fmap[i : i + 1, :, : math.ceil(h / sh), : math.ceil(w / sw)], pooling)
            for i, (h, w) in enumerate(sizes)]  # fmt: skip
    return np.concatenate([r.cpu().numpy() for r in rows])


def _as_list(batch: list[np.ndarray]) -> list[np.ndarray]:
    return batch


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
    allocate: Callable[[str, tuple[int, int]], np.ndarray] | None = None,
    remote: Callable | None = None,
) -> Extraction:
    """Pooled vectors for every (image set, record), in order, per level.

    Images are decoded by `workers` DataLoader processes (pinned memory on a GPU; how many
    is lib.backend's choice) while the model runs; pooling happens on the device, so only
    pooled vectors cross to the host. Vectors are written into the arrays `allocate(level,
    (N, D))` returns (the run's memory-mapped feature files; in memory by default), and
    into the cache a shard at a time, so memory does not grow with N. `remote(items,
    todo, out, progress)` computes the images not cached elsewhere instead (lib.cluster:
    on Dask workers), putting each image's vectors into `out`.
    """
    from torch.utils.data import DataLoader

    pooling_fn(pooling)  # an unknown pooling fails before any work
    levels = backbone.levels
    out = _Output(len(items), allocate)
    hashes = [record.hash for _, record in items]
    done = from_cache(cache, hashes, levels, out, progress)
    todo = np.flatnonzero(~done).tolist()
    cached = len(items) - len(todo)
    if remote is not None:
        remote(items, todo, out, progress or (lambda n: None))
        return Extraction(vectors=out.arrays, cached=cached)
    backbone.module.to(device)
    if device.startswith("cuda"):
        import torch

        backbone.module.to(memory_format=torch.channels_last)
    mixed = prepare.detector  # the detector's resize keeps each image's own size
    loader = DataLoader(
        _Pixels(items, todo, prepare),
        batch_size=batch_size,
        num_workers=workers if len(todo) > batch_size else 0,  # not worth a process
        pin_memory=device.startswith("cuda") and not mixed,
        collate_fn=_as_list if mixed else _stack,
    )
    shard = _Shard(cache)
    for start, pixels in zip(range(0, len(todo), batch_size), loader, strict=True):
        batch = todo[start : start + batch_size]
        if mixed:
            maps, size = backbone.forward_padded(pixels, device=device, precision=precision)
            sizes = [p.shape[:2] for p in pixels]
            pooled = {lv: pool_valid(maps[lv], sizes, size, pooling) for lv in levels}
        else:
            maps = backbone(pixels, device=device, precision=precision)
            pooled = {lv: pool(maps[lv], pooling).cpu().numpy() for lv in levels}
        for j, i in enumerate(batch):
            out.put(i, {lv: pooled[lv][j] for lv in levels})
        shard.add([hashes[i] for i in batch], pooled)
        if progress:
            progress(len(batch))
    shard.flush()
    return Extraction(vectors=out.arrays, cached=cached)


def from_cache(cache: FeatureCache | None, keys: Sequence[str], levels, out: _Output,
               progress: Callable[[int], None] | None = None) -> np.ndarray:  # fmt: skip
    """Put every cached key's vectors into `out` (counted in `progress`); which were."""
    done = np.zeros(len(keys), dtype=bool)
    for i, vectors in cache.read(keys, levels) if cache else ():
        out.put(i, vectors)
        done[i] = True
    if done.any():
        if progress:
            progress(int(done.sum()))
        log.info("feature cache: %d of %d already computed", int(done.sum()), len(keys))
    return done


class _Output:
    """The (N, D) arrays extraction fills, allocated when a level's D is first known."""

    def __init__(self, n: int, allocate=None):
        self.n = n
        self.allocate = allocate or (lambda level, shape: np.empty(shape, np.float32))
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, i: int, vectors: dict[str, np.ndarray]) -> None:
        for lv, v in vectors.items():
            if lv not in self.arrays:
                self.arrays[lv] = self.allocate(lv, (self.n, len(v)))
            self.arrays[lv][i] = v


class _Shard:
    """Computed vectors gathered until a cache shard is full, then written whole."""

    def __init__(self, cache: FeatureCache | None):
        self.cache = cache
        self.hashes: list[str] = []
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, hashes: list[str], pooled: dict[str, np.ndarray]) -> None:
        if self.cache is None:
            return
        self.hashes += hashes
        self.parts.append(pooled)
        if len(self.hashes) >= self.cache.shard:
            self.flush()

    def flush(self) -> None:
        if self.cache is None or not self.hashes:
            return
        levels = self.parts[0]
        self.cache.put(self.hashes, {lv: np.concatenate([p[lv] for p in self.parts])
                                     for lv in levels})  # fmt: skip
        self.hashes, self.parts = [], []
