"""The bundled offline example: handwritten digits (real) vs font-rendered digits (synthetic).

Real images are scikit-learn's 8x8 handwritten digits (values 0..16, 16 = ink). Synthetic
images are the digits 0-9 rendered with PIL from the TrueType fonts shipped inside matplotlib,
randomly rotated, scaled, shifted, thickened and blurred on a 64 px canvas, then reduced to 8x8
by area averaging and quantised to the same 17 grey levels. Both domains are written as RGB
PNGs of one common size, ink dark on white paper, with one metadata.csv describing them.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from lib.runtime.errors import GapscopeError

logger = logging.getLogger(__name__)

LEVELS = 16  # grey levels are 0..LEVELS, like sklearn's digits
CATEGORIES = tuple(str(d) for d in range(10))

_CANVAS = 64  # synthetic digits are drawn on a _CANVAS x _CANVAS grid, then reduced to 8x8
_FONT_PX = 48
_MIN_FONTS = 3
_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmb10.ttf",
    "cmtt10.ttf",
)


@dataclass(frozen=True)
class ExampleSummary:
    """What build_example wrote: the example's root and the image count per domain."""

    root: Path
    real: int
    synthetic: int
    size: int
    seed: int


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[ImageFont.FreeTypeFont, ...]:
    """The matplotlib-bundled fonts that exist here, loaded once at _FONT_PX."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = []
    for name in _FONT_FILES:
        path = ttf / name
        if not path.is_file():
            logger.debug("font %s not found, skipped", path)
            continue
        font = ImageFont.truetype(str(path), _FONT_PX)
        if all(_has_ink(font, d) for d in CATEGORIES):
            fonts.append(font)
    if len(fonts) < _MIN_FONTS:
        raise GapscopeError(
            f"found only {len(fonts)} usable fonts in {ttf} (need {_MIN_FONTS}): "
            "reinstall matplotlib"
        )
    return tuple(fonts)


def _has_ink(font: ImageFont.FreeTypeFont, char: str) -> bool:
    left, top, right, bottom = font.getbbox(char)
    return right > left and bottom > top


def _check_count(n: int, name: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise GapscopeError(f"{name} must be a whole number >= 0, got {n!r}")


def _render_glyph(
    char: str,
    font: ImageFont.FreeTypeFont,
    stroke: int,
    angle: float,
    height: float,
    aspect: float,
    shift: tuple[float, float],
    blur: float,
) -> np.ndarray:
    """One digit as an (8, 8) float array of mean ink (0..255) over 8x8-pixel blocks."""
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    pad = 4
    glyph = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(glyph).text(
        (pad - left, pad - top), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255
    )
    glyph = glyph.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    glyph = glyph.crop(glyph.getbbox())
    w, h = glyph.size
    new_h = max(1, min(_CANVAS, round(height)))
    new_w = max(1, min(_CANVAS, round(w * aspect * new_h / h)))
    glyph = glyph.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)

    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    x = (_CANVAS - new_w) / 2 + shift[0]
    y = (_CANVAS - new_h) / 2 + shift[1]
    x = round(min(max(x, 0), _CANVAS - new_w))
    y = round(min(max(y, 0), _CANVAS - new_h))
    canvas.paste(glyph, (x, y))
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    block = _CANVAS // 8
    arr = np.asarray(canvas, dtype=np.float64)
    return arr.reshape(8, block, 8, block).mean(axis=(1, 3))


def _quantise(blocks: np.ndarray) -> np.ndarray:
    """Scale so the inkiest block is LEVELS, round to the levels 0..LEVELS."""
    peak = blocks.max()
    if peak <= 0:
        return np.zeros(blocks.shape, dtype=np.uint8)
    return np.rint(blocks * (LEVELS / peak)).astype(np.uint8)


def render_synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 8) uint8 values 0..16 and (n,) int labels.

    Labels are balanced over 0..9; the result is deterministic for a seed.
    """
    digits, labels, _ = _render_synthetic(n, seed)
    return digits, labels


