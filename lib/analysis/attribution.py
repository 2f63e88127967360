"""Which image properties explain the gap: per photometric statistic (lib.analysis.photometry), how
well it alone tells the domains apart, and per level, how much of the feature-space
domain classifier's out-of-fold p(synthetic) the statistics explain together.

- `separation`: AUC of each statistic for "synthetic" (0.5: no difference; below 0.5 the
  synthetic images have less of it), a seeded bootstrap interval, and the ratio of the
  domains' medians; ordered by |AUC − 0.5|.
- `explained`: cross-validated R² of a small model (scikit-learn's histogram gradient
  boosting) predicting p(synthetic) from the statistics, over repeated shuffled folds;
  the interval is the folds' 2.5–97.5 % range. High at a level: the gap there goes
  with photometry (filters may fix it); low: these statistics do not capture it — which
  is not proof that it is content (what-if's experiments decide that).
- `together`: a note when the clearest differences move together across images (one
  cause, such as a tone curve, may explain them all).
- `fitted_tone`: the one tone curve (synthetic luma ≈ real luma^γ) that best maps the
  real images' tones onto the synthetic ones', and how well it fits: a pure gamma reads
  as that gamma, with a small residual, and leads the findings.
- `sentences`: the findings in words, e.g. "synthetic images are 2.1× sharper (AUC 0.93)".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.analysis.gap.classifier import rank_auc
from lib.analysis.photometry import (
    STATISTICS,
    TONE_QUANTILES,
    jpeg_quality,
    statistics,
    tone_quantiles,
)
from lib.inputs.images import decode_rgb


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


def separation(
    stats: dict[str, np.ndarray], synthetic: np.ndarray, resamples: int = 200, seed: int = 0
) -> list[Separation]:
    """Each statistic's separation of the domains (`synthetic`: True per synthetic
    image), strongest first; statistics missing for an image (NaN: JPEG quality of a
    PNG) are compared on the images that have them, and skipped without both domains."""
    synthetic = np.asarray(synthetic, dtype=bool)
    rng = np.random.default_rng(seed)
    out = []
    for name in STATISTICS:
        values = np.asarray(stats[name], dtype=float)
        ok = ~np.isnan(values)
        y, v = synthetic[ok], values[ok]
        if y.all() or not y.any():
            continue
        auc = rank_auc(y, v)
        aucs = []
        for _ in range(resamples):  # stratified: each resample keeps both domains' sizes
            idx = np.concatenate(
                [
                    rng.choice(np.flatnonzero(y == c), size=int((y == c).sum()))
                    for c in (False, True)
                ]
            )
            aucs.append(rank_auc(y[idx], v[idx]))
        lo, hi = np.percentile(aucs, [2.5, 97.5])
        out.append(
            Separation(
                name, auc, (float(lo), float(hi)), float(np.median(v[~y])), float(np.median(v[y]))
            )
        )
    return sorted(out, key=lambda s: -s.strength)


def explained(
    stats: dict[str, np.ndarray],
    p_synthetic: np.ndarray,
    folds: int = 5,
    repeats: int = 2,
    seed: int = 0,
) -> dict:
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
            # 50 rounds: within 0.01 of R² at 100 here, at half the cost
            model = HistGradientBoostingRegressor(max_iter=50, random_state=seed)
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
        out.append(
            f"synthetic images are {words} (AUC {s.auc:.2f}, {s.ci95[0]:.2f}–{s.ci95[1]:.2f})"
        )
    return out


IMAGE_SIDE = 256  # statistics of every image at this longest side: domains of different
# resolutions compare fairly, and a 4k photo costs what a 256-px one does (~30 ms)


def attribute(
    paths: list[str], synthetic: np.ndarray, p_synthetic: dict[str, np.ndarray], seed: int = 0
) -> dict:
    """The run's "what differs": the statistics of the images at `paths` (a seeded
    sample of both domains; `synthetic` marks the synthetic ones), their separation, and
    per level how much of that level's out-of-fold p(synthetic) (for the same images)
    they explain. A JSON-ready dict for metrics.json."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def one(path: str) -> dict:
        image = Image.fromarray(decode_rgb(Path(path)))
        image.thumbnail((IMAGE_SIDE, IMAGE_SIDE))  # downscale only, keeping the aspect
        rgb = np.asarray(image)
        return statistics(rgb, jpeg_quality(Path(path))), tone_quantiles(rgb)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # numpy frees the GIL
        pairs = list(pool.map(one, paths))
    stats = {name: np.array([r[name] for r, _ in pairs]) for name in STATISTICS}
    tones = np.array([t for _, t in pairs]).reshape(len(pairs), len(TONE_QUANTILES))
    tone = fitted_tone(tones, synthetic)
    found = separation(stats, synthetic, seed=seed)
    levels = {lv: explained(stats, p, seed=seed) for lv, p in p_synthetic.items()}
    for lv, p in p_synthetic.items():  # how much gap there is to explain at the level
        known = ~np.isnan(p)
        levels[lv]["auc"] = rank_auc(synthetic[known], p[known]) if known.any() else 0.5
    return {
        "n": {"real": int((~synthetic).sum()), "synthetic": int(synthetic.sum())},
        "image_side": IMAGE_SIDE,
        "statistics": [
            {
                "statistic": s.statistic,
                "what": STATISTICS[s.statistic][0],
                "auc": s.auc,
                "ci95": list(s.ci95),
                "real_median": s.real_median,
                "synthetic_median": s.synthetic_median,
                "clear": s.clear,
            }
            for s in found
        ],
        "explained": levels,
        "tone": tone,
        "sentences": tone_sentences(tone)
        + sentences(found)
        + together(stats, found)
        + explained_sentences(levels),
    }


