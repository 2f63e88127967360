"""Which gap number predicts a detector's mAP: the rank correlation, across synthetic
variants, between each gap metric at each level and the mAP a detector trained on that
variant reaches on the same real test images.

`calibrate(gaps, evaluations)`: per metric × level, Spearman's ρ between the variants'
metric values and their AP (or AP50), with a percentile bootstrap interval over test
images and variants together. Each resample draws the test images with replacement (one
draw for every variant: they are tested on the same images, so their APs move together)
and re-accumulates each variant's COCO matches with those weights
(lib.analysis.detection's `_Matches`), then draws the variants with replacement. A
resample whose variants all tie on the metric or on AP has no ρ and is left out.

With few variants ρ is uncertain whatever the data: with 5 variants only ρ = ±1 is
significant at 5 % (two-sided), with 8 |ρ| ≥ 0.74, with 12 |ρ| ≥ 0.59
(`CRITICAL_RHO`); the interval shows it and the findings say how many variants a clear
answer needs.
"""

from __future__ import annotations

import numpy as np

from lib.analysis.detection import _Matches

# two-sided 5 % critical values of Spearman's ρ by number of variants (exact tables;
# Zar 1972): below 5 variants no ρ is significant
CRITICAL_RHO = {5: 1.0, 6: 0.886, 7: 0.786, 8: 0.738, 9: 0.700, 10: 0.648, 11: 0.618, 12: 0.587}
CRITICAL_RHO.update({n: 0.587 * np.sqrt(11 / (n - 1)) for n in range(13, 101)})  # ≈ 2/√(n−1)
RESAMPLES = 1000


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ with average ranks for ties; NaN when either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def calibrate(
    gaps: dict[str, dict[str, dict[str, float]]],
    evaluations: dict,
    figure: str = "AP",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """`gaps`: variant → level → metric → value; `evaluations`: variant →
    lib.analysis.detection.Evaluation on the same test images. Returns the variants'
    `figure` (AP or AP50) and, per level and metric, {"rho", "ci95", "n"}."""
    variants = list(gaps)
    if set(variants) != set(evaluations):
        raise ValueError("gaps and evaluations must name the same variants")
    names = evaluations[variants[0]].class_names
    matches = [_Matches(evaluations[v].cocoeval) for v in variants]
    if len({tuple(evaluations[v].cocoeval.params.imgIds) for v in variants}) != 1:
        raise ValueError("every variant must be tested on the same test images")
    n_images = matches[0].n_images
    ap = np.array([evaluations[v].summary[figure] for v in variants])
    rng = np.random.default_rng(seed)
    image_weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=resamples)
    resampled_ap = np.stack(
        [m.figures(image_weights, names)[figure] for m in matches], axis=1
    )  # (resamples, variants)
    picks = rng.integers(0, len(variants), size=(resamples, len(variants)))
    table: dict[str, dict] = {}
    for level in gaps[variants[0]]:
        for metric in gaps[variants[0]][level]:
            values = np.array([gaps[v][level][metric] for v in variants], dtype=float)
            if not np.isfinite(values).all():
                continue
            rho = spearman(values, ap)
            draws = np.array([spearman(values[p], resampled_ap[r, p]) for r, p in enumerate(picks)])
            draws = draws[np.isfinite(draws)]
            ci = [float(v) for v in np.percentile(draws, [2.5, 97.5])] if len(draws) else None
            table.setdefault(level, {})[metric] = {"rho": rho, "ci95": ci, "n": len(variants)}
    return {
        "figure": figure,
        "variants": {v: float(a) for v, a in zip(variants, ap, strict=True)},
        "levels": table,
        "critical_rho": CRITICAL_RHO.get(len(variants)),
    }


def findings(result: dict) -> list[str]:
    """The calibration in words: the best predictor, whether it is beyond noise, and
    what the number of variants allows."""
    rows = [
        (level, metric, r)
        for level, metrics in result["levels"].items()
        for metric, r in metrics.items()
        if np.isfinite(r["rho"])
    ]
    values = list(result["variants"].values())
    if len(set(values)) == 1:
        return [
            f"the detectors' {result['figure']} does not differ across the variants (all "
            f"{values[0]:.3f}): nothing to correlate; train longer, or use variants further apart"
        ]
    if not rows:
        return ["no gap metric varies across the variants: nothing to correlate"]
    n = len(result["variants"])
    rows.sort(key=lambda x: -abs(x[2]["rho"]))
    critical = result.get("critical_rho")

    def said(level, metric, r) -> str:
        ci = r["ci95"]
        band = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
        # beyond noise both ways: the interval excludes 0 and ρ is significant for
        # this many variants (a bootstrap of 3 variants can give a degenerate interval)
        clear = (
            ci is not None
            and (ci[0] > 0 or ci[1] < 0)
            and critical is not None
            and abs(r["rho"]) >= critical - 1e-9
        )
        verb = "predicts" if clear else "does not clearly predict"
        return f"{metric} at {level} {verb} {result['figure']} (ρ {r['rho']:+.2f}{band})"

    lines = [f"for this detector and data, {said(*rows[0])}"]
    lines += [said(*row) for row in rows[1:3]]
    if critical is None:
        lines.append(f"with {n} variants no rank correlation can be significant: use at least 5")
    elif critical >= 0.85:
        lines.append(
            f"with {n} variants only |ρ| ≥ {critical:.2f} is significant at 5 %: 8-12 "
            "variants (generator versions, what-if strengths) give a usable answer"
        )
    return lines
