"""The gap of variants of one synthetic sample against one real sample, and how much
each variant moved it, with paired intervals.

What-if experiments (lib.jobs.whatif) transform the same synthetic images several ways and
ask which change closes the gap. Every variant is measured against the same real sample,
standardised with the same real statistics, with the same random streams (the same
classifier folds, the same FD subsample), so their numbers differ only by what the
transform did. Each variant's change from the baseline (the untransformed images) gets an
interval from resampling both variants together, images paired: a change whose interval
holds 0 is within noise, however different the two values look.

- FD at equal N, with the half-sampling interval of lib.analysis.gap.frechet;
- coverage (Naeem et al. 2020) with its two-way jackknife interval: per real image,
  covered or not;
- the domain classifier's cross-validated AUC with its corrected t interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.analysis.gap import GapParams, _Standardiser
from lib.analysis.gap.classifier import classifier_test, corrected_t
from lib.analysis.gap.frechet import (
    PERCENTILES_FROM,
    affordable_resamples,
    fd_interval,
    frechet_distance,
    frechet_from_factors,
    sample_factor,
)
from lib.analysis.gap.prdc import kth_neighbour_radii, prdc
from lib.analysis.gap.records import auc_record, record, share_ci

METRICS = ("fd", "coverage", "auc")


@dataclass
class VariantGap:
    """One variant's gap at one level, and what its paired comparisons need."""

    records: dict  # fd, coverage, auc: lib.analysis.gap.records' shape
    fake: np.ndarray  # the variant's features at equal N with the real sample (float64)
    covered: np.ndarray  # per real image
    p_synthetic: np.ndarray  # out of fold: the real images', then the variant's
    fold_aucs: list[float]  # the classifier's per-fold AUCs (the same folds per variant)
    nearest_by_group: np.ndarray | None = None  # per real image, its nearest fake per group


