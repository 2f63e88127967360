"""Which image properties explain the gap: per photometric statistic (lib.photometry), how
well it alone tells the domains apart, and per level, how much of the feature-space
domain classifier's out-of-fold p(synthetic) the statistics explain together.

- `separation`: AUC of each statistic for "synthetic" (0.5: no difference; below 0.5 the
  synthetic images have less of it), a seeded bootstrap interval, and the ratio of the
  domains' medians; ordered by |AUC − 0.5|.
- `explained`: cross-validated R² of a small model (scikit-learn's histogram gradient
  boosting) predicting p(synthetic) from the statistics, over repeated shuffled folds;
  the interval is the folds' 2.5–97.5 % range. High at a level: the gap there is
  photometry (filters fix it); low: content and layout.
- `sentences`: the findings in words, e.g. "synthetic images are 2.1× sharper (AUC 0.93)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.photometry import STATISTICS


@dataclass(frozen=True)
class Separation:
    """How one statistic differs between the domains."""

    statistic: str
    auc: float  # P(synthetic value > real value); 0.5: no difference
    ci95: tuple[float, float]
    real_median: float
    synthetic_median: float

    @property
    def strength(self) -> float:
        """|AUC − 0.5|: how well the statistic alone separates the domains."""
        return abs(self.auc - 0.5)

    @property
    def ratio(self) -> float:
        """Synthetic median ÷ real median (NaN when the real median is 0)."""
        return self.synthetic_median / self.real_median if self.real_median else float("nan")

    @property
    def clear(self) -> bool:
        """The interval excludes 0.5: a difference beyond the sampling noise."""
        return self.ci95[0] > 0.5 or self.ci95[1] < 0.5


def separation(stats: dict[str, np.ndarray], synthetic: np.ndarray, resamples: int = 200,
               seed: int = 0) -> list[Separation]:  # fmt: skip
    """Each statistic's separation of the domains (`synthetic`: True per synthetic
    image), strongest first; statistics missing for an image (NaN: JPEG quality of a
    PNG) are compared on the images that have them, and skipped without both domains."""
    from sklearn.metrics import roc_auc_score

    synthetic = np.asarray(synthetic, dtype=bool)
    rng = np.random.default_rng(seed)
    out = []
    for name in STATISTICS:
        values = np.asarray(stats[name], dtype=float)
        ok = ~np.isnan(values)
        y, v = synthetic[ok], values[ok]
        if y.all() or not y.any():
            continue
        auc = float(roc_auc_score(y, v))
        aucs = []
        for _ in range(resamples):  # stratified: each resample keeps both domains' sizes
            idx = np.concatenate([rng.choice(np.flatnonzero(y == c), size=int((y == c).sum()))
                                  for c in (False, True)])  # fmt: skip
            aucs.append(roc_auc_score(y[idx], v[idx]))
        lo, hi = np.percentile(aucs, [2.5, 97.5])
        out.append(Separation(name, auc, (float(lo), float(hi)), float(np.median(v[~y])),
                              float(np.median(v[y]))))  # fmt: skip
    return sorted(out, key=lambda s: -s.strength)


def explained(stats: dict[str, np.ndarray], p_synthetic: np.ndarray, folds: int = 5,
              repeats: int = 4, seed: int = 0) -> dict:  # fmt: skip
    """How much of p(synthetic) the statistics explain together: {"r2", "ci95", "n"}."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    y = np.asarray(p_synthetic, dtype=float)
    keep = ~np.isnan(y)
    columns = [np.asarray(stats[name], dtype=float)[keep] for name in STATISTICS]
    # a statistic no image has (JPEG quality of PNGs) or all share says nothing
    useful = [c for c in columns if not np.isnan(c).all() and np.nanstd(c) > 0]
    X = np.column_stack(useful or [np.zeros(int(keep.sum()))])
    y = y[keep]
    scores = []
    for r in range(repeats):
        for train, test in KFold(folds, shuffle=True, random_state=seed + r).split(X):
            model = HistGradientBoostingRegressor(max_iter=100, random_state=seed)
            model.fit(X[train], y[train])  # NaN (a missing JPEG quality) is handled natively
            scores.append(r2_score(y[test], model.predict(X[test])))
    lo, hi = np.percentile(scores, [2.5, 97.5])
    return {"r2": float(np.mean(scores)), "ci95": [float(lo), float(hi)], "n": int(len(y))}


def sentences(found: list[Separation], top: int = 3) -> list[str]:
    """The clearest differences in words (those whose interval excludes 0.5)."""
    out = []
    for s in [s for s in found if s.clear][:top]:
        _, more, less = STATISTICS[s.statistic]
        ratio = s.ratio
        if np.isfinite(ratio) and ratio > 0 and s.statistic not in ("a_mean", "b_mean"):
            size = ratio if ratio >= 1 else 1 / ratio
            words = f"{size:.1f}× {more if ratio >= 1 else less}"
        else:
            words = more if s.auc > 0.5 else less
        out.append(f"synthetic images are {words} (AUC {s.auc:.2f}, "
                   f"{s.ci95[0]:.2f}–{s.ci95[1]:.2f})")  # fmt: skip
    return out
