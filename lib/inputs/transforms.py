"""Changes a team could make to its synthetic images, at a strength: what-if's knobs.

One registry (`TRANSFORMS`, filled by `@transform`) maps a name to how its strength is
given (the transform's own parameter, in its own unit), the strengths tried by default,
the valid range, and a function applying it to a batch. Batches are (B, 3, H, W) uint8
tensors on the job's device (a GPU when there is one) and come back so: the synthetic
data a generator writes is 8-bit too, so rounding is part of the change.

Filters are torchvision.transforms.v2's where it has them (blur, Gaussian noise, JPEG,
colour jitter, gamma); Poisson noise, histogram matching and Fourier-domain adaptation
(Yang & Soatto 2020, FDA) are a few tensor operations here, as neither torchvision nor
kornia has them. Random transforms draw from a seeded generator per batch: the same job
gives the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lib.runtime.errors import GapscopeError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Reference:
    """What some transforms take from the real images: the real sample's pooled
    per-channel histogram (histogram matching), real images to borrow the low
    frequencies of (FDA), one per synthetic image of the batch, (B, 3, H', W') uint8, and
    one tone curve per channel mapping the synthetic sample's pooled histogram onto the
    real one's (`tone_curve`)."""

    cdf: torch.Tensor | None = None  # (3, 256) cumulative share of each value
    style: torch.Tensor | None = None
    curve: torch.Tensor | None = None  # (3, 256) the synthetic → real tone curve (tonecurve)


@dataclass(frozen=True)
class Transform:
    name: str
    parameter: str  # what the strength is, e.g. "sigma (px)"
    defaults: tuple[float, ...]  # strengths tried when none are given
    low: float  # valid strengths: low < s <= high (low <= s when `closed`)
    high: float
    apply: Callable  # (batch, strength, generator, reference) -> batch
    description: str
    closed: bool = False
    integer: bool = False
    needs: str = ""  # "cdf", "curve" or "style": what of the real images it uses
    random: bool = False
    # the strength that changes nothing, or that the change vanishes towards (math.inf:
    # as the strength grows); None: none exists (FDA's smallest window still swaps the
    # mean colour, as the FDA reference implementation does)
    identity: float | None = 0.0

    def check(self, strength: float) -> None:
        inside = (self.low <= strength if self.closed else self.low < strength) and (
            strength <= self.high
        )
        if not inside or (self.integer and strength != int(strength)):
            low = "[" if self.closed else "("
            kind = "a whole number in " if self.integer else ""
            raise GapscopeError(
                f"--transform {self.name}: strength {strength:g} is out of range: its "
                f"{self.parameter} must be {kind}{low}{self.low:g}, {self.high:g}]"
            )

    def label(self, strength: float) -> str:
        """e.g. "blur sigma=1.5"; "gamma=1.2" where the parameter is the name."""
        word = self.parameter.split(" ")[0]
        return (
            f"{self.name}={strength:g}" if word == self.name else f"{self.name} {word}={strength:g}"
        )


TRANSFORMS: dict[str, Transform] = {}


def transform(name: str, parameter: str, defaults, low, high, description: str, **kwargs):
    """Register the decorated function as the transform `name` (see `Transform`)."""

    def register(fn):
        TRANSFORMS[name] = Transform(
            name, parameter, tuple(defaults), low, high, fn, description, **kwargs
        )
        return fn

    return register


def lookup(name: str) -> Transform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise GapscopeError(
            f"unknown transform {name!r}: choose from {', '.join(TRANSFORMS)}"
        ) from None


def parse_transform(text: str) -> tuple[Transform, tuple[float, ...]]:
    """`NAME` (its default strengths) or `NAME=S1,S2,...` → (transform, strengths)."""
    name, _, given = text.partition("=")
    t = lookup(name.strip())
    if not given.strip():
        return t, t.defaults
    strengths = []
    for part in given.split(","):
        try:
            strengths.append(float(part))
        except ValueError:
            raise GapscopeError(
                f"--transform {t.name}: {part.strip()!r} is not a number (give strengths "
                f"as {t.name}={','.join(f'{d:g}' for d in t.defaults)})"
            ) from None
    for s in strengths:
        if not math.isfinite(s):
            raise GapscopeError(f"--transform {t.name}: strength {s} is not a finite number")
        t.check(s)
    return t, tuple(dict.fromkeys(strengths))


