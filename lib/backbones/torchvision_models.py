"""torchvision architectures with a user's checkpoint.

- `resnet50-fpn`: the backbone of torchvision's Faster R-CNN ResNet-50-FPN, levels p2..p6
  (p6 is LastLevelMaxPool's stride-2 max pool of p5, as in detectron2's Faster R-CNN).
  Accepts the backbone's own state dict or a whole detector's (`backbone.` prefix; the
  RPN and ROI heads are ignored).
- `resnet50` (and 18/34/101): a classification network whose levels are its stages
  layer1..layer4; the classifier head may have any size (it is ignored).
"""

from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from lib.backbones.base import Backbone, file_sha256, load_into, load_state_dict
from lib.errors import GapscopeError

FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
STAGES = ("layer1", "layer2", "layer3", "layer4")
DETECTOR_HEADS = ("rpn.", "roi_heads.")


def _weights(checkpoint, random_weights: bool, name: str) -> tuple[dict | None, str]:
    if checkpoint is None and not random_weights:
        raise GapscopeError(
            f"{name} needs --checkpoint PATH (a state dict), or --random-weights to use "
            "untrained weights on purpose"
        )
    if checkpoint is None:
        return None, "RANDOM WEIGHTS (asked for with --random-weights)"
    return load_state_dict(checkpoint), f"{checkpoint} (sha256 {file_sha256(checkpoint)[:12]})"


class FPNLevels(torch.nn.Module):
    """torchvision's BackboneWithFPN returns '0'..'3','pool': name them p2..p6."""

    def __init__(self, body: torch.nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return dict(zip(FPN_LEVELS, self.body(x).values(), strict=True))


def resnet50_fpn(checkpoint=None, random_weights: bool = False) -> Backbone:
    state, weights = _weights(checkpoint, random_weights, "resnet50-fpn")
    fpn = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=5
    )
    if state is not None:
        if any(k.startswith("backbone.") for k in state):
            state = {
                (k[len("backbone.") :] if k.startswith("backbone.") else k): v
                for k, v in state.items()
            }
        load_into(fpn, state, str(checkpoint), ignore_prefixes=DETECTOR_HEADS)
    return Backbone(
        name="resnet50-fpn",
        module=FPNLevels(fpn).eval(),
        levels=FPN_LEVELS,
        weights=weights,
        random_weights=state is None,
        info={"strides": [4, 8, 16, 32, 64], "architecture": "torchvision ResNet-50-FPN"},
    )


def resnet_stages(arch: str):
    """A factory for a torchvision ResNet whose levels are its four stages."""

    def factory(checkpoint=None, random_weights: bool = False) -> Backbone:
        from torchvision.models.feature_extraction import create_feature_extractor

        state, weights = _weights(checkpoint, random_weights, arch)
        net = getattr(torchvision.models, arch)(weights=None)
        if state is not None:
            load_into(net, state, str(checkpoint), ignore_prefixes=("fc.",))
        body = create_feature_extractor(net, return_nodes={s: s for s in STAGES})
        return Backbone(
            name=arch,
            module=body.eval(),  # already returns {stage: map}
            levels=STAGES,
            weights=weights,
            random_weights=state is None,
            info={"strides": [4, 8, 16, 32], "architecture": f"torchvision {arch}"},
        )

    return factory
