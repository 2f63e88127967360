"""Which points of a large projection the browser gets.

A plot of a million points ships tens of megabytes and shows no more than a few hundred
thousand pixels. The overview gets at most a budget of points: a seeded random sample of
each domain (random, so the picture's density is the data's density), plus one point of
every occupied grid cell the sample missed, so sparse regions and outliers never vanish.
Zooming into a region (2D) asks again for that region alone, where the same budget shows
every point or a much denser sample.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = {"3D": 60_000, "2D": 150_000}  # per view, both domains; see README (Large datasets)
GRID = {"3D": 24, "2D": 128}  # cells per axis for the keep-one-per-cell rule


def budgets(counts: dict[str, int], total: int) -> dict[str, int]:
    """Points per domain: an equal share each, a small domain's unused share going to the
    others, so a 1,797-image domain is shown whole beside a 1M-image one."""
    out, left = {}, total
    for i, (domain, n) in enumerate(sorted(counts.items(), key=lambda kv: kv[1])):
        share = left // (len(counts) - i)
        out[domain] = min(n, share)
        left -= out[domain]
    return out


def thin(coords: np.ndarray, budget: int, grid: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most `budget` (+ one per occupied cell the sample missed)
    of `coords` (n, 2 or 3)."""
    n = len(coords)
    if n <= budget:
        return np.arange(n)
    picked = np.random.default_rng(seed).choice(n, size=budget, replace=False)
    cells = _cells(coords, grid)
    missed = ~np.isin(cells, cells[picked])
    # the first point of each cell the sample left empty
    extra = np.flatnonzero(missed)[np.unique(cells[missed], return_index=True)[1]]
    return np.union1d(picked, extra)


def _cells(coords: np.ndarray, grid: int) -> np.ndarray:
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    ijk = np.minimum(((coords - lo) / span * grid).astype(np.int64), grid - 1)
    out = np.zeros(len(coords), dtype=np.int64)
    for axis in range(coords.shape[1]):
        out = out * grid + ijk[:, axis]
    return out


def opacity(shown: int) -> float:
    """Marker opacity for a trace of `shown` points: dense traces fainter, so a crowd of
    one domain does not bury the other (0.9 up to 2,000 points, 0.2 from ~40,000)."""
    return float(np.clip(0.9 * np.sqrt(2000 / max(shown, 1)), 0.2, 0.9))
