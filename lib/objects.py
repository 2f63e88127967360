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

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lib.errors import GapscopeError
from lib.images import Prepare

AS_IS = Prepare()  # boxes are in the original image's pixels: decode, nothing else

log = logging.getLogger(__name__)

MODES = ("auto", "roi", "levels", "crop")
ROI_LEVEL = "roi"


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
            return cls(tuple(given["in_features"]), int(given["resolution"]),
                       int(given["sampling_ratio"]), bool(given["aligned"]))  # fmt: skip
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

    def pool(self, maps: dict, boxes: list, input_size: tuple[int, int],
             every_level: bool = False) -> dict:  # fmt: skip
        """Mean of each box's ROIAlign grid: {level: (N, C)} for the boxes of every image
        in the batch (`boxes[i]`: (n_i, 4) float32 x0 y0 x1 y1 in the input's pixels),
        in order. `every_level`: each box on each of `maps`' levels; otherwise one level,
        `roi`, each box on the level `assign` gives it."""
        import torch
        from torchvision.ops import roi_align

        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1)
                          for i, b in enumerate(boxes)])  # fmt: skip
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
        pooled = roi_align(fmap.float(), rois.to(fmap.device), self.resolution,
                           spatial_scale=1.0 / s, sampling_ratio=self.sampling_ratio,
                           aligned=self.aligned)  # fmt: skip
        return pooled.mean(dim=(2, 3)).cpu()


def stride(fmap, input_size: tuple[int, int]) -> int:
    """A level's stride: the input's width over the map's, to the nearest power of two
    (maps of unpadded inputs are ceil(W / stride) wide)."""
    ratio = input_size[1] / fmap.shape[-1]
    return 2 ** round(math.log2(ratio))


def object_key(image_hash: str, box) -> str:
    """An object's identity: its image's content and its box (the feature cache keeps
    each way of pooling under a key directory of its own)."""
    text = f"{image_hash}|" + ",".join(f"{float(v):.4f}" for v in box)
    return hashlib.sha256(text.encode()).hexdigest()


# ---- crop mode ------------------------------------------------------------------------


def crop_window(box, margin: float) -> tuple[int, int, int]:
    """(left, top, side) of the square crop_box cuts: the box and `margin` (a share of
    its longer side) around it on every side, centred on the box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    return left, top, max(1, int(math.ceil(side)))


def crop_box(rgb: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """The box and `margin` (a share of its longer side) around it on every side, as a
    square centred on the box, zero-padded past the image's edges, resized to size×size
    (Pillow, bilinear)."""
    from PIL import Image

    left, top, n = crop_window(box, margin)
    h, w = rgb.shape[:2]
    out = np.zeros((n, n, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + n, w), min(top + n, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = rgb[sy0:sy1, sx0:sx1]
    if n != size:
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.BILINEAR))
    return out


# ---- extraction ------------------------------------------------------------------------


@dataclass
class ObjectImages:
    """The images with objects, each with its boxes (original pixels) and cache keys."""

    items: list  # (ImageSet, ImageRecord) per image
    boxes: list[np.ndarray]  # (n_i, 4) float32 per image
    keys: list[list[str]]  # cache key per object, per image

    @property
    def n_objects(self) -> int:
        return sum(len(b) for b in self.boxes)


class _Decoded:
    """Map-style dataset: image i prepared for the model, with its boxes carried through
    the preparation (or, in crop mode, its boxes' crops)."""

    def __init__(self, images: ObjectImages, todo: list[int], prepare, mode: str,
                 margin: float, crop_size: int):  # fmt: skip
        self.images, self.todo, self.prepare = images, todo, prepare
        self.mode, self.margin, self.crop_size = mode, margin, crop_size

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int):
        i = self.todo[j]
        image_set, record = self.images.items[i]
        rgb = image_set.load(record, AS_IS)
        boxes = self.images.boxes[i]
        if self.mode == "crop":
            return i, np.stack([crop_box(rgb, b, self.margin, self.crop_size) for b in boxes]), None
        prepared, boxes = self.prepare.apply_with_boxes(rgb, boxes)
        return i, prepared, boxes


