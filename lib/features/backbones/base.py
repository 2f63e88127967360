"""What every backbone is: a module returning named feature maps, plus how to feed it.

Preprocessing is described, not hidden in each model: pixel mean and std in 0..255
units and in the model's channel order, the channel order itself (RGB or BGR, as
detectron2 models expect), and padding to a size divisibility. One `preprocess` serves
torchvision, timm and detectron2 weights alike.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lib.runtime.errors import GapscopeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
PRECISIONS = ("fp32", "bf16")


@dataclass
class Backbone:
    """A feature extractor with named levels (FPN outputs p2..p6, or network stages)."""

    name: str
    module: torch.nn.Module  # forward(x) -> {level: (N, C, H, W)}
    levels: tuple[str, ...]
    weights: str  # what the weights are, for the manifest and the demo's banner
    random_weights: bool = False
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # 0..255, in input_format order
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    input_format: str = "RGB"  # "BGR" for detectron2-style weights
    size_divisibility: int = 0  # pad H and W up to a multiple of this (0: no padding)
    info: dict = field(default_factory=dict)  # extra facts for the manifest
    spec: object = None  # the ModelSpec it was built from (create_backbone sets it)

    def preprocess(self, images, device: str = "cpu") -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB (array or tensor) → normalised (N, 3, H', W') float tensor.

        HWC becomes CHW by a permute (the original tool's reshape scrambled pixels).
        """
        import torch

        x = self._normalise(images, device)
        if self.size_divisibility > 1:
            d = self.size_divisibility
            h, w = x.shape[-2:]
            ph, pw = (-h) % d, (-w) % d
            if ph or pw:  # pad after normalising, with zeros, as detectron2 does
                x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        return x

    def _normalise(self, images, device: str):
        import torch

        if not isinstance(images, torch.Tensor):
            # writable: a decoded image may be a read-only view (torch warns on those)
            images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
        x = images.to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        if self.input_format == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.pixel_mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(
        self, images, device: str = "cpu", precision: str = "fp32"
    ) -> dict[str, torch.Tensor]:
        """Feature maps per level. precision "bf16" runs under autocast (convolutions in
        bfloat16, accumulation in float32); on a GPU the input is channels_last."""
        return self._forward(lambda: self.preprocess(images, device), device, precision)

    def forward_padded(
        self, images: list, device: str = "cpu", precision: str = "fp32"
    ) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Images of different sizes in one batch, as detectron2's `ImageList.from_tensors`
        batches them: each normalised, then zero-padded at the bottom and right to the
        batch's largest height and width, rounded up to the size divisibility. Returns the
        maps and that padded (H, W)."""
        import torch

        d = max(self.size_divisibility, 1)
        h = -(-max(im.shape[0] for im in images) // d) * d
        w = -(-max(im.shape[1] for im in images) // d) * d

        def batch():
            x = torch.zeros((len(images), 3, h, w), device=device)
            for i, im in enumerate(images):
                x[i, :, : im.shape[0], : im.shape[1]] = self._normalise(im[None], device)[0]
            return x

        return self._forward(batch, device, precision), (h, w)

    def forward_alike(
        self, images: list, device: str = "cpu", precision: str = "fp32"
    ) -> Iterator[tuple[list[int], dict[str, torch.Tensor], tuple[int, int]]]:
        """Images of different sizes, each computed as if it were alone: grouped by their
        own padded size (rounded up to the size divisibility), one `forward_padded` per
        group. detectron2 pads a batch to its largest image, and the zeros a smaller image
        is padded with reach its right and bottom edges through the convolutions (up to
        0.25 of the largest value at a border box): a stored vector then depended on its
        batch mates and on the batch size, which the feature cache does not know. Yields
        (positions in `images`, maps, padded (H, W)) per group."""
        d = max(self.size_divisibility, 1)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((-(-im.shape[0] // d), -(-im.shape[1] // d)), []).append(i)
        for positions in groups.values():
            maps, size = self.forward_padded([images[i] for i in positions], device, precision)
            yield positions, maps, size

    def _forward(self, inputs, device: str, precision: str) -> dict[str, torch.Tensor]:
        import torch

        if precision not in PRECISIONS:
            raise GapscopeError(f"unknown precision {precision!r}: choose fp32 or bf16")
        device_type = torch.device(device).type
        with (
            torch.inference_mode(),
            torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16"),
        ):
            x = inputs()
            if device_type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.module(x)
        missing = [lv for lv in self.levels if lv not in out]
        if missing:
            raise RuntimeError(f"backbone {self.name} did not return levels {missing}")
        return {lv: out[lv] for lv in self.levels}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "levels": list(self.levels),
            "weights": self.weights,
            "random_weights": self.random_weights,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "input_format": self.input_format,
            "size_divisibility": self.size_divisibility,
            **self.info,
        }

    def fingerprint(self) -> str:
        """Identifies these weights and this preprocessing, for the feature cache."""
        import torch

        h = hashlib.sha256(repr(self.describe()).encode())
        for key, value in self.module.state_dict().items():
            h.update(key.encode())
            if isinstance(value, torch.Tensor) and value.numel():
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:20]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: Path) -> dict:
    """A torchvision-style state dict from a `.pth`/`.pt` file, read with weights_only=True.

    Training checkpoints that wrap it under `state_dict` or `model` are unwrapped, and a
    DataParallel `module.` prefix is removed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise GapscopeError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's weights-only loader raises many types on garbage
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GapscopeError(
            f"checkpoint {path} cannot be read as a PyTorch state dict ({first[:160]})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise GapscopeError(f"checkpoint {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_into(module, state: dict, source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state` into `module` strictly: every key consumed, every shape matching.

    Keys under `ignore_prefixes` (detector heads, classifier heads) are dropped and
    listed once at info level. Anything else that does not fit is a GapscopeError.
    """
    ignored = sorted(k for k in state if k.startswith(ignore_prefixes))
    if ignored:
        log.info("%s: ignoring %d head keys (%s, ...)", source, len(ignored), ignored[0])
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [
        k
        for k in own
        if k not in state
        and not k.endswith("num_batches_tracked")
        and not k.startswith(ignore_prefixes)  # the model's own head stays as built
    ]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if wrong or missing or unexpected:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (first: {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise GapscopeError(
            f"checkpoint {source} does not match {type(module).__name__}: " + "; ".join(parts)
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
