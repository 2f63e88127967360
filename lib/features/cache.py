"""The feature cache: pooled vectors on disk by content, so an interrupted run resumes
after its last complete shard and a nightly run computes only new images.

    cache/<key>/<shard>/hashes.npy     the shard's items (image content hashes, or object keys)
    cache/<key>/<shard>/<level>.npy    (n, D) float32 per level

The key directory names the backbone's weights, the pooling, the preprocessing and the
precision (`cache_key`): vectors made any other way never meet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lib.runtime.errors import first_line

if TYPE_CHECKING:
    from lib.features.backbones import Backbone
    from lib.inputs.images import Prepare

log = logging.getLogger(__name__)

SHARD = 4096  # items per shard: ~250 shards at 1M images


class FeatureCache:
    """Pooled vectors on disk in shards: each a folder of `hashes.npy` (the items' keys)
    and one `<level>.npy` (n, D) per level, under a key directory.

    A shard is written under a temporary name and renamed into place whole, so a run
    killed mid-extraction loses at most the shard it was filling and the next run resumes
    after the last complete one. A shard that cannot be read back whole (a truncated or
    damaged file) is reported, removed and its items computed again; it is never used.
    """

    def __init__(self, root: Path, key: str, shard: int = SHARD):
        self.shard = shard
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] | None = None

    def shards(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def index(self) -> dict[str, tuple[Path, int]]:
        """key → (shard, row) over every complete shard."""
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
        """Yield (position in `hashes`, {level: vector}) for every cached key, a shard at a
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
            arrays = {
                lv: np.load(shard / f"{lv}.npy", mmap_mode="r", allow_pickle=False) for lv in levels
            }
            if any(a.ndim != 2 or len(a) != n or a.dtype != np.float32 for a in arrays.values()):
                raise ValueError("levels disagree with the hash list")
        except (OSError, ValueError, EOFError) as exc:
            self._drop(shard, first_line(exc))
            return None
        return arrays

    def _drop(self, shard: Path, why: str) -> None:
        log.warning("feature cache: ignoring and removing damaged shard %s (%s)", shard, why)
        shutil.rmtree(shard, ignore_errors=True)
        if self._index is not None:
            self._index = {h: v for h, v in self._index.items() if v[0] != shard}

    def put(self, hashes: Sequence[str], vectors: dict[str, np.ndarray]) -> None:
        """One complete shard: the items' keys and their vectors per level."""
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


def cache_key(backbone: Backbone, how: str, prepare: Prepare, precision: str = "fp32") -> str:
    """The key directory of vectors made by `backbone`, pooled as `how` says (a pooling's
    `key_name`, or an object pooling's description), from images prepared by `prepare`."""
    text = f"{backbone.name}|{backbone.fingerprint()}|{how}|{prepare.describe()}"
    if precision != "fp32":  # bf16 vectors differ slightly: never mix them with fp32 ones
        text += f"|{precision}"
    return f"{backbone.name}-{how}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def from_cache(
    cache: FeatureCache | None,
    keys: Sequence[str],
    levels,
    put: Callable[[int, dict], None],
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """`put(i, vectors)` for every cached key (counted in `progress`); which were."""
    done = np.zeros(len(keys), dtype=bool)
    for i, vectors in cache.read(keys, levels) if cache else ():
        put(i, vectors)
        done[i] = True
    if done.any():
        if progress:
            progress(int(done.sum()))
        log.info("feature cache: %d of %d already computed", int(done.sum()), len(keys))
    return done


class Shard:
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
        self.cache.put(
            self.hashes, {lv: np.concatenate([p[lv] for p in self.parts]) for lv in levels}
        )
        self.hashes, self.parts = [], []
