"""The atlas: every image of a run on one 2D map, in three layouts.

- `umap`: a 2D UMAP of both domains together at one level, computed by the batch job
  (`AtlasProjector`, stored in the projections table as method "atlas", fit on "both");
  pixplotml's settings (min_dist 0.01) with the run's UMAP metric, seed and sampling.
- `grid`: the same order on a square grid (pixplotml's point grid): no two thumbnails
  overlap, neighbours stay near.
- `category`: one block per category, each a grid in the UMAP's order, largest first.

Layouts are pure numpy, O(n log n): a million points take about a second, so the demo
computes the grid and category layouts when first asked and never stores them. All are
scaled into [-1, 1] keeping their aspect, the coordinates the scatterplot draws.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lib.analysis.reduce import UMAPParams, UMAPProjector

METHOD = "atlas"  # the projections table's method for the atlas layout
LAYOUTS = ("umap", "grid", "category")
MIN_DIST = 0.01  # pixplotml's: tight clusters leave room for thumbnails


def middle_level(levels: list[str]) -> str:
    """The level the atlas lays out by default, and the demo opens: shallow levels see
    texture, deep ones semantics; start between."""
    return levels[len(levels) // 2]


class AtlasProjector(UMAPProjector):
    """A 2D UMAP of both domains together (joint): the atlas's map."""

    name, label = METHOD, "Atlas (2D UMAP of both domains)"
    joint = True
    plots = False

    def __init__(self, params: UMAPParams | None = None, backend: str = "cpu", blocks=None):
        params = params if params is not None else UMAPParams()
        super().__init__(replace(params, n_components=2, min_dist=MIN_DIST), backend, blocks)


def fit_square(xy: np.ndarray) -> np.ndarray:
    """Scale and centre points into [-1, 1]² keeping their aspect (float32)."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) == 0:
        return xy.astype(np.float32)
    lo, hi = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
    span = float(np.max(hi - lo)) or 1.0
    out = (xy - (lo + hi) / 2) * (1.9 / span)  # a 5 % margin for points on the edge
    return np.nan_to_num(out).astype(np.float32)


def _raster(xy: np.ndarray, columns: int) -> np.ndarray:
    """Cells (column, row) for points: `columns` vertical strips by x, each filled
    bottom-up by y. Keeps the layout's neighbourhoods, as a grid of its order."""
    n = len(xy)
    out = np.empty((n, 2), dtype=np.float64)
    if n == 0:
        return out
    per_column = -(-n // columns)
    by_x = np.lexsort((xy[:, 1], xy[:, 0]))
    for c, start in enumerate(range(0, n, per_column)):
        strip = by_x[start : start + per_column]
        strip = strip[np.argsort(xy[strip, 1], kind="stable")]
        out[strip, 0] = c
        out[strip, 1] = np.arange(len(strip))
    return out


def grid_layout(xy: np.ndarray) -> np.ndarray:
    """The points on a square grid in the order of the layout `xy`."""
    n = len(xy)
    return fit_square(_raster(np.asarray(xy), max(1, int(np.ceil(np.sqrt(n))))))


@dataclass(frozen=True)
class Block:
    """A category's box in the category layout, in the layout's [-1, 1] coordinates."""

    category: str
    count: int
    x: float  # the box's left edge
    y: float  # its top edge (labels go above it)


def category_layout(xy: np.ndarray, categories: np.ndarray) -> tuple[np.ndarray, list[Block]]:
    """Each category as a square block of points (a grid in the order of `xy`), blocks
    packed in rows, largest first: (coordinates, the blocks)."""
    xy = np.asarray(xy)
    names, codes, counts = np.unique(
        np.asarray(categories).astype(str), return_inverse=True, return_counts=True
    )
    order = np.argsort(-counts, kind="stable")
    sides = np.ceil(np.sqrt(counts)).astype(int)
    gap = 2  # empty cells between blocks, room for a label
    row_width = max(int(np.ceil(np.sqrt(len(xy)) * 1.3)), int(sides.max(initial=1)))
    cells = np.empty((len(xy), 2), dtype=np.float64)
    origins, left, top, row_height = {}, 0, 0, 0
    for c in order:
        if left and left + sides[c] > row_width:  # next shelf
            left, top, row_height = 0, top + row_height + gap, 0
        members = np.flatnonzero(codes == c)
        local = _raster(xy[members], sides[c])
        cells[members, 0] = left + local[:, 0]
        cells[members, 1] = -(top + sides[c] - 1 - local[:, 1])  # rows go down the page
        origins[c] = (left, -top)
        left, row_height = left + sides[c] + gap, max(row_height, sides[c])
    coords = fit_square(cells)
    lo, hi = cells.min(axis=0), cells.max(axis=0)
    scale, centre = 1.9 / (float(np.max(hi - lo)) or 1.0), (lo + hi) / 2
    blocks = [
        Block(
            str(names[c]),
            int(counts[c]),
            float((origins[c][0] - centre[0]) * scale),
            float((origins[c][1] - centre[1]) * scale),
        )
        for c in order
    ]
    return coords, blocks
