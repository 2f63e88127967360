"""A run's objects: each domain's boxes (lib.inputs.boxes) on its scanned images, the
square crops around them, and the pictures the demo shows of each (the object with its
box; the object beside its whole image)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lib.inputs.boxes import read_boxes, size_class
from lib.inputs.images import Prepare
from lib.runtime.errors import GapscopeError
from lib.store.runs import thumb_name, web_name

AS_IS = Prepare()  # boxes are in the original image's pixels: decode, nothing else


def object_key(image_hash: str, box) -> str:
    """An object's identity: its image's content and its box (the feature cache keeps
    each way of pooling under a key directory of its own)."""
    text = f"{image_hash}|" + ",".join(f"{float(v):.4f}" for v in box)
    return hashlib.sha256(text.encode()).hexdigest()


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


@dataclass
class ObjectImages:
    """The images with objects, each with its boxes (original pixels) and cache keys."""

    items: list  # (ImageSet, ImageRecord) per image
    boxes: list[np.ndarray]  # (n_i, 4) float32 per image
    keys: list[list[str]]  # cache key per object, per image

    @property
    def n_objects(self) -> int:
        return sum(len(b) for b in self.boxes)


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

        boxes = np.concatenate(self.images.boxes).astype(np.float64)
        image_ids = np.repeat(self.image_ids, [len(b) for b in self.images.boxes])
        domains = np.repeat(self.domains, [len(b) for b in self.images.boxes])
        keys = [k for ks in self.images.keys for k in ks]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        of_image = images.iloc[image_ids]
        return pd.DataFrame(
            {
                "id": np.arange(len(boxes), dtype=np.int64),
                "image_id": image_ids.astype(np.int64),
                "domain": domains,
                "category": [c for cs in self.categories for c in cs],
                "size": [size_class(a) for a in area],
                "x0": boxes[:, 0],
                "y0": boxes[:, 1],
                "x1": boxes[:, 2],
                "y1": boxes[:, 3],
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
            }
        )


def scan_objects(
    sets: dict, image_rows: dict[str, np.ndarray], boxes: dict, prepare, crop: bool = False
) -> ObjectScan:
    """Each domain's boxes (`boxes[domain]`: the annotations' path) on its scanned images
    (`sets`); a box the run's --crop or --resize cuts away entirely is skipped (roi and
    levels modes pool the prepared image)."""
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
        skipped += [
            {"domain": domain, "file": s.file, "source": s.source, "reason": s.reason}
            for s in found.skipped
        ]
        by_image: dict[int, list] = {}
        for box in found.boxes:
            by_image.setdefault(box.image, []).append(box)
        for i, record in enumerate(image_set.records):
            kept = [
                b
                for b in by_image.get(i, ())
                if crop or _visible(prepare, record, b, skipped, domain)
            ]
            if not kept:
                continue
            corners = np.array([(b.x0, b.y0, b.x1, b.y1) for b in kept], np.float32)
            items.append((image_set, record))
            arrays.append(corners)
            keys.append([object_key(record.hash, c) for c in corners])
            domains.append(domain)
            image_ids.append(int(image_rows[domain][i]))
            categories.append([b.category for b in kept])
    scan = ObjectScan(
        ObjectImages(items, arrays, keys), domains, image_ids, categories, formats, skipped
    )
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
    skipped.append({"domain": domain, "file": record.relpath, "source": box.source, "reason": why})
    return False


def _first_reason(skipped: list, domain: str) -> str:
    first = next((s for s in skipped if s["domain"] == domain), None)
    return f"{first['file']}: {first['reason']}" if first else "no annotations matched"


def write_object_pictures(
    scan: ObjectScan,
    thumb: Callable,
    web: Callable,
    thumb_size: int = 160,
    web_size: int = OBJECT_WEB_SIZE,
) -> None:
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
        image = image.resize(
            (max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BILINEAR
        )
    x0, y0, x1, y1 = (float(v) * s for v in box)
    width = max(2, round(max(image.size) / 200))
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_COLOUR, width=width)
    crop = _boxed_crop(rgb, box, max(image.height, 96))
    gap = 8
    out = Image.new(
        "RGB", (crop.width + gap + image.width, max(crop.height, image.height)), (255, 255, 255)
    )
    out.paste(crop, (0, 0))
    out.paste(image, (crop.width + gap, 0))
    return out