class Comparison:
    """The real sample at one level, against which every variant is measured."""

    def __init__(self, real: np.ndarray, params: GapParams, device: str = "cpu"):
        self.params, self.device = params, device
        self.real = np.asarray(real, dtype=np.float64)
        self.scale = _Standardiser.of(self.real)
        self.zr = self.scale(self.real)
        self.radii = kth_neighbour_radii(self.zr, params.k, device)
        self._floors: dict[int, float] = {}  # FD with no gap, per sample size

    def measure(self, fake: np.ndarray) -> VariantGap:
        p = self.params
        fake = np.asarray(fake, dtype=np.float64)
        n = min(len(self.real), len(fake))  # FD at equal N, the first n of each (seeded)
        fd = frechet_distance(self.real[:n], fake[:n])
        ci, how = fd_interval(self.real[:n], fake[:n], fd, p.resamples, self._rng(0))
        zf = self.scale(fake)
        balls = prdc(
            self.zr, zf, p.k, (self.radii, kth_neighbour_radii(zf, p.k, self.device)), self.device
        )
        n_r = len(self.zr)
        clf = classifier_test(self.zr, zf, p.folds, p.classifier_max, self._rng(1))
        records = {
            "fd": record(fd, ci, n, **how),
            "coverage": record(
                balls.coverage, share_ci(int(balls.covered.sum()), n_r, balls.se["coverage"]), n_r
            ),
            "auc": auc_record(clf),
        }
        p_synthetic = np.r_[clf["p_synthetic_real"], clf["p_synthetic_fake"]]
        return VariantGap(
            records,
            fake[:n],
            balls.covered,
            p_synthetic,
            clf["fold_aucs"],
            balls.nearest_by_group,
        )

    def change(self, base: VariantGap, other: VariantGap) -> dict:
        """`other` − `base` per metric, {value, ci95, within_noise}; `gap_closed` for FD
        and AUC: the share of the baseline's distance from no gap (`gap_from`) that the
        change removes. AUC's no gap is 0.5; FD's is what two samples of this size read
        with no gap (`fd_floor`), not 0, which finite samples never reach."""
        rng = self._rng(2)
        out = {
            "fd": self._fd_change(base, other, rng),
            "coverage": self._coverage_change(base, other),
            "auc": self._auc_change(base, other),
        }
        distances = {  # from what no gap reads at these sizes
            "fd": base.records["fd"]["value"] - self.fd_floor(base.records["fd"]["n"]),
            "auc": base.records["auc"]["value"] - 0.5,
        }
        for name, distance in distances.items():
            closed = -out[name]["value"] / distance if distance > 1e-12 else 0.0
            out[name]["gap_closed"] = float(closed)
            out[name]["gap_from"] = float(distance)
        return out

    def fd_floor(self, n: int) -> float:
        """The FD two samples of n images read with no gap at all: FD's bias, which at deep
        levels and a few hundred images is most of the FD (c5, 300 a side: FD 450, FD∞
        200), so "gap closed" is the share of the FD *above* it. Measured on the real
        sample itself, two disjoint halves (FD's bias goes like 1/n: scaled when the
        halves are smaller than n)."""
        if n not in self._floors:
            m = min(n, len(self.real) // 2)
            order = self._rng(0).permutation(len(self.real))
            a, b = self.real[order[:m]], self.real[order[m : 2 * m]]
            self._floors[n] = float(frechet_distance(a, b) * m / n)
        return self._floors[n]

    def _rng(self, stream: int) -> np.random.Generator:
        # the same streams for every variant: its numbers are paired with the baseline's
        return np.random.default_rng(np.random.SeedSequence(self.params.seed).spawn(3)[stream])

    def _coverage_change(self, base, other) -> dict:
        """The change of the share of real images covered, with the normal interval of
        the paired per-real-image differences. The synthetic side's share of the
        variance is left out: it is small for two variants of the same images (in
        simulation the real side's error was 0.9 of the change's spread), and a two-way
        group jackknife that adds it (as lib.analysis.gap.prdc's) overstated it 2×
        (coverage's deletion effects are not smooth): its interval held the truth in
        100 % of draws. 200 a side: 92 % (the bootstrap's percentile interval: 79 %)."""
        diff = other.covered.astype(float) - base.covered.astype(float)
        value = float(diff.mean())
        half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        return _with_noise(value, [value - half, value + half])

    def _auc_change(self, base, other) -> dict:
        """The change of the folds' mean AUC, with the corrected t interval of the
        per-fold differences: both variants are cross-validated on the same folds (the
        same classifier stream), so each fold's difference is paired, and the interval
        counts the variance of fitting (a bootstrap of fixed predictions did not)."""
        diffs = np.subtract(other.fold_aucs, base.fold_aucs)
        value, half = corrected_t(diffs, self.params.folds)
        return _with_noise(value, [value - half, value + half])

    def _fd_change(self, base, other, rng) -> dict:
        """Half-sampling as in lib.analysis.gap.frechet, each half the same images for both
        variants: the spread of the halves' FD differences stands for the difference's."""
        n = min(len(base.fake), len(other.fake))
        value = other.records["fd"]["value"] - base.records["fd"]["value"]
        resamples = affordable_resamples(self.params.resamples, self.real.shape[1])
        halves = []
        for _ in range(resamples):
            half = rng.permutation(n)[: n // 2]
            real = sample_factor(self.real[half])
            fds = [
                frechet_from_factors(*real, *sample_factor(v.fake[half]), fast=True)
                for v in (other, base)
            ]
            halves.append(fds[0] - fds[1])
        halves = np.asarray(halves)
        rate = np.sqrt((n // 2) / (n - n // 2))  # as lib.analysis.gap.frechet: 1 for even n
        return _change(value, value + rate * (halves - np.median(halves)))


def _change(value: float, resampled: np.ndarray) -> dict:
    """A change with the basic (pivot) 95 % interval of its resamples (normal with fewer
    than PERCENTILES_FROM), and whether that interval holds 0."""
    deltas = resampled - np.median(resampled)
    if len(deltas) >= PERCENTILES_FROM:
        lo, hi = np.percentile(deltas, [2.5, 97.5])
    else:
        hi = 1.96 * deltas.std(ddof=1)
        lo = -hi
    return _with_noise(value, [value - hi, value - lo])


def _with_noise(value: float, ci: list) -> dict:
    """A change's record: its value, its 95 % interval and whether that holds 0."""
    ci = [float(ci[0]), float(ci[1])]
    return {"value": float(value), "ci95": ci, "within_noise": bool(ci[0] <= 0 <= ci[1])}
