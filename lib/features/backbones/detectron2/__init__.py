"""A user's detectron2 ResNet-FPN detector, without detectron2: its `backbone(images)`.

Given the detector's yaml config (with `_BASE_` inheritance over detectron2's defaults)
and its checkpoint (`model_final.pth`, a Detectron2 model-zoo `.pkl`, or a Caffe2
Detectron `.pkl`), build a plain torch module whose state-dict names are detectron2's
own (`backbone.` removed: `bottom_up.stem.conv1.norm.running_var`, `fpn_lateral2.weight`,
...), load it strictly, and return p2..p6 exactly as detectron2's
`model.backbone(preprocessed images)` computes them:

- ResNet (`build_resnet_backbone`): BasicStem (7×7/2 conv, norm, relu, 3×3/2 max pool),
  res2..res5 of BottleneckBlocks (stride on the 1×1 or the 3×3 conv, ResNeXt groups),
  every conv bias-free and followed by its norm (FrozenBN, BN/SyncBN in eval, GN, none).
- FPN (`build_resnet_fpn_backbone`): 1×1 laterals and 3×3 outputs (with bias when
  FPN.NORM is ""), nearest 2× top-down, "sum" or "avg" fusion, p6 = LastLevelMaxPool
  (max_pool2d kernel 1, stride 2) of p5.
- Preprocessing as GeneralizedRCNN does it: channels in INPUT.FORMAT order, then
  (x - PIXEL_MEAN) / PIXEL_STD, then zero padding to the backbone's size divisibility (32).

The heads of GeneralizedRCNN, ProposalNetwork, PanopticFPN and RetinaNet checkpoints are
ignored. Anything it cannot reproduce exactly is refused with the config key and value at
fault (deformable convs, dilated res5, P6/P7 RetinaNet backbones, BasicBlock ResNets,
LazyConfig .py files, ...). Pickled `.pkl` files go through a restricted unpickler that
builds numpy arrays and nothing else; `.pth` files load with `torch.load(weights_only=True)`.

Modules: `config` (yaml, `_BASE_`, the checked `Arch`), `modules` (the torch modules),
`checkpoint` (reading, renaming and loading weights).
"""

from __future__ import annotations

from pathlib import Path

from lib.features.backbones.base import Backbone, file_sha256
from lib.features.backbones.detectron2.checkpoint import load_detectron2_weights, read_checkpoint
from lib.features.backbones.detectron2.config import Arch, load_config
from lib.features.backbones.detectron2.modules import LEVELS, Detectron2FPN, random_init
from lib.features.backbones.registry import register_backbone
from lib.runtime.errors import GapscopeError

SIZE_DIVISIBILITY = 32  # FPN over res2..res5: the stride of its coarsest input, res5


@register_backbone(
    "detectron2",
    "a detectron2 ResNet-FPN detector: detectron2:model_final.pth@config.yaml; levels p2..p6",
    takes_config=True,
)
def detectron2_backbone(
    config: Path | None = None, checkpoint: Path | None = None, random_weights: bool = False
) -> Backbone:
    """p2..p6 of a detectron2 ResNet-FPN detector, from its yaml config and checkpoint."""
    if config is None:
        raise GapscopeError(
            "the detectron2 backbone needs the detector's config: --detectron2-config "
            "PATH.yaml (with its _BASE_ files next to it)"
        )
    config = Path(config)
    arch = Arch(load_config(config), config)
    if checkpoint is None and not random_weights:
        raise GapscopeError(
            "detectron2 needs --checkpoint PATH (model_final.pth or a model-zoo .pkl), or "
            "--random-weights to use untrained weights on purpose"
        )
    module = Detectron2FPN(arch)
    info = arch.info()
    if checkpoint is None:
        random_init(module)
        weights = "RANDOM WEIGHTS (asked for with --random-weights)"
    else:
        checkpoint = Path(checkpoint)
        info.update(load_detectron2_weights(module, arch, checkpoint))
        weights = f"{checkpoint} (sha256 {file_sha256(checkpoint)[:12]})"
    return Backbone(
        name="detectron2",
        module=module.eval(),
        levels=LEVELS,
        weights=weights,
        random_weights=checkpoint is None,
        pixel_mean=arch.pixel_mean,
        pixel_std=arch.pixel_std,
        input_format=arch.input_format,
        size_divisibility=SIZE_DIVISIBILITY,
        info=info,
    )


__all__ = [
    "LEVELS",
    "SIZE_DIVISIBILITY",
    "detectron2_backbone",
    "load_config",
    "read_checkpoint",
]
