"""Near-copies: synthetic images that copy real ones (a leak when the real images are a test
set: the detector would be tested on what it trained on), and images repeated within the
synthetic set (a generator repeating itself) or within the real set.

Candidates come from two searches, each of every image's nearest images:

- a tiny image (the thumbnail as TINY × TINY grey, mean removed, unit length): what the
  pixels look like, robust to re-encoding, noise and resizing. The model's features are not
  (on the example's digits, a copy shifted by 1 px or given σ = 2 noise lay farther from its
  original at c2-c5 than most synthetic images lie from their nearest real one);
- the run's features at one level (the middle level by default), for what the model sees
  as the same: its neighbour table (`Table`), or a fresh search (`Search`).

A pair is a candidate when its distance in either search falls below that search's
threshold, chosen from the distribution of the real images' nearest-neighbour distances
(`threshold`): MADS robust standard deviations below their median, on a log scale (the
distances of distinct images pile up around the median; a copy lies far below). A
candidate is called a copy only when its pixels agree (`best_correlation`): the thumbnails'
correlation at the best shift of up to SHIFT pixels is at least CORRELATION — so a feature
coincidence, or two digits drawn alike, is never called a copy. On the example's 300 real
digits the closest distinct pair correlated 0.973 and every planted copy (exact, JPEG,
noise, resized, shifted 1 px) 0.995 or more. Runs of given embeddings have no pixels: their
candidates are reported as unconfirmed.

FiftyOne Brain's `compute_near_duplicates` and `compute_leaky_splits` take a distance
threshold the user picks; here the rule picks it from the data and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.analysis.neighbours import knn, nearest_rows

TINY = 16  # the tiny image's side
MADS = 3.0  # robust standard deviations below the median distance: a candidate
CORRELATION = 0.99  # the pixel check: correlation at the best small shift
SHIFT = 2  # pixels (of CHECK_SIZE) the pixel check may shift one image against the other
CHECK_SIZE = 64  # the pixel check compares the thumbnails at this size
NEIGHBOURS = 3  # nearest images looked at per image and search
KINDS = ("leak", "synthetic repeat", "real repeat")


@dataclass(frozen=True)
class Pair:
    kind: str  # one of KINDS
    a: int  # a row (leak: the synthetic image; repeat: the later row)
    b: int  # the row it copies (leak: the real image; repeat: the earlier row)
    pixels: float  # tiny-image distance (NaN without pixels)
    features: float  # feature distance (NaN where the feature search did not meet it)


def threshold(nearest: np.ndarray, mads: float = MADS) -> float:
    """exp(median − mads × 1.4826 MAD) of the log distances: below it lies what is far
    closer than distinct images usually are. Exact copies (distance 0) are left out of
    the median and MAD, so a set full of copies does not hide them."""
    d = np.asarray(nearest, dtype=np.float64)
    d = d[np.isfinite(d) & (d > 1e-9)]
    if len(d) < 5:
        return 1e-9
    logs = np.log(d)
    median = np.median(logs)
    mad = 1.4826 * np.median(np.abs(logs - median))
    return float(np.exp(median - mads * mad))


def tiny_images(pictures) -> np.ndarray:
    """(n, TINY²) float32: each picture (a PIL image) as grey TINY × TINY, mean removed,
    unit length (a flat picture stays 0)."""
    from PIL import Image

    out = np.zeros((len(pictures), TINY * TINY), dtype=np.float32)
    for i, picture in enumerate(pictures):
        small = picture.convert("L").resize((TINY, TINY), Image.Resampling.BILINEAR)
        v = np.asarray(small, dtype=np.float32).ravel()
        v -= v.mean()
        norm = np.linalg.norm(v)
        out[i] = v / norm if norm > 0 else v
    return out


def best_correlation(one, two, shift: int = SHIFT) -> float:
    """The correlation of two pictures' grey pixels at CHECK_SIZE, at the best shift of
    up to `shift` pixels either way (1.0 for two identical flat pictures)."""
    a, b = (_grey(p) for p in (one, two))
    n, best = CHECK_SIZE, -1.0
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            u = a[max(0, dy) : n + min(0, dy), max(0, dx) : n + min(0, dx)].ravel()
            v = b[max(0, -dy) : n + min(0, -dy), max(0, -dx) : n + min(0, -dx)].ravel()
            u, v = u - u.mean(), v - v.mean()
            norm = np.linalg.norm(u) * np.linalg.norm(v)
            value = float(u @ v / norm) if norm > 0 else float(np.allclose(u, v))
            best = max(best, value)
    return best


def _grey(picture) -> np.ndarray:
    from PIL import Image

    small = picture.convert("L").resize((CHECK_SIZE, CHECK_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


@dataclass
class Search:
    """One search's vectors (rows of the run, unit length), its threshold, and the real
    images' search among themselves (made once: it sets the threshold and finds the
    real repeats)."""

    name: str  # "pixels" or "features"
    vectors: np.ndarray  # (n rows, d)
    limit: float = 0.0
    among_real: tuple | None = None  # (indices into real, distances) of each real's nearest

    @classmethod
    def of(cls, name: str, vectors: np.ndarray, real: np.ndarray, mads: float) -> Search:
        search = cls(name, _unit(vectors))
        if len(real) > 1:
            x = search.vectors[real]
            search.among_real = _search(x, x, min(NEIGHBOURS, len(real) - 1), same=True)
            search.limit = threshold(search.among_real[1][:, 0], mads)
        return search

    def pairs(self, real: np.ndarray, synthetic: np.ndarray) -> dict[tuple, float]:
        """{(kind, a, b): distance} for every candidate this search finds."""
        found: dict[tuple, float] = {}
        for kind, queries, base in (
            ("real repeat", real, real),
            ("synthetic repeat", synthetic, synthetic),
            ("leak", synthetic, real),
        ):
            if len(base) <= 1 or len(queries) == 0:
                continue
            if kind == "real repeat":
                index, distance = self.among_real
            else:
                x, y = self.vectors[queries], self.vectors[base]
                k = min(NEIGHBOURS, len(base) - (kind != "leak"))
                index, distance = _search(x, y, k, same=kind != "leak")
            for i, j in zip(*np.nonzero(distance < self.limit), strict=True):
                _keep(found, kind, int(queries[i]), int(base[index[i, j]]), distance[i, j])
        return found


def _keep(found: dict, kind: str, a: int, b: int, distance: float) -> None:
    """Record a candidate pair under its key (a leak: the synthetic row, then the real;
    a repeat: the later row, then the earlier), keeping its smallest distance."""
    if kind != "leak":
        a, b = max(a, b), min(a, b)
    key = (kind, a, b)
    found[key] = min(found.get(key, np.inf), float(distance))


@dataclass
class Table:
    """A search already done: the run's neighbour table at one level ((N, k) rows and
    distances over both domains, nearest first), read rather than searched again: at
    100k + 100k a fresh exact search per kind cost more than the rest of the run. The
    threshold comes from each real image's nearest real neighbour in the table."""

    name: str
    indices: np.ndarray
    distances: np.ndarray
    limit: float = 0.0

    @classmethod
    def of(cls, name: str, indices, distances, real: np.ndarray, mads: float) -> Table:
        table = cls(name, np.asarray(indices), np.asarray(distances, dtype=np.float64))
        is_real = np.zeros(len(table.indices), bool)
        is_real[real] = True
        own = table.indices[real]
        mine = (own >= 0) & is_real[np.maximum(own, 0)] & (own != real[:, None])
        d = np.where(mine, table.distances[real], np.inf)
        table.limit = threshold(d.min(axis=1), mads)
        return table

    def pairs(self, real: np.ndarray, synthetic: np.ndarray) -> dict[tuple, float]:
        is_real = np.zeros(len(self.indices), bool)
        is_real[real] = True
        rows, cols = np.nonzero(self.distances < self.limit)
        found: dict[tuple, float] = {}
        for i, j in zip(rows, cols, strict=True):
            a, b = int(i), int(self.indices[i, j])
            if a == b or b < 0:
                continue
            if is_real[a] != is_real[b]:
                kind, (a, b) = "leak", ((b, a) if is_real[a] else (a, b))
            else:
                kind = ("real" if is_real[a] else "synthetic") + " repeat"
            _keep(found, kind, a, b, self.distances[i, j])
        return found


