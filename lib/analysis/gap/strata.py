"""The gap within strata of a run's rows: per object class, per object size.

A detector's users ask whether their synthetic airplanes look like real airplanes, and
whether small objects differ more than large ones; the run's levels answer for all objects
together. Each stratum with enough objects in both domains gets, per level, the three
figures the what-if runs use (lib.analysis.gap.paired: FD with its interval at equal N, coverage
with Wilson's, the domain classifier's AUC with a bootstrap), each in lib.analysis.gap.records'
shape; smaller strata are listed with their counts and why they have no figures.
"""

from __future__ import annotations

import numpy as np

from lib.analysis.gap import GapParams
from lib.analysis.gap.paired import Comparison

MIN_PER_DOMAIN = 20  # below this an FD or an AUC interval says little


def gap_by(
    vectors: dict,
    real: np.ndarray,
    synthetic: np.ndarray,
    labels: np.ndarray,
    params: GapParams,
    device: str = "cpu",
) -> dict:
    """{stratum: {"n": {real, synthetic}, "levels": {level: records}}} for each value of
    `labels` (one per row of the run); strata too small get "skipped" instead of levels."""

    least = max(MIN_PER_DOMAIN, params.k + 2, params.folds * 2)
    rng = np.random.default_rng(params.seed)
    out = {}
    for value in sorted(set(labels[real].tolist()) | set(labels[synthetic].tolist())):
        r, s = real[labels[real] == value], synthetic[labels[synthetic] == value]
        entry: dict = {"n": {"real": int(len(r)), "synthetic": int(len(s))}}
        r, s = (
            np.sort(rng.choice(x, params.sample, replace=False)) if len(x) > params.sample else x
            for x in (r, s)
        )  # a seeded sample, as for the run's levels
        if min(len(r), len(s)) < least:
            entry["skipped"] = f"fewer than {least} objects in a domain"
        else:
            entry["levels"] = {}
            for level, X in vectors.items():
                comparison = Comparison(np.asarray(X[r]), params, device)
                entry["levels"][level] = comparison.measure(np.asarray(X[s])).records
        out[str(value)] = entry
    return out
