"""Cheap photometric statistics of an image: what a generator's filters change (blur,
noise, colour, JPEG), measured per image so the gap can be attributed to them
(lib.analysis.attribution).

scikit-image computes the colour space (CIE Lab, HSV), the Laplacian, the Canny edges and
the wavelet noise estimate; numpy the power spectrum; Pillow reads a JPEG's quantisation
tables. Every statistic works on the image as decoded (RGB, its own resolution), on
grey = Lab's L* / 100 where it needs one channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.inputs.images import decode_rgb

STATISTICS = {  # name: (what it is, the words for "synthetic has more", "... less")
    "brightness": ("mean L* (CIE Lab)", "brighter", "darker"),
    "contrast": ("standard deviation of L*", "more contrasted", "flatter"),
    "a_mean": ("mean a* (green − / red +)", "redder", "greener"),
    "b_mean": ("mean b* (blue − / yellow +)", "yellower", "bluer"),
    "a_std": ("standard deviation of a*", "more varied in red-green", "less varied in red-green"),
    "b_std": (
        "standard deviation of b*",
        "more varied in blue-yellow",
        "less varied in blue-yellow",
    ),
    "saturation": ("mean HSV saturation", "more saturated", "less saturated"),
    "sharpness": ("variance of the Laplacian of grey", "sharper", "blurrier"),
    "noise": ("wavelet estimate of the noise σ (scikit-image)", "noisier", "cleaner"),
    "high_freq": (
        "share of spectral energy above half Nyquist",
        "richer in fine detail",
        "poorer in fine detail",
    ),
    "edge_density": ("share of pixels on Canny edges", "edgier", "smoother"),
    "jpeg_quality": (
        "estimated JPEG quality (JPEG files only)",
        "less compressed",
        "more compressed",
    ),
}


def statistics(rgb: np.ndarray, jpeg_quality: float | None = None) -> dict[str, float]:
    """The statistics of one RGB image ((H, W, 3) uint8, or floats in [0, 1])."""
    from skimage.color import rgb2hsv, rgb2lab
    from skimage.feature import canny
    from skimage.filters import laplace
    from skimage.restoration import estimate_sigma

    image = np.asarray(rgb)
    image = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(float)
    lab = rgb2lab(image)
    if np.ptp(image, axis=-1).max() == 0:  # a grey image has no colour: not rounding's
        lab[..., 1:] = 0.0
    grey = lab[..., 0] / 100.0
    out = {
        "brightness": float(lab[..., 0].mean()),
        "contrast": float(lab[..., 0].std()),
        "a_mean": float(lab[..., 1].mean()),
        "b_mean": float(lab[..., 2].mean()),
        "a_std": float(lab[..., 1].std()),
        "b_std": float(lab[..., 2].std()),
        "saturation": float(rgb2hsv(image)[..., 1].mean()) if lab[..., 1:].any() else 0.0,
        "sharpness": float(laplace(grey).var()),
        "noise": _noise(grey, estimate_sigma),
        "high_freq": high_frequency_share(grey),
        "edge_density": float(canny(grey, sigma=1.0).mean()),
        "jpeg_quality": float("nan") if jpeg_quality is None else float(jpeg_quality),
    }
    return out


TONE_QUANTILES = np.linspace(0.01, 0.99, 99)  # fine at the ends: small dark shapes on white


def tone_quantiles(rgb: np.ndarray) -> np.ndarray:
    """The image's luma (Rec. 601, in [0, 1]) at TONE_QUANTILES: what a tone curve maps.
    A monotone curve applied to every pixel maps each quantile through it, and the
    median over images of each quantile too, so two domains' medians show the curve."""
    image = np.asarray(rgb)
    image = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(float)
    luma = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.quantile(luma, TONE_QUANTILES)


def _noise(grey: np.ndarray, estimate_sigma) -> float:
    """The wavelet noise σ; 0 for a flat image (whose estimate is an empty median)."""
    if grey.std() < 1e-9:  # flat (up to the colour conversion's rounding)
        return 0.0
    return float(estimate_sigma(grey))


def high_frequency_share(grey: np.ndarray, cutoff: float = 0.25) -> float:
    """The share of the (mean-removed) power spectrum above `cutoff` cycles a pixel
    (0.25: half the Nyquist frequency); 0 for a flat image."""
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    fy = np.fft.fftfreq(grey.shape[0])[:, None]
    fx = np.fft.fftfreq(grey.shape[1])[None, :]
    total = power.sum()
    return float(power[np.hypot(fy, fx) > cutoff].sum() / total) if total > 0 else 0.0


# the IJG's standard luminance table (libjpeg's quality 50), in natural order
_IJG_LUMINANCE = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    dtype=float,
)


def jpeg_quality(path: Path) -> float | None:
    """The libjpeg quality a JPEG file was most likely saved at (1–100), from its
    luminance quantisation table against the IJG standard table; None for other files."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format != "JPEG" or not getattr(image, "quantization", None):
                return None
            table = np.asarray(image.quantization[0], dtype=float)
    except OSError:
        return None
    if table.size != 64:
        return None
    # libjpeg: table = (standard × scale + 50) // 100; compared by sums, which do not
    # depend on the order the 64 entries come in (zig-zag or natural)
    scale = float(table.sum() * 100.0 / _IJG_LUMINANCE.sum())
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return float(np.clip(quality, 1, 100))


def statistics_of_files(paths: list[Path]) -> dict[str, np.ndarray]:
    """Each statistic for each file (decoded as the batch job decodes: lib.inputs.images)."""

    rows = [statistics(decode_rgb(Path(p)), jpeg_quality(Path(p))) for p in paths]
    return {name: np.array([r[name] for r in rows]) for name in STATISTICS}