def extract_objects(
    backbone,
    images: ObjectImages,
    prepare,
    mode: str = "roi",
    pooler: RoiPooler | None = None,
    pooling: str = "gap",
    margin: float = 0.25,
    crop_size: int = 224,
    batch_size: int = 8,
    cache=None,
    device: str = "cpu",
    precision: str = "fp32",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    allocate: Callable[[str, tuple[int, int]], np.ndarray] | None = None,
    remote: Callable | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Every object's vector per level, in the order of `images` (image by image, box by
    box), and how many came from the cache. `roi`/`levels`: `batch_size` images per
    forward pass (mixed sizes padded as detectron2 pads them); `crop`: `batch_size`
    crops per pass, pooled by `pooling`. Vectors go into the arrays `allocate(level,
    (N, D))` returns (in memory by default), as lib.features.extract's do.
    `remote(images, todo, offsets, out, progress)` computes the images not cached elsewhere
    instead (lib.cluster: on Dask workers), putting each object's vectors into `out`."""
    from torch.utils.data import DataLoader

    from lib.features import _as_list, _Output, _Shard, from_cache, pool

    mode = resolve_mode(mode, backbone.levels)
    pooler = pooler or RoiPooler.for_backbone(backbone)
    keys = [k for ks in images.keys for k in ks]
    out = _Output(len(keys), allocate)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in images.boxes])])
    levels = (ROI_LEVEL,) if mode == "roi" else tuple(backbone.levels)
    done = from_cache(cache, keys, levels, out, progress)
    todo = [i for i in range(len(images.items))
            if len(images.boxes[i]) and not done[offsets[i]:offsets[i + 1]].all()]  # fmt: skip
    cached = int(done.sum())
    if remote is not None:
        remote(images, todo, offsets, out, progress or (lambda n: None))
        return out.arrays, cached
    backbone.module.to(device)
    loader = DataLoader(
        _Decoded(images, todo, prepare, mode, margin, crop_size),
        batch_size=1 if mode == "crop" else batch_size,
        num_workers=workers if len(todo) > batch_size else 0,
        collate_fn=_as_list,
    )
    shard = _Shard(cache)
    for batch in loader:
        if mode == "crop":
            i, crops, _ = batch[0]
            pooled = {lv: [] for lv in levels}
            for start in range(0, len(crops), batch_size):
                maps = backbone(crops[start : start + batch_size], device, precision)
                for lv in levels:
                    pooled[lv].append(pool(maps[lv], pooling).cpu().numpy())
            pooled = {lv: np.concatenate(v) for lv, v in pooled.items()}
            owners = [i]
        else:
            owners = [i for i, _, _ in batch]
            maps, size = backbone.forward_padded([rgb for _, rgb, _ in batch], device, precision)
            boxes = [_tensor(b) for _, _, b in batch]
            pooled = pooler.pool(maps, boxes, size, every_level=mode == "levels")
            pooled = {lv: v.numpy() for lv, v in pooled.items()}
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in owners])
        for j, row in enumerate(rows):
            out.put(int(row), {lv: pooled[lv][j] for lv in levels})
        shard.add([keys[r] for r in rows], pooled)
        if progress:
            progress(len(rows))
    shard.flush()
    return out.arrays, cached


def _tensor(boxes: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32))


# ---- a run's objects ---------------------------------------------------------------------

OBJECT_WEB_SIZE = 640  # longest side of the full image with one object's box drawn
BOX_COLOUR = (255, 64, 160)
THUMB_MARGIN = 0.25


@dataclass
class ObjectScan:
    """A run's objects: each domain's images that have boxes, with their boxes, in the
    scan's order (all real objects, then all synthetic: rows are consecutive per domain),
    and every box skipped and why."""

    images: ObjectImages
    domains: list[str]  # per image in `images`
    image_ids: list[int]  # per image: its row in the run's images table
    categories: list[list[str]]  # per image, per box
    formats: dict[str, str]
    skipped: list[dict]

    def __len__(self) -> int:
        return self.images.n_objects

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """Object rows of each domain in the run's tables."""
        counts: dict[str, int] = {}
        for domain, boxes in zip(self.domains, self.images.boxes, strict=True):
            counts[domain] = counts.get(domain, 0) + len(boxes)
        out, start = {}, 0
        for domain in ("real", "synthetic"):
            out[domain] = np.arange(start, start + counts.get(domain, 0))
            start += counts.get(domain, 0)
        return out

    def table(self, images):
        """The objects table: one row per object, `id` = row, `image_id` = its image's
        row in `images` (the images table), box corners in the image's pixels; `thumb`
        (the object with its margin, box drawn) and `web` (the whole image, box drawn)."""
        import pandas as pd

        from lib.boxes import size_class
        from lib.store import thumb_name, web_name

        boxes = np.concatenate(self.images.boxes).astype(np.float64)
        image_ids = np.repeat(self.image_ids, [len(b) for b in self.images.boxes])
        domains = np.repeat(self.domains, [len(b) for b in self.images.boxes])
        keys = [k for ks in self.images.keys for k in ks]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        of_image = images.iloc[image_ids]
        return pd.DataFrame({
            "id": np.arange(len(boxes), dtype=np.int64),
            "image_id": image_ids.astype(np.int64),
            "domain": domains,
            "category": [c for cs in self.categories for c in cs],
            "size": [size_class(a) for a in area],
            "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            "area": area,
            "width": np.round(boxes[:, 2] - boxes[:, 0]).astype(np.int64),
            "height": np.round(boxes[:, 3] - boxes[:, 1]).astype(np.int64),
            "hash": keys,
            "image_hash": of_image["hash"].to_numpy(),
            "path": of_image["path"].to_numpy(),
            "source": of_image["source"].to_numpy(),
            "relpath": of_image["relpath"].to_numpy(),
            "thumb": [thumb_name(d, k) for d, k in zip(domains, keys, strict=True)],
            "web": [web_name(d, k) for d, k in zip(domains, keys, strict=True)],
        })  # fmt: skip


