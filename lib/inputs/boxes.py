"""Object boxes from the three annotation formats people have: COCO instances JSON, YOLO
txt (with a class names file) and Pascal VOC XML.

`read_boxes(path, records)` matches the annotations to a domain's scanned images and
returns every usable box in the image's own pixels (x0, y0, x1, y1, floats, half-open
like COCO's x + w), its class name, and what it skipped and why: a box partly outside the
image is clipped to it; one wholly outside, degenerate (no width or height once clipped),
not finite, of an unknown class, a crowd region, or on an image that is not in the folder
(or whose annotated size disagrees with the file) is skipped and listed. Nothing here
decodes an image: the sizes come from the scan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lib.runtime.errors import GapscopeError

# COCO's size strata (by area in the original image's pixels): small < 32², large ≥ 96²
SMALL, LARGE = 32**2, 96**2
SIZES = ("small", "medium", "large")
YOLO_NAMES = ("classes.txt", "obj.names", "classes.names")


@dataclass(frozen=True)
class Box:
    """One object on one image of a domain (`image` indexes the domain's records)."""

    image: int
    category: str
    x0: float
    y0: float
    x1: float
    y1: float
    source: str  # where it came from in the annotations, for messages: "annotation 17"

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    @property
    def size(self) -> str:
        return size_class(self.area)


@dataclass
class SkippedBox:
    file: str  # the image (or annotation file) it belongs to
    source: str
    reason: str


@dataclass
class BoxSet:
    """A domain's usable boxes, in annotation order, and what was skipped."""

    format: str
    boxes: list[Box]
    skipped: list[SkippedBox] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return sorted({b.category for b in self.boxes})


def size_class(area: float) -> str:
    return "small" if area < SMALL else "large" if area >= LARGE else "medium"


def read_boxes(path: Path, records: Sequence, domain: str = "") -> BoxSet:
    """The boxes in `path` (a COCO .json, or a folder of YOLO .txt or VOC .xml files) on
    the scanned `records` (anything with relpath, width and height)."""
    path = Path(path)
    label = f"--{domain}-boxes" if domain else "boxes"
    if path.is_file() and path.suffix.lower() == ".json":
        return _coco(path, _Images(records), label)
    if path.is_dir():
        kinds = {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
        if ".xml" in kinds:
            return _voc(path, _Images(records))
        if ".txt" in kinds:
            return _yolo(path, _Images(records), label)
        raise GapscopeError(f"{label} {path} holds no .txt (YOLO) or .xml (Pascal VOC) files")
    if not path.exists():
        raise GapscopeError(f"{label} {path} does not exist")
    raise GapscopeError(
        f"{label} {path}: give a COCO instances .json, or a folder of YOLO .txt or VOC .xml files"
    )


class _Images:
    """The scanned images by relative path, and by file name where that is unique (COCO
    and VOC files often name only the file)."""

    def __init__(self, records: Sequence):
        self.records = records
        self.by_path = {Path(r.relpath).as_posix(): i for i, r in enumerate(records)}
        names: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            names.setdefault(Path(r.relpath).name, []).append(i)
        self.by_name = {n: ids[0] for n, ids in names.items() if len(ids) == 1}
        self.by_stem = {}
        for i, r in enumerate(records):
            self.by_stem.setdefault(Path(r.relpath).with_suffix("").as_posix(), i)

    def find(self, name: str) -> int | None:
        name = Path(name).as_posix().lstrip("./")
        if name in self.by_path:
            return self.by_path[name]
        return self.by_name.get(Path(name).name)


class _Boxes:
    """Collects boxes, validating each against its image's size."""

    def __init__(self, images: _Images, fmt: str):
        self.images, self.out = images, BoxSet(fmt, [])

    def skip(self, file: str, source: str, reason: str) -> None:
        self.out.skipped.append(SkippedBox(file, source, reason))

    def add(self, image: int, category: str, x0, y0, x1, y1, source: str) -> None:
        record = self.images.records[image]
        file = record.relpath
        values = (x0, y0, x1, y1)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return self.skip(file, source, "coordinates are not finite numbers")
        if x1 <= x0 or y1 <= y0:
            return self.skip(file, source, f"degenerate box {_fmt(values)}")
        w, h = record.width, record.height
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            return self.skip(file, source, f"box {_fmt(values)} lies outside the {w}×{h} image")
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
        if x1 - x0 < 1 or y1 - y0 < 1:
            return self.skip(file, source, f"box {_fmt(values)} is under a pixel once clipped")
        self.out.boxes.append(
            Box(image, category, float(x0), float(y0), float(x1), float(y1), source)
        )


def _fmt(values) -> str:
    shown = (f"{v:g}" if isinstance(v, int | float) else repr(v) for v in values)
    return "(" + ", ".join(shown) + ")"


def _coco(path: Path, images: _Images, label: str) -> BoxSet:
    try:
        data = json.loads(path.read_text())
        files = {int(im["id"]): im for im in data["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        annotations = list(data["annotations"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GapscopeError(f"{label} {path} cannot be read as JSON ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise GapscopeError(
            f"{label} {path} is not a COCO instances file: it needs images (id, file_name), "
            f"categories (id, name) and annotations ({type(exc).__name__}: {exc})"
        ) from None
    boxes = _Boxes(images, "coco")
    found: dict[int, int | None] = {}
    for image_id, im in files.items():
        i = images.find(str(im.get("file_name", "")))
        if i is not None and im.get("width") and im.get("height"):
            record = images.records[i]
            if (int(im["width"]), int(im["height"])) != (record.width, record.height):
                boxes.skip(
                    record.relpath,
                    f"image {image_id}",
                    f"annotated as {im['width']}×{im['height']} but the file is "
                    f"{record.width}×{record.height}: its boxes are skipped",
                )
                i = None
        found[image_id] = i
    for n, ann in enumerate(annotations):
        source = f"annotation {ann.get('id', n)}" if isinstance(ann, dict) else f"annotation {n}"
        try:
            image_id, bbox = int(ann["image_id"]), ann["bbox"]
            x, y, w, h = (float(v) for v in bbox)
            category = categories.get(int(ann["category_id"]))
        except (KeyError, TypeError, ValueError):
            boxes.skip(path.name, source, "needs image_id, category_id and bbox [x, y, w, h]")
            continue
        i = found.get(image_id)
        if i is None:
            file = files.get(image_id, {}).get("file_name", f"image {image_id}")
            boxes.skip(str(file), source, "its image is not among the scanned images")
        elif category is None:
            why = f"category {ann['category_id']} is not in the file's categories"
            boxes.skip(images.records[i].relpath, source, why)
        elif ann.get("iscrowd"):
            boxes.skip(images.records[i].relpath, source, "a crowd region, not one object")
        else:
            boxes.add(i, category, x, y, x + w, y + h, source)
    return boxes.out


def _yolo(path: Path, images: _Images, label: str) -> BoxSet:
    names_file = next((path / n for n in YOLO_NAMES if (path / n).is_file()), None)
    if names_file is None:
        raise GapscopeError(
            f"{label} {path} looks like YOLO labels but has no class names file: put one "
            f"name per line in {path / YOLO_NAMES[0]}"
        )
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    boxes = _Boxes(images, "yolo")
    for txt in sorted(path.rglob("*.txt")):
        if txt == names_file:
            continue
        rel = txt.relative_to(path).with_suffix("").as_posix()
        i = images.by_stem.get(rel)
        if i is None:
            boxes.skip(txt.relative_to(path).as_posix(), "file", "no scanned image has this name")
            continue
        record = images.records[i]
        w, h = record.width, record.height
        for n, line in enumerate(txt.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                cls = int(parts[0])
                cx, cy, bw, bh = (float(v) for v in parts[1:5])
                if len(parts) < 5:
                    raise ValueError
            except (ValueError, IndexError):
                boxes.skip(record.relpath, f"line {n}", "needs: class cx cy w h")
                continue
            if not 0 <= cls < len(names):
                boxes.skip(
                    record.relpath, f"line {n}", f"class {cls} has no name in {names_file.name}"
                )
                continue
            boxes.add(
                i,
                names[cls],
                (cx - bw / 2) * w,
                (cy - bh / 2) * h,
                (cx + bw / 2) * w,
                (cy + bh / 2) * h,
                f"line {n}",
            )
    return boxes.out


def _voc(path: Path, images: _Images) -> BoxSet:
    import xml.etree.ElementTree as ET

    boxes = _Boxes(images, "voc")
    for xml in sorted(path.rglob("*.xml")):
        rel = xml.relative_to(path).as_posix()
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            boxes.skip(rel, "file", f"not readable XML ({exc})")
            continue
        name = root.findtext("filename") or ""
        i = images.find(name) if name else None
        if i is None:
            i = images.by_stem.get(xml.relative_to(path).with_suffix("").as_posix())
        if i is None:
            boxes.skip(name or rel, "file", "its image is not among the scanned images")
            continue
        record = images.records[i]
        size = root.find("size")
        if size is not None and size.findtext("width") and size.findtext("height"):
            try:
                aw, ah = int(float(size.findtext("width"))), int(float(size.findtext("height")))
            except ValueError:
                aw, ah = record.width, record.height
            if (aw, ah) != (record.width, record.height):
                boxes.skip(
                    record.relpath,
                    rel,
                    f"annotated as {aw}×{ah} but the file is "
                    f"{record.width}×{record.height}: its boxes are skipped",
                )
                continue
        for n, obj in enumerate(root.iter("object"), 1):
            source = f"{rel} object {n}"
            category = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (
                    float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")
                )
            except (AttributeError, TypeError, ValueError):
                boxes.skip(record.relpath, source, "needs name and bndbox xmin ymin xmax ymax")
                continue
            if not category:
                boxes.skip(record.relpath, source, "has no class name")
                continue
            # VOC counts pixels from 1 and includes xmax: detectron2's loader subtracts 1
            # from xmin and ymin only, giving COCO's half-open box
            boxes.add(i, category, xmin - 1, ymin - 1, xmax, ymax, source)
    return boxes.out