TONE_FIT = 0.15  # the fit's relative residual under which one tone curve is said to fit
TONE_GAMMA = 0.1  # |log γ| above which the fitted curve is worth naming (γ outside ~0.9–1.1)


def fitted_tone(tones: np.ndarray, synthetic: np.ndarray) -> dict:
    """γ of synthetic ≈ real^γ from the medians over each domain's images of their luma
    quantiles (least squares in log-log through the origin, over the quantiles neither
    black nor white in either domain), with the fit's relative residual (RMS of the
    residuals over RMS of the synthetic log lumas: 0 when one curve maps every quantile).
    None for γ when fewer than 3 quantiles are usable."""
    if len(tones) == 0 or synthetic.all() or not synthetic.any():
        return {"gamma": None, "residual": None, "quantiles": 0}
    real, synth = (np.median(tones[mask], axis=0) for mask in (~synthetic, synthetic))
    usable = (real > 0.02) & (real < 0.98) & (synth > 0.02) & (synth < 0.98)
    if usable.sum() < 3:
        return {"gamma": None, "residual": None, "quantiles": int(usable.sum())}
    x, y = np.log(real[usable]), np.log(synth[usable])
    gamma = float((x @ y) / (x @ x))
    residual = float(np.sqrt(np.mean((y - gamma * x) ** 2) / np.mean(y * y)))
    return {"gamma": gamma, "residual": residual, "quantiles": int(usable.sum())}


def tone_sentences(tone: dict) -> list[str]:
    """Name the tone curve when one fits and it is not the identity."""
    gamma, residual = tone.get("gamma"), tone.get("residual")
    if gamma is None or residual > TONE_FIT or abs(np.log(gamma)) < TONE_GAMMA:
        return []
    way = "darker" if gamma > 1 else "lighter"
    return [
        f"one tone curve fits the difference: synthetic luma ≈ real^{gamma:.2f} ({way} "
        f"mid-tones; relative residual {residual:.2f} over {tone['quantiles']} tone "
        "quantiles): try the what-if tonecurve before separate fixes"
    ]


TOGETHER = 0.7  # |Spearman ρ| across images above which statistics are said to move together


def together(stats: dict[str, np.ndarray], found: list[Separation], top: int = 3) -> list[str]:
    """A note when the clearest differences move together across images: then one change
    may cause them all (a tone curve on dark shapes over white raises the edges'
    contrast, so "sharper" and "darker" appear as two findings of one cause), and the
    user should try that one change before three unrelated fixes."""
    from scipy.stats import spearmanr

    names = [s.statistic for s in found if s.clear][:top]
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = stats[a], stats[b]
            ok = ~(np.isnan(x) | np.isnan(y))
            if ok.sum() > 10 and np.std(x[ok]) > 0 and np.std(y[ok]) > 0:
                rho = float(spearmanr(x[ok], y[ok])[0])
                if abs(rho) >= TOGETHER:
                    pairs.append(f"{a} and {b} (ρ = {rho:+.2f})")
    if not pairs:
        return []
    return [
        f"these move together across images: {', '.join(pairs)}; one change may account "
        "for them all (a tone curve changes brightness, contrast and apparent sharpness "
        "at once): try the single change first (what-if: tonecurve, gamma)"
    ]


def explained_sentences(levels: dict[str, dict]) -> list[str]:
    """Where photometry explains the domain classifier and where it does not."""
    if not levels:
        return []
    parts = [f"{lv} {100 * max(r['r2'], 0):.0f} %" for lv, r in levels.items()]
    out = [
        f"photometry's statistics explain the domain classifier's p(synthetic) at "
        f"{', '.join(parts)} (R²: the share of its variation a small model of them predicts)"
    ]
    small = [lv for lv, r in levels.items() if r.get("auc", 1.0) < SMALL_GAP]
    low = [lv for lv, r in levels.items() if r["ci95"][1] < 0.25 and lv not in small]
    if small:
        out.append(
            f"at {', '.join(small)} the classifier barely tells the domains apart (AUC < "
            f"{SMALL_GAP}): there is little gap to explain, and R² there means little"
        )
    if low:  # a low R² of a few statistics is not proof that the gap is content
        out.append(
            f"at {', '.join(low)} these statistics explain little; that does not show the "
            "gap is content and layout — a filter can move features in ways a few "
            "statistics miss: what-if's experiments tell"
        )
    return out


SMALL_GAP = 0.6  # a level's out-of-fold AUC below which there is little gap to explain
