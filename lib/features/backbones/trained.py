"""Models trained by `batch train classifier` (lib.jobs.training), as backbones:
`--backbone trained:NAME` (results/models/NAME) or `trained:PATH/best.pt`. The levels are
the fine-tuned architecture's; the weights are the best epoch's; the module is in eval
mode, so extraction never touches BatchNorm's statistics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from lib.features.backbones import create_backbone
from lib.features.backbones.base import Backbone
from lib.features.backbones.registry import register_backbone
from lib.runtime.errors import GapscopeError


def best_checkpoint(checkpoint: Path | None) -> Path:
    if checkpoint is None:
        raise GapscopeError("name the trained model: --backbone trained:NAME")
    path = Path(checkpoint)
    path = path / "best.pt" if path.is_dir() else path
    if not path.is_file():
        raise GapscopeError(
            f"no trained model at {path}: train one with `python -m batch train classifier "
            f"--name {Path(checkpoint).name} --data FOLDER`"
        )
    return path


@register_backbone("trained", "A model fine-tuned by `batch train classifier`: trained:NAME")
def trained(checkpoint=None, random_weights: bool = False) -> Backbone:
    path = best_checkpoint(checkpoint)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    base = create_backbone(saved["arch"], random_weights=True)
    if not random_weights:
        base.module.load_state_dict(saved["body"])
    base.module.eval()
    weights = (
        f"trained {path.parent.name} from {saved['arch']} (epoch {saved['epoch']}, "
        f"validation accuracy {saved['val_accuracy']:.3f})"
    )
    if random_weights:
        weights = "RANDOM WEIGHTS (asked for with --random-weights)"
    return replace(
        base,
        name=f"trained:{path.parent.name}",
        weights=weights,
        random_weights=random_weights,
        info={
            **base.info,
            "classes": saved["classes"],
            "training_csv": str(path.parent / "training.csv"),
        },
    )