def _search(x, y, k: int, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices into y, distances) of each row of x's k nearest rows of y (never itself
    when x is y)."""
    return knn(x, k, "euclidean") if same else nearest_rows(x, y, k)


def candidates(searches: list[Search], real: np.ndarray, synthetic: np.ndarray) -> list[Pair]:
    """Every pair some search finds below its threshold, with both searches' distances
    where known (the pixel distance is filled in by `confirm` when only features found it)."""
    found: dict[tuple, dict[str, float]] = {}
    for search in searches:
        for key, distance in search.pairs(real, synthetic).items():
            found.setdefault(key, {})[search.name] = distance
    return [
        Pair(kind, a, b, d.get("pixels", np.nan), d.get("features", np.nan))
        for (kind, a, b), d in sorted(found.items())
    ]


def confirm(pairs: list[Pair], picture, pixels: np.ndarray | None) -> list[dict]:
    """Each candidate as a record with the pixel check: `correlation` at the best shift and
    `copy` (None where a side has no picture: unconfirmed). `picture(row)`: the row's
    thumbnail as a PIL image, or None; `pixels`: the tiny images (unit length) or None."""
    out = []
    for p in pairs:
        one, two = picture(p.a), picture(p.b)
        correlation = None if one is None or two is None else best_correlation(one, two)
        tiny = p.pixels
        if np.isnan(tiny) and pixels is not None:
            tiny = float(np.linalg.norm(pixels[p.a] - pixels[p.b]))
        out.append(
            {
                "kind": p.kind,
                "a": p.a,
                "b": p.b,
                "pixel_distance": tiny,
                "feature_distance": p.features,
                "correlation": np.nan if correlation is None else correlation,
                "copy": None if correlation is None else correlation >= CORRELATION,
            }
        )
    return out


def summary(records: list[dict], searches: list[Search], level: str | None) -> dict:
    """What metrics.json says: the rule, each search's threshold, and per kind how many
    candidates, copies and images (a row counted once however many it copies)."""
    kinds = {}
    for kind in KINDS:
        mine = [r for r in records if r["kind"] == kind]
        copies = [r for r in mine if r["copy"]]
        kinds[kind] = {
            "candidates": len(mine),
            "copies": len(copies),
            "unconfirmed": sum(r["copy"] is None for r in mine),
            "images": len({r["a"] for r in copies}),
        }
    return {
        "rule": (
            f"candidates: nearer than {MADS:g} robust SDs below the median nearest-neighbour "
            "distance among real images (log scale), in tiny images or in features; copies: "
            f"thumbnails correlate ≥ {CORRELATION:g} at the best shift of ≤ {SHIFT} px"
        ),
        "level": level,
        "thresholds": {s.name: s.limit for s in searches},
        "kinds": kinds,
    }
