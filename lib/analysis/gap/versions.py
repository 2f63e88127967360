"""Two versions of a synthetic set against one real set: is v2 closer than v1, beyond noise?

A what-if variant is the same synthetic images transformed (lib.analysis.gap.paired), so
its change from the baseline is paired on both sides. Two generator versions are different
images: only the real sample is shared. Their change is paired on the real side (the same
real images, the same real halves, the same classifier folds) and independent on the
synthetic side, whose sampling variance the paired resamples alone miss: with two versions
drawn from one distribution, the real-paired intervals held 0 in 85-90 % of draws (FD) and
86 % (coverage: per-real differences treat neighbouring real images, which share their
coverers, as independent). The synthetic side is therefore measured by permutation: the
two versions' images are dealt into groups and the groups re-dealt between the versions
(exchangeable when the versions do not differ), and the change's interval is the union of
the paired interval and the permutation null's (`NULL` below), as KID's is. A group
jackknife of each version's coverage overstated its variance 1.7-2.3× (Efron and Stein:
the jackknife only overstates, and coverage is far from additive), holding 0 in 99 %.

- FD at equal N: real halves and quarters shared by both versions, each version's drawn
  on its own, scaled as in lib.analysis.gap.frechet (`degeneracy_rate`), ∪ the null;
- coverage: the normal interval of the per-real-image differences ∪ the null;
- the classifier's AUC: per-fold differences on the same real folds, corrected t (its
  folds' spread already holds both versions' test images: conservative, see the tests).

Measured in tests/test_versions.py: two versions drawn from one distribution, each change's
interval held 0 in about 95 % of draws; a version with a known smaller shift is named closer,
beyond noise.
"""

from __future__ import annotations

import numpy as np

from lib.analysis.gap.frechet import (
    GROUP_MEMORY,
    PERCENTILES_FROM,
    _Halves,
    affordable_resamples,
    covariance_factor,
    degeneracy_rate,
    frechet_from_factors,
    sample_factor,
)
from lib.analysis.gap.paired import Comparison, VariantGap, _change, _with_noise

GROUPS = 20  # per version, for the permutation null (as prdc's jackknife groups)


