"""One record shape for every gap metric in metrics.json, and the reader of older runs.

A record is `{"value": float, "ci95": [lo, hi] or None, "n": int, ...}`: `n` counts what
the value was computed over (images, image pairs, subsets: each metric says), and a
metric adds what else it needs (`std` for KID, `k` for mixing, ...). A reader needs only
`value`, `interval(record)` and `n`, whatever the metric.

Schema 1 runs (before the shape was unified) held some metrics as flat numbers with a
separate `*_ci95` key and others as records; `upgrade` rewrites them to schema 2 as they
are read, so the demo opens every run ever published.
"""

from __future__ import annotations

import numpy as np

# metrics.json's own version (its `schema` key; absent in the first runs, which are 1)
SCHEMA = 2


def record(value: float, ci95=None, n: int | None = None, **extra) -> dict:
    out = {
        "value": float(value),
        "ci95": None if ci95 is None else [float(ci95[0]), float(ci95[1])],
        "n": None if n is None else int(n),
    }
    out.update(extra)
    return out


def interval(rec: dict) -> list[float] | None:
    """The record's 95 % interval, None where it has none. Runs before KID had one
    recorded its spread over subsets (`std`), which is shown as no interval: with a domain
    no larger than a subset that spread is 0, and it was never a 95 % interval."""
    return rec.get("ci95")


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of a proportion: stays inside [0, 1] and is honest near 0
    and 1, where the normal approximation gives impossible bounds (recall 0.9 of 20
    images read [0.77, 1.03] before)."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def normal_ci(value: float, se: float, high: float | None = 1.0) -> list[float]:
    """value ± 1.96 se, inside [0, `high`] (None: no upper bound)."""
    lo, hi = value - 1.96 * se, value + 1.96 * se
    return [float(max(0.0, lo)), float(hi if high is None else min(high, hi))]


def share_ci(successes: int, n: int, se: float) -> list[float]:
    """A share's interval from a standard error that counts dependence between its
    trials (prdc's jackknife), never narrower than Wilson's for independent trials:
    dependence only adds variance, and at 0 or n successes the jackknife sees none."""
    lo, hi = normal_ci(successes / n if n else 0.0, se)
    w_lo, w_hi = wilson(successes, n)
    return [min(lo, w_lo), max(hi, w_hi)]


def mean_ci(values: np.ndarray) -> list[float]:
    """Normal-approximation 95 % interval of a mean."""
    values = np.asarray(values, dtype=np.float64)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return [float(values.mean() - half), float(values.mean() + half)]


def upgrade(metrics: dict) -> dict:
    """metrics.json of any schema → the current one (unchanged when already current)."""
    if metrics.get("schema", 1) >= SCHEMA:
        return metrics
    levels = {name: _upgrade_level(level) for name, level in metrics["levels"].items()}
    return {**metrics, "schema": SCHEMA, "levels": levels}


def kid_record(k: dict) -> dict:
    """KID's {mean, std, ci95, subsets, subset_size, reduced} as a record."""
    return record(
        k["mean"],
        k.get("ci95"),
        k["subset_size"],
        std=k["std"],
        subsets=k["subsets"],
        subset_size=k["subset_size"],
        reduced=k["reduced"],
    )


def auc_record(clf: dict) -> dict:
    """The classifier test's {auc, ci95, accuracy, folds, n: [real, synthetic]} as a record."""
    return record(
        clf["auc"],
        clf["ci95"],
        sum(clf["n"]),
        accuracy=clf["accuracy"],
        folds=clf["folds"],
        n_real=clf["n"][0],
        n_synthetic=clf["n"][1],
    )


def fd_inf_record(inf: dict) -> dict:
    """FD∞'s {value, slope, sizes, fd_at_sizes} as a record (no interval)."""
    rest = {k: v for k, v in inf.items() if k != "value"}
    return record(inf["value"], None, max(inf["sizes"]), **rest)


NO_CLUSTERS = {"n": 0, "fitted_on": 0, "noise": 0, "real_only": 0, "synthetic_only": 0, "table": []}


def _upgrade_level(m: dict) -> dict:
    n_real, n_fake = m["n"]["real"], m["n"]["synthetic"]
    fd, mixing = m["fd"], m["mixing"]
    records = {
        "fd": record(
            fd["value"], fd.get("ci95"), fd["n"], method="bootstrap", resamples=fd.get("bootstrap")
        ),
        "fd_inf": fd_inf_record(m["fd_inf"]),
        "kid": kid_record(m["kid"]),
        "auc": auc_record(m["classifier"]),
        "precision": record(m["precision"], m.get("precision_ci95"), n_fake),
        "recall": record(m["recall"], m.get("recall_ci95"), n_real),
        "density": record(m["density"], m.get("density_ci95"), n_fake),
        "coverage": record(m["coverage"]["value"], m["coverage"]["ci95"], n_real),
        "mixing": record(
            mixing["value"],
            mixing["ci95"],
            n_real + n_fake,
            real=mixing["real"],
            synthetic=mixing["synthetic"],
            k=mixing["k"],
        ),
        "realism": record(
            m["realism"]["median"], None, n_fake, share_inside=m["realism"]["share_inside"]
        ),
    }
    kept = {k: m[k] for k in ("n", "dim", "seconds") if k in m}
    # the first gap runs had no clusters yet
    return {**kept, "clusters": m.get("clusters", NO_CLUSTERS), "metrics": records}
