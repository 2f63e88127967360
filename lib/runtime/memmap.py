"""Memory-mapped arrays read a block at a time without their pages piling up in the
process.

Pages a process reads through a memory map count in its resident memory until it lets
them go, even though the kernel could drop them at any time: at 1M + 1M × 256 the run's
features and the given embeddings are 2 GB each, which would be read in full several
times. `release(X)` tells the kernel this process no longer needs the pages it read
(`MADV_DONTNEED`): they stay in the page cache, so reading them again is cheap, but they
leave the process's RSS. Only read-only and flushed mappings are released.

`map_blocks(fn, X, blocks)` is how a stage works through every row of such an array: here,
a block at a time, or (lib.runtime.dask.BlockMap, same results) on a Dask cluster's workers,
which find the rows in the file through `file_rows`.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

import numpy as np

# rows a stage over every row reads, and a Dask task works on, at a time: 16 MB of 256-d
# vectors; ~60 tasks per domain at 1M, and a few per domain at 50k so that workers share them
BLOCK = 16_384


def release(array: np.ndarray) -> None:
    """Let go of the pages of `array`'s memory map (a no-op for arrays in memory)."""
    region = getattr(array, "_mmap", None)
    if region is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if isinstance(array, np.memmap) and array.mode not in ("r", "c"):
        array.flush()  # written pages reach the file first
    try:
        region.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed map, or a platform that refuses: harmless
        pass


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` as float32, in the order of `rows`, read in file order (a memory map
    read at scattered rows seeks back and forth)."""
    order = np.argsort(rows)
    out = np.empty((len(rows), array.shape[1]), np.float32)
    out[order] = array[rows[order]]
    return out


def row_blocks(rows: int | np.ndarray, block: int | None = None) -> list[np.ndarray]:
    """`rows` (a count: 0..n-1) in consecutive blocks of at most `block` (BLOCK)."""
    block = block or BLOCK
    rows = np.arange(rows) if np.isscalar(rows) else np.asarray(rows)
    return [rows[s : s + block] for s in range(0, len(rows), block)]


def map_blocks(fn: Callable, X: np.ndarray, blocks: list[np.ndarray]) -> Iterator:
    """`fn(rows, X[rows])` for each block of rows, in order, the pages let go after each.
    The signature every block map has (lib.runtime.dask.BlockMap runs them on Dask workers)."""
    for rows in blocks:
        part = X[rows]
        release(X)
        yield fn(rows, part)


def file_rows(X: np.ndarray) -> tuple[str, int] | None:
    """(the .npy file, its first row) when X is consecutive whole rows of a memory-mapped
    file (the run's feature files and views of them), else None."""
    root = X
    while isinstance(getattr(root, "base", None), np.ndarray):
        root = root.base
    if not isinstance(root, np.memmap) or root.filename is None or root.ndim != 2:
        return None
    if X.ndim != 2 or X.strides != root.strides or X.shape[1] != root.shape[1]:
        return None
    if X.dtype != root.dtype:
        return None
    first, rest = divmod(X.ctypes.data - root.ctypes.data, root.strides[0])
    if rest or not 0 <= first <= len(root) - len(X):
        return None
    return str(root.filename), int(first)
