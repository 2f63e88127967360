"""torchvision architectures with a user's checkpoint.

- `resnet50-fpn`: the backbone of torchvision's Faster R-CNN ResNet-50-FPN, levels p2..p6
  (p6 is LastLevelMaxPool's stride-2 max pool of p5, as in detectron2's Faster R-CNN).
  Accepts the backbone's own state dict or a whole detector's (`backbone.` prefix; the
  RPN and ROI heads are ignored).
- `resnet50` (and 18/34/101): a classification network whose levels are its stages
  layer1..layer4; the classifier head may have any size (it is ignored).
- any other torchvision classifier (`vgg16`, `convnext_tiny`, ...) with a checkpoint: no
  feature levels, but every module is a layer for caricatures (`batch layers vgg16`).
"""

from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from lib.features.backbones.base import Backbone, file_sha256, load_into, load_state_dict
from lib.features.backbones.registry import Entry, register_backbone, register_family
from lib.runtime.errors import GapscopeError

FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
STAGES = ("layer1", "layer2", "layer3", "layer4")
DETECTOR_HEADS = ("rpn.", "roi_heads.")
CLASSIFIER_HEADS = ("fc.", "classifier.")  # a head of any size: users retrain it
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def _weights(checkpoint, random_weights: bool, name: str) -> tuple[dict | None, str]:
    if checkpoint is None and not random_weights:
        raise GapscopeError(
            f"{name} needs a checkpoint (--checkpoint PATH, or {name}:PATH as a model spec), "
            "or --random-weights to use untrained weights on purpose"
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


@register_backbone(
    "resnet50-fpn",
    "torchvision Faster R-CNN ResNet-50-FPN backbone (needs a checkpoint); levels p2..p6",
    own_normalisation=False,
)
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


def _classifier(arch: str, checkpoint, random_weights: bool):
    """(torchvision classifier with the checkpoint's weights, what they are, untrained?)."""
    import torch

    state, weights = _weights(checkpoint, random_weights, arch)
    build = getattr(torchvision.models, arch)
    if state is None:
        return build(weights=None).eval(), weights, True
    with torch.random.fork_rng():  # a head the checkpoint does not fill is the same every
        torch.manual_seed(0)  # time: the feature cache's fingerprint covers it
        net = build(weights=None)
    own = net.state_dict()
    head_fits = all(
        k in own and tuple(v.shape) == tuple(own[k].shape)
        for k, v in state.items()
        if k.startswith(CLASSIFIER_HEADS)
    )
    ignore = () if head_fits else CLASSIFIER_HEADS  # a head of another size: retrained
    load_into(net, state, str(checkpoint), ignore_prefixes=ignore)
    return net.eval(), weights, False


def resnet_stages(arch: str):
    """A factory for a torchvision ResNet whose levels are its four stages."""

    def factory(checkpoint=None, random_weights: bool = False) -> Backbone:
        from torchvision.models.feature_extraction import create_feature_extractor

        net, weights, untrained = _classifier(arch, checkpoint, random_weights)
        # the head runs too (it costs nothing), so every layer of the classifier is a layer
        # of the backbone: caricatures and `batch layers` see the whole network
        nodes = {**{s: s for s in STAGES}, "fc": "logits"}
        return Backbone(
            name=arch,
            module=create_feature_extractor(net, return_nodes=nodes).eval(),
            levels=STAGES,
            weights=weights,
            random_weights=untrained,
            info={"strides": [4, 8, 16, 32], "architecture": f"torchvision {arch}"},
        )

    return factory


for _arch in RESNETS:
    register_backbone(
        _arch, f"torchvision {_arch} classifier; levels layer1..layer4", own_normalisation=False
    )(resnet_stages(_arch))


def classifier(arch: str):
    """A factory for any torchvision classifier: no levels, every module a layer."""

    def factory(checkpoint=None, random_weights: bool = False) -> Backbone:
        net, weights, untrained = _classifier(arch, checkpoint, random_weights)
        return Backbone(
            name=arch,
            module=net,
            levels=(),
            weights=weights,
            random_weights=untrained,
            info={"architecture": f"torchvision {arch}"},
        )

    return factory


def _is_classifier(arch: str) -> bool:
    return arch in torchvision.models.list_models(module=torchvision.models)


register_family(
    "any torchvision classifier with a checkpoint (vgg16:model.pth; caricatures only)",
    _is_classifier,
    lambda arch: Entry(arch, classifier(arch), f"torchvision {arch}", own_normalisation=False),
)