def _render_synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """render_synthetic_digits, and the font each digit was rendered with (the example's
    metadata.csv records it: a column users can colour the atlas by)."""
    _check_count(n)
    fonts = _fonts()
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 10
    rng.shuffle(labels)
    digits = np.empty((n, 8, 8), dtype=np.uint8)
    used = []
    for i, label in enumerate(labels):
        font = fonts[rng.integers(len(fonts))]
        used.append(" ".join(font.getname()))
        blocks = _render_glyph(
            str(label),
            font,
            stroke=int(rng.integers(0, 3)),
            angle=float(rng.uniform(-15.0, 15.0)),
            height=float(rng.uniform(0.6, 0.95)) * _CANVAS,
            aspect=float(rng.uniform(0.8, 1.25)),
            shift=(float(rng.uniform(-6.0, 6.0)), float(rng.uniform(-6.0, 6.0))),
            blur=float(rng.uniform(0.0, 2.5)),
        )
        digits[i] = _quantise(blocks)
    return digits, labels, used


def real_digits(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as (n, 8, 8) uint8 0..16 and (n,) int labels.

    n=None gives all 1,797; otherwise a seeded subsample, balanced over the classes.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.asarray(data.images).astype(np.uint8)
    labels = np.asarray(data.target).astype(np.int64)
    if n is None:
        return images, labels
    _check_count(n, "n_real")
    if n > len(labels):
        raise GapscopeError(f"n_real is {n} but only {len(labels)} real digits exist: lower it")
    rng = np.random.default_rng(seed)
    # Deal the classes round-robin, each class in a seeded random order, then keep the first n.
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    longest = max(len(p) for p in per_class)
    dealt = [p[k] for k in range(longest) for p in per_class if k < len(p)]
    chosen = np.sort(np.asarray(dealt[:n], dtype=np.int64))
    return images[chosen], labels[chosen]


def to_rgb(digits: np.ndarray, size: int = 64) -> np.ndarray:
    """(n,8,8) 0..16 → (n,size,size,3) uint8, nearest upscale, ink dark on white."""
    digits = np.asarray(digits)
    if digits.ndim != 3 or digits.shape[1:] != (8, 8):
        raise ValueError(f"expected digits of shape (n, 8, 8), got {digits.shape}")
    _check_size(size)
    idx = (np.arange(size) * 8) // size
    big = digits[:, idx][:, :, idx].astype(np.int64)
    grey = (255 - np.rint(np.clip(big, 0, LEVELS) * 255 / LEVELS)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _write_domain(
    tmp: Path, domain: str, rgb: np.ndarray, labels: np.ndarray, fonts: list[str]
) -> list[tuple]:
    rows = []
    for category in CATEGORIES:
        (tmp / domain / category).mkdir(parents=True, exist_ok=True)
    for i, (image, label, font) in enumerate(zip(rgb, labels, fonts, strict=True)):
        rel = f"{domain}/{int(label)}/{domain}_{i:05d}.png"
        Image.fromarray(image).save(tmp / rel, format="PNG")
        rows.append((rel, domain, str(int(label)), font))
    return rows


def _is_nonempty(path: Path) -> bool:
    if not path.is_dir():
        return True
    with os.scandir(path) as entries:
        return any(True for _ in entries)


VERSIONS = (1, 2)  # the synthetic generator's versions `build_example` can write
VERSION_2_BLEND = 0.5  # version 2: this share of each digit is a real digit of its class


def build_example(
    out: Path,
    n_real: int | None = None,
    n_synthetic: int = 1000,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    version: int = 1,
) -> ExampleSummary:
    """Write the real-vs-synthetic digits example under `out`; deterministic for a seed.

    `version` 2 is the "next version of the generator": the same font-rendered digits,
    each blended halfway with a random real digit of its class, so it is closer to real
    by construction (the real images are the same files, so runs of both versions share
    them: `batch compare`).

    The example is built in a temporary sibling directory and renamed into place at the end,
    so an interrupted build never leaves a half-written example behind.
    """
    _check_count(n_synthetic, "n_synthetic")
    _check_size(size)
    if version not in VERSIONS:
        raise GapscopeError(f"--version {version}: the example's generator has versions 1 and 2")
    real, real_labels = real_digits(n_real, seed=seed)
    synthetic, synthetic_labels, fonts = _render_synthetic(n_synthetic, seed)
    if version == 2:
        synthetic = _toward_real(synthetic, synthetic_labels, seed)
    domains = {
        "real": (to_rgb(real, size), real_labels, ["handwritten"] * len(real_labels)),
        "synthetic": (to_rgb(synthetic, size), synthetic_labels, fonts),
    }
    return _write_example(out, domains, overwrite, size, seed)


def _toward_real(digits: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Each digit blended VERSION_2_BLEND of the way to a random real digit of its class
    (of all 1,797: not necessarily one the example's real set holds), on the same
    0..LEVELS scale. A class mean instead made every digit alike: coverage fell to 0."""
    real, real_labels = real_digits()
    rng = np.random.default_rng(seed + 2)
    partner = np.array([rng.choice(np.flatnonzero(real_labels == c)) for c in labels])
    mixed = (1 - VERSION_2_BLEND) * digits + VERSION_2_BLEND * real[partner]
    return np.clip(np.rint(mixed), 0, LEVELS).astype(np.uint8)


def soft_rgb(digits: np.ndarray, size: int = 64) -> np.ndarray:
    """(n, 8, 8) 0..16 → (n, size, size, 3) uint8 photo-like digits: bilinear upscale (no
    blocks), ink dark on white."""
    grey = [(255 - d.astype(float) * 255 / LEVELS).astype(np.uint8) for d in digits]
    return np.stack(
        [
            np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR).convert("RGB"))
            for g in grey
        ]
    )


def sharpen(images: np.ndarray, noise: float = 4.0, seed: int = 0) -> np.ndarray:
    """Unsharp mask (radius 2, 200 %) plus grey Gaussian noise of this std (0..255 units)."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        sharp = np.asarray(Image.fromarray(image).filter(ImageFilter.UnsharpMask(2, 200, 0)))
        grain = rng.normal(0, noise, (*image.shape[:2], 1))
        out.append(np.clip(sharp.astype(float) + grain, 0, 255).astype(np.uint8))
    return np.stack(out)


def build_filter_gap(
    out: Path, n: int = 400, size: int = 64, seed: int = 0, overwrite: bool = False
) -> ExampleSummary:
    """A case with a known answer: n real digits against n other real digits sharpened
    (unsharp mask) with a little noise, both bilinear photo-like (`soft_rgb`). The gap is
    one of filters only, so attribution must name sharpness and noise, and a what-if blur
    must close most of the shallow levels' gap (README, What if)."""
    _check_size(size)
    digits, labels = real_digits(2 * n, seed=seed)  # balanced classes, dealt to each domain
    order = np.random.default_rng(seed).permutation(2 * n)
    real, synthetic = order[:n], order[n:]
    domains = {
        "real": (soft_rgb(digits[real], size), labels[real], ["none"] * n),
        "synthetic": (
            sharpen(soft_rgb(digits[synthetic], size), seed=seed),
            labels[synthetic],
            ["unsharp mask + noise"] * n,
        ),
    }
    return _write_example(out, domains, overwrite, size, seed, column="filter")


def _check_size(size: int) -> None:
    if size < 8:
        raise GapscopeError(f"size must be at least 8 pixels, got {size}")


def _write_example(
    out: Path, domains: dict, overwrite: bool, size: int, seed: int, column: str = "font"
) -> ExampleSummary:
    """Each domain's (images, labels, a metadata value per image) as PNGs under
    out/<domain>/<label>/ with one metadata.csv, written aside and renamed into place."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise GapscopeError(f"{out} exists and is not a directory: choose another output path")
        if _is_nonempty(out) and not overwrite:
            raise GapscopeError(
                f"{out} already exists and is not empty: pass overwrite to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        rows = []
        for domain, (rgb, labels, values) in domains.items():
            rows += _write_domain(tmp, domain, rgb, labels, values)
        rows.sort()
        with open(tmp / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("filename", "domain", "category", column))
            writer.writerows(rows)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = {d: len(v[1]) for d, v in domains.items()}
    logger.info(
        "wrote %s: %d real, %d synthetic, %d px", out, counts["real"], counts["synthetic"], size
    )
    return ExampleSummary(
        root=out, real=counts["real"], synthetic=counts["synthetic"], size=size, seed=seed
    )


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out, replacing an existing out directory only after tmp is complete."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not _is_nonempty(out):
        out.rmdir()
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---- the object example: several digits per scene, with COCO boxes -----------------------

SCENE_SIZES = ((192, 256), (224, 288), (240, 240))  # (H, W): mixed, as real datasets are
DIGIT_SIDES = (16, 128)  # box sides from small (< 32 px) to large (≥ 96 px), COCO's strata
DIGITS_PER_SCENE = (2, 7)


def build_object_example(
    out: Path, n_scenes: int = 300, seed: int = 0, overwrite: bool = False
) -> ExampleSummary:
    """Scenes of 2–7 digits each on white canvases of mixed sizes: real scenes from the
    handwritten digits, synthetic ones from the font-rendered digits, each digit upscaled
    to a box of 16–128 px (so COCO's small, medium and large strata all occur) and placed
    without overlap; out/real/, out/synthetic/ and a COCO instances file per domain,
    out/real.json and out/synthetic.json (categories "0".."9"). README, Objects."""
    _check_count(n_scenes, "n_scenes")
    rng = np.random.default_rng(seed)
    per_domain = n_scenes * DIGITS_PER_SCENE[1]
    sources = {
        "real": real_digits(min(per_domain, 1797), seed=seed),
        "synthetic": render_synthetic_digits(per_domain, seed=seed),
    }
    out = Path(out)
    if out.exists() and _is_nonempty(out) and not overwrite:
        raise GapscopeError(f"{out} already exists and is not empty: pass overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        for domain, (digits, labels) in sources.items():
            (tmp / domain).mkdir()
            coco = _scenes(tmp / domain, digits, labels, n_scenes, rng)
            (tmp / f"{domain}.json").write_text(json.dumps(coco, indent=1) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExampleSummary(root=out, real=n_scenes, synthetic=n_scenes, size=0, seed=seed)


def _scenes(folder: Path, digits: np.ndarray, labels: np.ndarray, n: int, rng) -> dict:
    images, annotations = [], []
    order = rng.permutation(len(digits))
    used = 0
    for i in range(n):
        h, w = SCENE_SIZES[int(rng.integers(len(SCENE_SIZES)))]
        canvas = np.full((h, w), 255, dtype=np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(*DIGITS_PER_SCENE, endpoint=True))):
            side = int(rng.integers(DIGIT_SIDES[0], min(DIGIT_SIDES[1], h, w) + 1))
            for _try in range(20):
                x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                box = (x, y, x + side, y + side)
                if not any(_overlap(box, other) for other in placed):
                    break
            else:
                continue
            j = order[used % len(order)]
            used += 1
            glyph = to_rgb(digits[j : j + 1], side)[0, :, :, 0]
            canvas[y : y + side, x : x + side] = np.minimum(
                canvas[y : y + side, x : x + side], glyph
            )
            placed.append(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(labels[j]),
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        name = f"scene_{i:05d}.png"
        Image.fromarray(canvas).convert("RGB").save(folder / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": int(c), "name": c} for c in CATEGORIES],
    }


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