def scan_objects(sets: dict, image_rows: dict[str, np.ndarray], boxes: dict, prepare,
                 mode: str) -> ObjectScan:  # fmt: skip
    """Each domain's boxes (`boxes[domain]`: the annotations' path) on its scanned images
    (`sets`); a box the run's --crop or --resize cuts away entirely is skipped (roi and
    levels modes pool the prepared image)."""
    from lib.boxes import read_boxes

    check_mode(mode)
    missing = [d for d in sets if boxes.get(d) is None]
    if missing:
        raise GapscopeError(
            f"--{missing[0]}-boxes is missing: object runs need boxes for both domains"
        )
    items, arrays, keys, domains, image_ids, categories = [], [], [], [], [], []
    formats, skipped = {}, []
    for domain, image_set in sets.items():
        found = read_boxes(boxes[domain], image_set.records, domain)
        formats[domain] = found.format
        skipped += [{"domain": domain, "file": s.file, "source": s.source, "reason": s.reason}
                    for s in found.skipped]  # fmt: skip
        by_image: dict[int, list] = {}
        for box in found.boxes:
            by_image.setdefault(box.image, []).append(box)
        for i, record in enumerate(image_set.records):
            kept = [b for b in by_image.get(i, ())
                    if mode == "crop" or _visible(prepare, record, b, skipped, domain)]  # fmt: skip
            if not kept:
                continue
            corners = np.array([(b.x0, b.y0, b.x1, b.y1) for b in kept], np.float32)
            items.append((image_set, record))
            arrays.append(corners)
            keys.append([object_key(record.hash, c) for c in corners])
            domains.append(domain)
            image_ids.append(int(image_rows[domain][i]))
            categories.append([b.category for b in kept])
    scan = ObjectScan(ObjectImages(items, arrays, keys), domains, image_ids, categories,
                      formats, skipped)  # fmt: skip
    for domain, rows in scan.rows.items():
        if len(rows) == 0:
            n = sum(s["domain"] == domain for s in skipped)
            raise GapscopeError(
                f"no usable boxes on the {domain} images ({n} skipped; the first: "
                f"{_first_reason(skipped, domain)})"
            )
    return scan


def _visible(prepare, record, box, skipped: list, domain: str) -> bool:
    sx, sy, dx, dy = prepare.box_geometry(record.height, record.width)
    h, w = prepare.prepared_size(record.height, record.width)
    x0, y0, x1, y1 = box.x0 * sx + dx, box.y0 * sy + dy, box.x1 * sx + dx, box.y1 * sy + dy
    if x1 > 0 and y1 > 0 and x0 < w and y0 < h:
        return True
    why = f"cut away by the run's preparation ({prepare.describe()})"
    skipped.append({"domain": domain, "file": record.relpath, "source": box.source,
                    "reason": why})  # fmt: skip
    return False


def _first_reason(skipped: list, domain: str) -> str:
    first = next((s for s in skipped if s["domain"] == domain), None)
    return f"{first['file']}: {first['reason']}" if first else "no annotations matched"


def write_object_pictures(
    scan: ObjectScan, thumb: Callable, web: Callable, thumb_size: int = 160,
    web_size: int = OBJECT_WEB_SIZE,
) -> None:  # fmt: skip
    """Each object's thumbnail (its crop with the margin, box drawn) and web picture (the
    whole image, box drawn), decoding each image once."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> None:
        image_set, record = scan.images.items[i]
        rgb = image_set.load(record, AS_IS)
        domain = scan.domains[i]
        for box, key in zip(scan.images.boxes[i], scan.images.keys[i], strict=True):
            _boxed_crop(rgb, box, thumb_size).save(thumb(domain, key), optimize=False)
            _boxed_image(rgb, box, web_size).save(web(domain, key), quality=85)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(len(scan.images.items))))


def _boxed_crop(rgb: np.ndarray, box, size: int):
    from PIL import Image, ImageDraw

    left, top, n = crop_window(box, THUMB_MARGIN)
    image = Image.fromarray(crop_box(rgb, box, THUMB_MARGIN, size))
    s = size / n
    x0, y0, x1, y1 = ((float(v) - o) * s for v, o in zip(box, (left, top, left, top), strict=True))
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_COLOUR, width=2)
    return image


def _boxed_image(rgb: np.ndarray, box, size: int):
    """The object large (its crop, box drawn) beside the whole image with its box drawn:
    what the demo shows for a selected object."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb)
    s = min(1.0, size / max(image.size))
    if s < 1:
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))),
                             Image.BILINEAR)  # fmt: skip
    x0, y0, x1, y1 = (float(v) * s for v in box)
    width = max(2, round(max(image.size) / 200))
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_COLOUR, width=width)
    crop = _boxed_crop(rgb, box, max(image.height, 96))
    gap = 8
    out = Image.new("RGB", (crop.width + gap + image.width, max(crop.height, image.height)),
                    (255, 255, 255))  # fmt: skip
    out.paste(crop, (0, 0))
    out.paste(image, (crop.width + gap, 0))
    return out
