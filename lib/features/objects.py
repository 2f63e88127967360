"""Per-object features, the way a detector's ROI heads see its objects.

The backbone runs once on the whole image (as prepared for the run: as is, centre crop,
resize, or the detector's own test-time resize); each box, carried through that
preparation exactly, is pooled by `RoiPooler` — detectron2's `ROIPooler` for the box
head: ROIAlign (`torchvision.ops.roi_align`, aligned, adaptive sampling, 7×7) on the FPN
level the box's size assigns it to, `floor(4 + log2(sqrt(area) / 224))` clamped to the
pooled levels — and averaged to one vector per object. Three modes:

- `roi`: that vector, one level named `roi` (what the box head receives);
- `levels`: the box pooled on every level of the backbone (p2..p6), so the per-level
  analysis works per object;
- `crop`: for classifiers, each box cropped with a context margin, resized square and
  run through the backbone like an image (the crop-and-run path the original tool took,
  kept for networks without ROI heads).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import ClassVar

import numpy as np

from lib.features.pooling import DEFAULT, key_name, pool, resolve_pooling
from lib.features.sources import BATCH_SIZE
from lib.inputs.images import Prepare, loader_of
from lib.inputs.objects import AS_IS, ObjectImages, crop_box
from lib.runtime.errors import GapscopeError

log = logging.getLogger(__name__)

MODES = ("auto", "roi", "levels", "crop")
ROI_LEVEL = "roi"
MARGIN = 0.25  # `--objects crop`: context around the box, a share of its longer side
CROP_SIZE = 224  # `--objects crop`: side of the square crop the model sees


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise GapscopeError(f"--objects {mode}: choose one of {', '.join(MODES)}")
    return mode


def resolve_mode(mode: str, levels) -> str:
    """auto: roi for an FPN (`levels` has p2..p5, one width, as the ROI heads pool them),
    else levels (a classifier's stages differ in width: no single ROI level)."""
    check_mode(mode)
    if mode != "auto":
        return mode
    return "roi" if {"p2", "p3", "p4", "p5"} <= set(levels) else "levels"


@dataclass(frozen=True)
class RoiPooler:
    """detectron2's box-head pooler. Defaults are its standard FPN config's
    (Base-RCNN-FPN.yaml): ROI_HEADS.IN_FEATURES p2..p5, ROI_BOX_HEAD.POOLER_RESOLUTION 7,
    POOLER_SAMPLING_RATIO 0 (adaptive), POOLER_TYPE ROIAlignV2 (aligned=True), and the
    ROIPooler's canonical box size 224 at level 4 (not configurable in detectron2)."""

    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5")
    resolution: int = 7
    sampling_ratio: int = 0
    aligned: bool = True
    canonical_box_size: float = 224.0
    canonical_level: int = 4

    @classmethod
    def for_backbone(cls, backbone) -> RoiPooler:
        return cls.of(backbone.info, backbone.levels)

    @classmethod
    def of(cls, info: dict, levels) -> RoiPooler:
        """The pooler a detectron2 config names (`roi_pooler` in a backbone's info), else
        the standard one over the levels the backbone has (FPN p2..p5 when it has them)."""
        given = info.get("roi_pooler")
        if given:
            return cls(
                tuple(given["in_features"]),
                int(given["resolution"]),
                int(given["sampling_ratio"]),
                bool(given["aligned"]),
            )
        standard = tuple(lv for lv in cls.in_features if lv in levels)
        return cls(standard or tuple(levels[:4]))

    def describe(self) -> dict:
        return {
            "in_features": list(self.in_features),
            "resolution": self.resolution,
            "sampling_ratio": self.sampling_ratio,
            "aligned": self.aligned,
            "canonical_box_size": self.canonical_box_size,
            "canonical_level": self.canonical_level,
        }

    def assign(self, boxes, strides: Sequence[int]):
        """Index into `in_features` of the level each box (N, 4) in input pixels is
        pooled from: detectron2's `assign_boxes_to_levels`."""
        import torch

        levels = [int(round(math.log2(s))) for s in strides]
        lo, hi = levels[0], levels[-1]
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sizes = torch.sqrt(widths * heights)
        k = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_box_size + 1e-8))
        return torch.clamp(k, min=lo, max=hi).to(torch.int64) - lo

    def pool(
        self, maps: dict, boxes: list, input_size: tuple[int, int], every_level: bool = False
    ) -> dict:
        """Mean of each box's ROIAlign grid: {level: (N, C)} for the boxes of every image
        in the batch (`boxes[i]`: (n_i, 4) float32 x0 y0 x1 y1 in the input's pixels),
        in order. `every_level`: each box on each of `maps`' levels; otherwise one level,
        `roi`, each box on the level `assign` gives it."""
        import torch
        from torchvision.ops import roi_align

        rois = torch.cat(
            [torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
        )
        if every_level:
            return {lv: self._align(roi_align, fmap, rois, input_size) for lv, fmap in maps.items()}
        names = [lv for lv in self.in_features if lv in maps]
        strides = [stride(maps[lv], input_size) for lv in names]
        assigned = self.assign(rois[:, 1:], strides)
        channels = {maps[lv].shape[1] for lv in names}
        if len(channels) != 1:
            raise GapscopeError(
                f"the pooled levels {', '.join(names)} differ in channels ({sorted(channels)}): "
                "object mode roi needs an FPN; use --objects levels or crop"
            )
        out = torch.zeros((len(rois), channels.pop()), dtype=torch.float32)
        for j, lv in enumerate(names):
            take = torch.nonzero(assigned == j).squeeze(1)
            if len(take):
                out[take] = self._align(roi_align, maps[lv], rois[take], input_size)
        return {ROI_LEVEL: out}

    def _align(self, roi_align, fmap, rois, input_size):
        s = stride(fmap, input_size)
        pooled = roi_align(
            fmap.float(),
            rois.to(fmap.device),
            self.resolution,
            spatial_scale=1.0 / s,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )
        return pooled.mean(dim=(2, 3)).cpu()


def stride(fmap, input_size: tuple[int, int]) -> int:
    """A level's stride: the input's width over the map's, to the nearest power of two
    (maps of unpadded inputs are ceil(W / stride) wide)."""
    ratio = input_size[1] / fmap.shape[-1]
    return 2 ** round(math.log2(ratio))


# ---- the item source ------------------------------------------------------------------


@dataclass
class Objects:
    """The objects on `images` as an item source of the extraction engine
    (lib.features.engine): a unit is an image, its rows are its objects (image by image,
    box by box). `roi`/`levels`: `batch_size` images per forward pass (each computed as if
    alone: see Backbone.forward_alike), each box pooled by `pooler`; `crop`: one image per unit
    batch, its crops `batch_size` at a time, pooled by `pooling`."""

    images: ObjectImages
    prepare: Prepare
    mode: str  # roi | levels | crop (resolved: see resolve_mode)
    pooler: RoiPooler
    backbone_levels: tuple[str, ...]
    pooling: str = DEFAULT
    margin: float = MARGIN
    crop_size: int = CROP_SIZE
    batch_size: int = BATCH_SIZE
    stacked: ClassVar[bool] = False  # images keep their own sizes

    def __post_init__(self):
        self.pooling = resolve_pooling(self.pooling)  # an unknown one fails before any work

    def __len__(self) -> int:
        return len(self.images.items)

    @property
    def levels(self) -> tuple[str, ...]:
        return (ROI_LEVEL,) if self.mode == "roi" else tuple(self.backbone_levels)

    @cached_property
    def keys(self) -> list[str]:
        return [k for ks in self.images.keys for k in ks]

    @cached_property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(b) for b in self.images.boxes])]).astype(int)

    @property
    def per_batch(self) -> int:
        return 1 if self.mode == "crop" else self.batch_size

    def rows(self, units: Sequence[int]) -> np.ndarray:
        o = self.offsets
        return np.concatenate([np.arange(o[i], o[i + 1]) for i in units] or [np.arange(0)])

    def todo(self, done: np.ndarray) -> list[int]:
        """The images with an object the cache lacks."""
        o = self.offsets
        return [i for i in range(len(self)) if o[i + 1] > o[i] and not done[o[i] : o[i + 1]].all()]

    def load(self, unit: int):
        """The image prepared for the model with its boxes carried through the
        preparation, or (crop mode) its boxes' crops."""
        images, record = self.images.items[unit]
        rgb = images.load(record, AS_IS)
        boxes = self.images.boxes[unit]
        if self.mode == "crop":
            return np.stack([crop_box(rgb, b, self.margin, self.crop_size) for b in boxes])
        return self.prepare.apply_with_boxes(rgb, boxes)

    def collate(self, loaded: list) -> list:
        return loaded

    def forward(self, backbone, batch, units, device: str, precision: str) -> dict:
        if self.mode == "crop":
            [crops] = batch
            parts = [
                backbone(crops[s : s + self.batch_size], device, precision)
                for s in range(0, len(crops), self.batch_size)
            ]
            return {
                lv: np.concatenate([pool(m[lv], self.pooling).cpu().numpy() for m in parts])
                for lv in self.levels
            }
        # each image as if alone (Backbone.forward_alike): its objects' vectors never
        # depend on the other images of the batch
        per_image: list[dict | None] = [None] * len(batch)
        images = [rgb for rgb, _ in batch]
        for positions, maps, size in backbone.forward_alike(images, device, precision):
            boxes = [_tensor(batch[i][1]) for i in positions]
            pooled = self.pooler.pool(maps, boxes, size, every_level=self.mode == "levels")
            ends = np.cumsum([len(b) for b in boxes])[:-1]
            split = {lv: np.split(v.numpy(), ends) for lv, v in pooled.items()}
            for n, i in enumerate(positions):
                per_image[i] = {lv: parts[n] for lv, parts in split.items()}
        return {lv: np.concatenate([p[lv] for p in per_image]) for lv in self.levels}

    def part(self, units: Sequence[int]) -> Objects:
        images = ObjectImages(
            [(loader_of(s), r) for s, r in (self.images.items[u] for u in units)],
            [self.images.boxes[u] for u in units],
            [self.images.keys[u] for u in units],
        )
        return replace(self, images=images)

    def describe(self) -> str:
        """How the objects are pooled, as the feature cache's key names it."""
        how = f"objects {self.mode} {self.pooler.describe()} {key_name(self.pooling)}"
        if self.mode == "crop":
            how += f" margin {self.margin:g} side {self.crop_size}"
        return how


def _tensor(boxes: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32))
