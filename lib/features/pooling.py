"""How a feature map becomes one vector per image or object (`--pooling`).

- avg: global average over space → C values per level (256 for an FPN level). Default;
  `gap` (global average pooling, its name before 2026-12) is the same pooling.
- channel-sum: sum over channels, spatial map flattened row-major → H·W values. Exactly
  the original tool's vectors (p2 of a 512×512 input gives 128² = 16,384 values).
- channel-mean: like channel-sum, divided by C.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lib.runtime.errors import GapscopeError

if TYPE_CHECKING:
    import torch

DEFAULT = "avg"
ALIASES = {"gap": "avg"}
# the feature cache's keys name a pooling as caches named it from the start, so no cache
# made before a rename goes stale
_KEY_NAMES = {"avg": "gap"}


def _avg(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.mean(dim=(2, 3))


def _channel_sum(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.sum(dim=1).flatten(1)


def _channel_mean(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.mean(dim=1).flatten(1)


POOLINGS: dict[str, Callable] = {
    "avg": _avg,
    "channel-sum": _channel_sum,
    "channel-mean": _channel_mean,
}


def resolve_pooling(pooling: str) -> str:
    """The pooling's own name (an alias resolved); a one-line error for an unknown one."""
    name = ALIASES.get(pooling, pooling)
    if name not in POOLINGS:
        choices = ", ".join([*POOLINGS, *(f"{a} (= {n})" for a, n in ALIASES.items())])
        raise GapscopeError(f"unknown pooling {pooling!r}: choose one of {choices}")
    return name


def key_name(pooling: str) -> str:
    """The pooling's name in feature-cache keys."""
    name = resolve_pooling(pooling)
    return _KEY_NAMES.get(name, name)


def pool(fmap: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, C, H, W) → (N, D) float32, by the named pooling."""
    return POOLINGS[resolve_pooling(pooling)](fmap.float())


def pool_valid(fmap, sizes: list[tuple[int, int]], padded: tuple[int, int], pooling: str):
    """Each image's vector from its own (unpadded) part of a padded batch's map: the
    first ceil(h / stride) rows and ceil(w / stride) columns."""
    sh, sw = padded[0] / fmap.shape[-2], padded[1] / fmap.shape[-1]
    rows = [
        pool(fmap[i : i + 1, :, : math.ceil(h / sh), : math.ceil(w / sw)], pooling)
        for i, (h, w) in enumerate(sizes)
    ]
    return np.concatenate([r.cpu().numpy() for r in rows])