def _float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0


def _uint8(x: torch.Tensor) -> torch.Tensor:
    import torch

    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


@transform(
    "blur",
    "sigma (px)",
    (0.5, 1.0, 2.0),
    0,
    20,
    "Gaussian blur (a softer lens, defocus, downsampling).",
)
def _blur(batch, sigma, generator, reference):
    from torchvision.transforms.v2 import functional as F

    side = min(batch.shape[-2:])
    k = min(2 * math.ceil(3 * sigma) + 1, 2 * ((side - 1) // 2) + 1)  # reflect padding < side
    return F.gaussian_blur(batch, [k, k], [sigma, sigma])


@transform(
    "noise",
    "sigma (of full range)",
    (0.01, 0.02, 0.05),
    0,
    1,
    "Gaussian sensor noise, the same for every pixel.",
    random=True,
)
def _noise(batch, sigma, generator, reference):
    import torch
    from torchvision.transforms.v2 import functional as F

    with torch.random.fork_rng(devices=[batch.device] if batch.is_cuda else []):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        return _uint8(F.gaussian_noise(_float(batch), sigma=sigma, clip=True))


@transform(
    "poisson",
    "photons (at white)",
    (1000, 300, 100),
    0,
    1e6,
    "Shot noise: fewer photons, more noise, brighter pixels noisier.",
    random=True,
    identity=math.inf,
)
def _poisson(batch, photons, generator, reference):
    import torch

    x = _float(batch) * photons
    seed = int(torch.randint(2**31, (1,), generator=generator))
    g = torch.Generator(device=batch.device).manual_seed(seed)
    return _uint8(torch.poisson(x, generator=g) / photons)


@transform(
    "jpeg",
    "quality",
    (90, 70, 50, 30),
    1,
    100,
    "JPEG re-encoding (libjpeg, 4:2:0) at this quality.",
    closed=True,
    integer=True,
    identity=100,
)
def _jpeg(batch, quality, generator, reference):
    from torchvision.transforms.v2 import functional as F

    return F.jpeg(batch.cpu(), int(quality)).to(batch.device)  # libjpeg runs on the CPU


@transform(
    "colour",
    "jitter",
    (0.1, 0.2, 0.4),
    0,
    1,
    "Random brightness, contrast and saturation factors in [1−s, 1+s], hue ±s/4, drawn per image.",
    random=True,
)
def _colour(batch, s, generator, reference):
    import torch
    from torchvision.transforms.v2 import functional as F

    # in floats, rounded once at the end: torchvision's uint8 adjustments each truncate,
    # which darkened every image by ~1.7 grey levels at a strength of 0.001
    out = _float(batch)
    for i, image in enumerate(out):
        b, c, sat = (1 + s * (2 * torch.rand(3, generator=generator) - 1)).tolist()
        hue = float(s / 4 * (2 * torch.rand(1, generator=generator) - 1))
        image = F.adjust_brightness(image, b)
        image = F.adjust_contrast(image, c)
        image = F.adjust_saturation(image, sat)
        out[i] = F.adjust_hue(image, hue)
    return _uint8(out)


@transform(
    "gamma",
    "gamma",
    (0.7, 0.85, 1.2, 1.5),
    0,
    10,
    "Gamma curve: below 1 brightens the shadows, above 1 darkens them.",
    identity=1,
)
def _gamma(batch, gamma, generator, reference):
    from torchvision.transforms.v2 import functional as F

    return F.adjust_gamma(batch, gamma)


@transform(
    "histmatch",
    "share",
    (0.5, 1.0),
    0,
    1,
    "Per image: each image's own channel histograms mapped onto the real sample's pooled "
    "ones (share 1: all the way; 0.5: halfway).",
    needs="cdf",
)
def _histmatch(batch, share, generator, reference):
    """Per image: each image's own histogram onto the pooled real one. Every image ends
    with the same histogram, so differences between images are flattened (on a pure
    gamma gap it made FD five times worse): `tonecurve` is the generator-wide fix."""
    import torch

    b, c = batch.shape[:2]
    flat = batch.reshape(b * c, -1).long()
    counts = torch.zeros(b * c, 256, device=batch.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    own = counts.cumsum(1) / counts[:, -1:].new_tensor(flat.shape[1])
    target = reference.cdf.to(batch.device).repeat(b, 1)  # (b·c, 256)
    return _through_curves(batch, _matching_curves(target, own), share)


@transform(
    "tonecurve",
    "share",
    (0.5, 1.0),
    0,
    1,
    "One tone curve per channel for every synthetic image, learned from the two domains: "
    "the synthetic sample's pooled histogram mapped onto the real sample's (share 1: all "
    "the way; 0.5: halfway). A generator-wide fix that keeps images different from each "
    "other, unlike per-image histmatch.",
    needs="curve",
)
def _tonecurve(batch, share, generator, reference):
    b = batch.shape[0]
    return _through_curves(batch, reference.curve.to(batch.device).float().repeat(b, 1), share)


def tone_curve(real_counts, synthetic_counts) -> torch.Tensor:
    """(3, 256) counts of the real and the synthetic sample's values per channel → the
    tone curve taking each synthetic value to the real value at the same cumulative
    share (histogram matching of the pooled histograms, applied alike to every image)."""
    return _matching_curves(reference_cdf(real_counts), reference_cdf(synthetic_counts))


def _matching_curves(target, own) -> torch.Tensor:
    """Histogram matching's lookup tables, one per row of (…, 256) cumulative shares:
    value v goes to the target value whose cumulative share first reaches v's own."""
    import torch

    return torch.searchsorted(target.contiguous(), own.contiguous()).clamp_(max=255).float()


def _through_curves(batch, curves, share: float):
    """Each (image, channel) of a (B, 3, H, W) uint8 batch through its lookup table
    (`curves`: (B·3, 256)), `share` of the way, rounded back to uint8."""
    import torch

    b, c = batch.shape[:2]
    flat = batch.reshape(b * c, -1).long()
    matched = torch.gather(curves, 1, flat)
    out = share * matched + (1 - share) * flat.float()
    return out.round_().clamp_(0, 255).to(torch.uint8).reshape(batch.shape)


@transform(
    "fda",
    "beta",
    (0.01, 0.05, 0.09),
    0,
    0.5,
    "Fourier domain adaptation (Yang & Soatto 2020): the lowest frequencies' "
    "amplitude (a window of beta × the shorter side) taken from a real image, the "
    "phase kept.",
    needs="style",
    random=True,
    identity=None,
)
def _fda(batch, beta, generator, reference):
    import torch
    from torchvision.transforms.v2 import functional as F

    h, w = batch.shape[-2:]
    style = reference.style.to(batch.device)
    if style.shape[-2:] != (h, w):
        style = F.resize(style, [h, w], antialias=True)
    src = torch.fft.fft2(batch.float(), norm="ortho")
    amp_src, phase = src.abs(), src.angle()
    amp_style = torch.fft.fft2(style.float(), norm="ortho").abs()
    amp_src, amp_style = (
        torch.fft.fftshift(amp_src, (-2, -1)),
        torch.fft.fftshift(amp_style, (-2, -1)),
    )
    r = int(math.floor(min(h, w) * beta))
    cy, cx = h // 2, w // 2
    amp_src[..., cy - r : cy + r + 1, cx - r : cx + r + 1] = amp_style[
        ..., cy - r : cy + r + 1, cx - r : cx + r + 1
    ]
    amp = torch.fft.ifftshift(amp_src, (-2, -1))
    out = torch.fft.ifft2(torch.polar(amp, phase), norm="ortho").real
    return out.round_().clamp_(0, 255).to(torch.uint8)


def reference_cdf(histogram) -> torch.Tensor:
    """(3, 256) counts of the real sample's values → their cumulative shares."""
    import torch

    counts = torch.as_tensor(histogram, dtype=torch.float64)
    return (counts.cumsum(1) / counts.sum(1, keepdim=True)).float()


def channel_histogram(batch) -> torch.Tensor:
    """(3, 256) counts of a (B, 3, H, W) uint8 batch's values per channel."""
    import torch

    x = batch.permute(1, 0, 2, 3).reshape(3, -1).long()
    counts = torch.zeros(3, 256, dtype=torch.float64, device=x.device)
    return counts.scatter_add_(1, x, torch.ones_like(x, dtype=torch.float64)).cpu()
