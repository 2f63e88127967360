"""Modes that one domain over- or under-represents: a partition of both domains' features
into modes, each mode's share of each domain, and the ratio synthetic/real with an interval.

Today's HDBSCAN clusters (clusters.py) find the modes one domain holds alone and call the
rest noise or "mixed"; a team also needs the modes both hold in the wrong proportions
("dark scenes are 5× rarer in synthetic"). So every image gets a mode: k-means on the first
`dims` principal components of both domains' standardised features (k-means, not HDBSCAN,
because a ratio needs every image in some mode; fitted on at most `max_points` images,
the rest assigned to their nearest centre). Each mode's ratio is (n_s/N_s) / (n_r/N_r)
with Katz's log interval (0.5 added to both counts when one is 0), and each mode is ranked
by its share of the total variation distance between the two domains' mode histograms,
Σ|p_s − p_r| / 2: how much of the mismatch in proportions it carries.

The interval treats the modes as given. They are fitted on the same images, which the
simulation in tests/test_modes.py shows costs little where the modes are distinct (the
ratio's interval held the truth in 95–96.5 % of 200 draws, at 100 and 300 images a
domain, 3 and 6 modes over 3 blobs, with and without a blob missing from synthetic); where
modes blur into each other a mode's boundary moves with the sample, which no interval
over counts sees.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

N_MODES = 12  # default number of modes (fewer when a domain is small: MIN_PER_MODE)
MIN_PER_MODE = 10  # images per mode, on average, below which there are fewer modes
DIMS = 10  # principal components the modes are found in
MAX_POINTS = 100_000  # k-means is fitted on at most this many images


def n_modes(n_images: int, wanted: int = N_MODES) -> int:
    """How many modes `n_images` (both domains) support: at most `wanted`, and on average
    at least MIN_PER_MODE images each, at least 2."""
    return int(max(2, min(wanted, n_images // MIN_PER_MODE)))


class Modes:
    """k-means modes of both domains together, as an estimator: `fit(real, fake)` →
    `labels_` (real rows, then synthetic), `centres_` (in the principal components),
    `table_` (mode_table's records, ranked)."""

    def __init__(self, n_modes=N_MODES, dims=DIMS, seed=0, max_points=MAX_POINTS):
        self.n_modes, self.dims, self.seed, self.max_points = n_modes, dims, seed, max_points

    def fit(self, real: np.ndarray, fake: np.ndarray) -> Modes:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        x = np.concatenate([real, fake]).astype(np.float32)
        mean, sd = x.mean(0), x.std(0)
        x = (x - mean) / np.where(sd > 0, sd, 1)
        rng = np.random.default_rng(self.seed)
        sample = x if len(x) <= self.max_points else x[rng.choice(len(x), self.max_points, False)]
        k = min(self.n_modes, len(sample))
        pca = PCA(n_components=min(self.dims, x.shape[1], len(sample) - 1), random_state=self.seed)
        z_sample = pca.fit_transform(sample)
        model = KMeans(k, n_init=3, random_state=self.seed).fit(z_sample)
        z = pca.transform(x) if sample is not x else z_sample
        self.labels_ = model.predict(z).astype(np.int32)
        self.centres_ = model.cluster_centers_
        self.distances_ = np.linalg.norm(z - self.centres_[self.labels_], axis=1)
        is_fake = np.r_[np.zeros(len(real), bool), np.ones(len(fake), bool)]
        self.table_ = mode_table(self.labels_, is_fake, k)
        return self


def ratio_interval(n_fake: int, total_fake: int, n_real: int, total_real: int, level=0.95):
    """(ratio, [lo, hi]) of the two shares (n_fake/total_fake) / (n_real/total_real):
    Katz's log interval, 0.5 added to both counts when one is 0. A mode with no synthetic
    image has ratio 0 (lower bound 0); one with no real image ratio ∞ (upper bound ∞)."""
    z = float(norm.ppf(0.5 + level / 2))
    a, b = float(n_fake), float(n_real)
    if a == 0 or b == 0:
        a, b = a + 0.5, b + 0.5
    log_ratio = np.log((a / total_fake) / (b / total_real))
    se = np.sqrt(max(1 / a - 1 / total_fake + 1 / b - 1 / total_real, 0.0))
    lo, hi = float(np.exp(log_ratio - z * se)), float(np.exp(log_ratio + z * se))
    if n_fake == 0:
        return 0.0, [0.0, hi]
    if n_real == 0:
        return float("inf"), [lo, float("inf")]
    ratio = (n_fake / total_fake) / (n_real / total_real)
    return float(ratio), [lo, hi]


def mode_table(labels: np.ndarray, is_fake: np.ndarray, k: int) -> list[dict]:
    """Each mode's counts, shares, ratio with its interval and share of the mismatch,
    the largest contribution first."""
    total_fake, total_real = int(is_fake.sum()), int((~is_fake).sum())
    fake = np.bincount(labels[is_fake], minlength=k)
    real = np.bincount(labels[~is_fake], minlength=k)
    p_fake, p_real = fake / max(total_fake, 1), real / max(total_real, 1)
    mismatch = np.abs(p_fake - p_real)
    whole = mismatch.sum()
    table = []
    for mode in range(k):
        ratio, ci = ratio_interval(int(fake[mode]), total_fake, int(real[mode]), total_real)
        table.append(
            {
                "mode": mode,
                "real": int(real[mode]),
                "synthetic": int(fake[mode]),
                "real_share": float(p_real[mode]),
                "synthetic_share": float(p_fake[mode]),
                "ratio": ratio,
                "ci95": ci,
                "beyond_noise": not (ci[0] <= 1 <= ci[1]),
                "contribution": float(mismatch[mode] / whole) if whole > 0 else 0.0,
            }
        )
    table.sort(key=lambda row: row["contribution"], reverse=True)
    return table


def total_variation(table: list[dict]) -> float:
    """Σ|p_s − p_r| / 2 over the modes: 0 when both domains fill the modes alike."""
    return float(sum(abs(r["synthetic_share"] - r["real_share"]) for r in table) / 2)


def sentence(row: dict, name: str = "") -> str:
    """One mode in words: "mode 7 (darker, mostly 3) is 5.2× [3.8, 7.0] rarer in
    synthetic (2 % of synthetic images, 10 % of real)". `name`: its words, if any."""
    label = f"mode {row['mode']}" + (f" ({name})" if name else "")
    lo, hi = row["ci95"]
    fake, real = _share(row["synthetic_share"]), _share(row["real_share"])
    shares = f"({fake} of synthetic images, {real} of real)"
    if row["ratio"] == 0:
        return f"{label} has no synthetic image: {_times(1 / hi)}× rarer or more {shares}"
    if np.isinf(row["ratio"]):
        return f"{label} has no real image: {_times(lo)}× commoner or more {shares}"
    noise = "" if row["beyond_noise"] else ", within noise"
    if row["ratio"] < 1:
        value, lo, hi, which = 1 / row["ratio"], 1 / hi, 1 / lo, "rarer"
    else:
        value, which = row["ratio"], "commoner"
    span = f"[{_times(lo)}, {_times(hi)}]"
    return f"{label} is {_times(value)}× {span} {which} in synthetic {shares}{noise}"


def _times(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def _share(p: float) -> str:
    return f"{p:.0%}" if p >= 0.1 or p == 0 else f"{p:.1%}"


DISTINCT = 0.5  # standard deviations from all images' mean at which a statistic names a mode
NAMING = {  # the cheap photometric statistics that name a mode: (synthetic's) words
    "brightness": ("brighter", "darker"),
    "contrast": ("more contrasted", "flatter"),
    "saturation": ("more saturated", "less saturated"),
}


def look(rgb: np.ndarray) -> dict[str, float]:
    """A thumbnail's brightness and contrast (mean and sd of L*) and saturation: what a
    person says of a mode's images first."""
    from skimage.color import rgb2hsv, rgb2lab

    image = np.asarray(rgb, dtype=np.float64) / 255.0
    lightness = rgb2lab(image)[..., 0]
    return {
        "brightness": float(lightness.mean()),
        "contrast": float(lightness.std()),
        "saturation": float(rgb2hsv(image)[..., 1].mean()),
    }


def names(looks: dict[str, np.ndarray], modes: np.ndarray, categories=None) -> dict[int, list]:
    """Each mode's words from a sample of its images: the statistics at least DISTINCT sds
    from the sample's mean ("darker", "more contrasted"), and the class most of it holds
    ("mostly <class>") when over half does. `looks`: statistic → value per sampled image;
    `modes`: each sampled image's mode; `categories`: their classes, or None."""
    out: dict[int, list] = {}
    for mode in np.unique(modes):
        mine = modes == mode
        words = []
        for stat, (more, less) in NAMING.items():
            values = looks[stat]
            sd = values.std()
            z = (values[mine].mean() - values.mean()) / sd if sd > 0 else 0.0
            if abs(z) >= DISTINCT:
                words.append((abs(z), more if z > 0 else less))
        out[int(mode)] = [w for _, w in sorted(words, reverse=True)]
        if categories is not None:
            found, counts = np.unique(np.asarray(categories)[mine], return_counts=True)
            top = int(np.argmax(counts))
            if counts[top] > mine.sum() / 2 and str(found[top]):
                out[int(mode)].append(f"mostly {found[top]}")
    return out