class VersionComparison(Comparison):
    """The shared real sample at one level; `measure` each version (at equal N:
    `equal_size`), then `change(v1, v2)`: v2 − v1 with intervals."""

    def _fd_change(self, base: VariantGap, other: VariantGap, rng) -> dict:
        n = min(len(base.fake), len(other.fake), len(self.real))
        value = other.records["fd"]["value"] - base.records["fd"]["value"]
        resamples = affordable_resamples(self.params.resamples, self.real.shape[1])
        if n < 8 or resamples < 2:
            return _with_noise(value, [-np.inf, np.inf])
        real, v1, v2 = (_Halves(x[:n], rng) for x in (self.real, base.fake, other.fake))
        halves = _differences(real, v1, v2, 2, resamples, rng)
        quarters = _differences(real, v1, v2, 4, resamples, rng)
        rate = np.sqrt((n // 2) / (n - n // 2))  # 1 for even n
        rate *= degeneracy_rate(np.var(quarters) / max(np.var(halves), 1e-300))
        paired = _change(value, value + rate * (halves - np.median(halves)))
        null = _PooledMoments(base.fake[:n], other.fake[:n], rng)
        factor = sample_factor(self.real[:n])
        deltas = [null.fd_change(factor, rng) for _ in range(resamples)]
        return _union(paired, value, np.asarray(deltas))

    def _coverage_change(self, base: VariantGap, other: VariantGap) -> dict:
        paired = super()._coverage_change(base, other)
        nearest = np.concatenate([base.nearest_by_group, other.nearest_by_group], axis=1)
        groups, rng = base.nearest_by_group.shape[1], self._rng(2)
        deltas = []
        for _ in range(self.params.resamples):
            order = rng.permutation(nearest.shape[1])
            one, two = (
                nearest[:, part].min(axis=1) < self.radii for part in np.split(order, [groups])
            )
            deltas.append(two.mean() - one.mean())
        return _union(paired, paired["value"], np.asarray(deltas))


def _union(paired: dict, value: float, null: np.ndarray) -> dict:
    """The paired interval widened to hold the permutation null's spread around `value`."""
    lo, hi = _null_interval(value, null)
    return _with_noise(value, [min(paired["ci95"][0], lo), max(paired["ci95"][1], hi)])


def _null_interval(value: float, null: np.ndarray) -> tuple[float, float]:
    deltas = null - np.median(null)
    if len(deltas) >= PERCENTILES_FROM:
        lo, hi = np.percentile(deltas, [2.5, 97.5])
    else:
        hi = 1.96 * deltas.std(ddof=1)
        lo = -hi
    return value - hi, value - lo


class _PooledMoments:
    """Both versions' images dealt into GROUPS groups each, with each group's sum and
    scatter about the pooled mean, so that re-dealing the groups between the versions
    costs no pass over the images. Too wide for the groups' scatters in memory: rows."""

    def __init__(self, x1: np.ndarray, x2: np.ndarray, rng):
        pooled = np.concatenate([x1, x2]).astype(np.float64)
        self.mean = pooled.mean(axis=0)
        pooled -= self.mean
        d = pooled.shape[1]
        self.by_rows = 2 * GROUPS * 8 * d * d > GROUP_MEMORY or len(x1) < 2 * GROUPS
        if self.by_rows:
            self.x, self.n = pooled, len(x1)
            return
        parts = [p for i, x in enumerate((x1, x2)) for p in _deal(len(x), i * len(x1), rng)]
        self.sizes = np.array([len(p) for p in parts])
        self.sums = np.stack([pooled[p].sum(axis=0) for p in parts])
        self.scatters = np.stack([pooled[p].T @ pooled[p] for p in parts])

    def fd_change(self, real_factor, rng) -> float:
        """FD(real, second half) − FD(real, first half) of one random re-dealing."""
        if self.by_rows:
            order = rng.permutation(len(self.x))
            one, two = order[: self.n], order[self.n :]
            f1, f2 = (sample_factor(self.mean + self.x[p]) for p in (one, two))
        else:
            f1, f2 = (self._factor(p) for p in np.split(rng.permutation(len(self.sizes)), 2))
        return frechet_from_factors(*real_factor, *f2, fast=True) - frechet_from_factors(
            *real_factor, *f1, fast=True
        )

    def _factor(self, groups: np.ndarray):
        m, s = self.sizes[groups].sum(), self.sums[groups].sum(axis=0)
        cov = (self.scatters[groups].sum(axis=0) - np.outer(s, s) / m) / (m - 1)
        return self.mean + s / m, covariance_factor(cov)


def _deal(n: int, start: int, rng) -> list[np.ndarray]:
    return np.array_split(start + rng.permutation(n), GROUPS)


def _differences(real: _Halves, v1: _Halves, v2: _Halves, parts: int, count: int, rng):
    """`count` differences FD(real part, v2 part) − FD(real part, v1 part): the real part
    the same for both versions, each version's part drawn on its own."""
    out: list[float] = []
    while len(out) < count:
        for r, a, b in zip(
            real.split(rng, parts), v1.split(rng, parts), v2.split(rng, parts), strict=True
        ):
            out.append(
                frechet_from_factors(*r, *b, fast=True) - frechet_from_factors(*r, *a, fast=True)
            )
    return np.asarray(out[:count])


def equal_size(x1: np.ndarray, x2: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Both versions at the size of the smaller, a seeded sample of the larger: FD, coverage
    and AUC all move with the synthetic set's size, so unequal sizes would read as a change."""
    m = min(len(x1), len(x2))
    rng = np.random.default_rng(seed)
    return tuple(x[np.sort(rng.permutation(len(x))[:m])] if len(x) > m else x for x in (x1, x2))
