"""KID: unbiased MMD² with the cubic polynomial kernel (xᵀy/d + 1)³, over random subsets
(Bińkowski et al. 2018; torch-fidelity's and torchmetrics' estimator)."""

from __future__ import annotations

import numpy as np

from lib.analysis.gap.frechet import sample


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = x @ y.T
    k /= x.shape[1]
    k += 1.0
    return k * k * k  # in place and by products: 3× faster than ** 3 on 10⁶ entries


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (KID's estimator; can be < 0).
    Kernel sums are accumulated in float64 whatever the inputs' precision."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    sxx = (kxx.sum(dtype=np.float64) - np.trace(kxx, dtype=np.float64)) / (m * (m - 1))
    syy = (kyy.sum(dtype=np.float64) - np.trace(kyy, dtype=np.float64)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean(dtype=np.float64))


def kid(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, rng=None
) -> dict:
    """Mean and std of MMD² over `subsets` random subsets of `subset_size` per domain
    (fewer when a domain is smaller: `reduced`)."""
    rng = rng or np.random.default_rng(0)
    m = min(subset_size, len(a), len(b))
    values = [
        mmd2_unbiased(sample(a, m, rng).astype(np.float32), sample(b, m, rng).astype(np.float32))
        for _ in range(subsets)
    ]
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "subsets": subsets,
        "subset_size": int(m),
        "reduced": m < subset_size,  # fewer images than the default subset size
    }
