"""Memory-mapped arrays read a block at a time without their pages piling up in the
process.

Pages a process reads through a memory map count in its resident memory until it lets
them go, even though the kernel could drop them at any time: at 1M + 1M × 256 the run's
features and the given embeddings are 2 GB each, which would be read in full several
times. `release(X)` tells the kernel this process no longer needs the pages it read
(`MADV_DONTNEED`): they stay in the page cache, so reading them again is cheap, but they
leave the process's RSS. Only read-only and flushed mappings are released.
"""

from __future__ import annotations

import mmap

import numpy as np


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
