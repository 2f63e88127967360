"""A detector's test set and predictions, checked before pycocotools sees them.

- `read_truth(path)`: a COCO instances JSON (images with id, file_name, width, height;
  categories; annotations with a box [x, y, w, h]), returned as the dict COCOeval takes,
  with `area` (w·h where absent) and `iscrowd` (0) filled in and segmentations dropped.
- `read_predictions(path, truth)`: a COCO results JSON (a list of {image_id,
  category_id, bbox, score}; or a dict with such a list under `annotations`), or a
  folder of YOLO txt files, one per image named as the image's file (`class cx cy w h
  confidence`, normalised to the image's size; class i is the i-th of the ground
  truth's categories in id order, as YOLO exports number them).

pycocotools asserts, or silently evaluates nonsense, on input it does not expect (a
prediction on an image absent from the ground truth, a string score, a NaN box); here
each such case is a one-line error that says which entry and what to do. Nothing read
from these files becomes a path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath, PureWindowsPath

from lib.runtime.errors import GapscopeError
from lib.store.names import shown


def _load_json(path: Path, what: str):
    try:
        text = Path(path).read_text()
        if not text.strip():
            raise GapscopeError(f"{what} {path} is empty")
        return json.loads(text)
    except FileNotFoundError:
        raise GapscopeError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise GapscopeError(f"{what} {path} is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GapscopeError(f"{what} {path} cannot be read as JSON ({exc})") from None


def _box(values, where: str) -> list[float]:
    try:
        box = [float(v) for v in values]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise GapscopeError(
            f"{where}: bbox {shown(values)} is not [x, y, width, height] with finite numbers "
            "and a width and height of at least 0"
        )
    return box


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _int(value, where: str, what: str) -> int:
    if not _finite(value) or value != int(value):
        raise GapscopeError(f"{where}: {what} {shown(value)} is not a whole number")
    return int(value)


def read_truth(path: Path) -> dict:
    """The checked ground truth (see the module's docstring)."""
    data = _load_json(path, "--gt")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise GapscopeError(
            f"--gt {path} is not a COCO instances file: it needs lists of images, "
            "annotations and categories"
        )
    images = [_image(im, f"--gt {path.name}: image {n}") for n, im in enumerate(data["images"])]
    categories = [
        _category(c, f"--gt {path.name}: category {n}") for n, c in enumerate(data["categories"])
    ]
    for kind, rows in (("image", images), ("category", categories)):
        ids = [r["id"] for r in rows]
        if len(set(ids)) != len(ids):
            raise GapscopeError(f"--gt {path.name}: two {kind}s share an id")
    if not images or not categories:
        raise GapscopeError(f"--gt {path}: no images or no categories")
    known = {im["id"] for im in images}, {c["id"] for c in categories}
    annotations = [
        _annotation(a, n, known, f"--gt {path.name}: annotation {n}")
        for n, a in enumerate(data["annotations"])
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _image(im, where: str) -> dict:
    if not isinstance(im, dict) or not isinstance(im.get("file_name"), str):
        raise GapscopeError(f"{where} needs an id and a file_name")
    return {
        "id": _int(im.get("id"), where, "id"),
        "file_name": im["file_name"],
        "width": _int(im.get("width", 0), where, "width"),
        "height": _int(im.get("height", 0), where, "height"),
    }


def _category(c, where: str) -> dict:
    if not isinstance(c, dict) or not isinstance(c.get("name"), str):
        raise GapscopeError(f"{where} needs an id and a name")
    return {"id": _int(c.get("id"), where, "id"), "name": c["name"]}


def _annotation(a, n: int, known: tuple[set, set], where: str) -> dict:
    if not isinstance(a, dict):
        raise GapscopeError(f"{where} is not an object")
    image_id = _int(a.get("image_id"), where, "image_id")
    category_id = _int(a.get("category_id"), where, "category_id")
    if image_id not in known[0]:
        raise GapscopeError(f"{where}: image_id {image_id} is not among the images")
    if category_id not in known[1]:
        raise GapscopeError(f"{where}: category_id {category_id} is not a category")
    box = _box(a.get("bbox"), where)
    area = a.get("area", box[2] * box[3])
    if not _finite(area):
        raise GapscopeError(f"{where}: area {shown(area)} is not a finite number")
    return {
        "id": n + 1,  # COCOeval reads id 0 as "no match": ids from 1, the file's kept
        "source_id": a.get("id", n),
        "image_id": image_id,
        "category_id": category_id,
        "bbox": box,
        "area": float(area),
        "iscrowd": int(bool(a.get("iscrowd", 0))),
    }


def read_predictions(path: Path, truth: dict, name: str) -> list[dict]:
    """A detector's predictions as COCO results (see the module's docstring)."""
    path = Path(path)
    where = f"--predictions {name}"
    if path.is_dir():
        return _yolo(path, truth, where)
    data = _load_json(path, f"{where}: file")
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise GapscopeError(
            f"{where}: {path.name} is not COCO results (a list of image_id, category_id, "
            "bbox, score), nor a folder of YOLO txt files"
        )
    images = {im["id"]: im for im in truth["images"]}
    categories = {c["id"] for c in truth["categories"]}
    out, strangers = [], []
    for n, d in enumerate(data):
        here = f"{where}: detection {n}"
        if not isinstance(d, dict):
            raise GapscopeError(f"{here} is not an object")
        image_id = _int(d.get("image_id"), here, "image_id")
        category_id = _int(d.get("category_id"), here, "category_id")
        score = d.get("score")
        if not _finite(score):
            raise GapscopeError(f"{here}: score {shown(score)} is not a finite number")
        if category_id not in categories:
            raise GapscopeError(
                f"{here}: category_id {category_id} is not among the ground truth's categories"
            )
        if image_id not in images:
            strangers.append(image_id)
            continue
        box = _inside(_box(d.get("bbox"), here), images[image_id], here)
        out.append(
            {"image_id": image_id, "category_id": category_id, "bbox": box, "score": float(score)}
        )
    if strangers:
        raise GapscopeError(
            f"{where}: {len(strangers)} detections are on images the ground truth does not "
            f"have (image_id {strangers[0]}, ...): evaluate against the ground truth they "
            "were made for"
        )
    return out


def _inside(box: list[float], image: dict, where: str) -> list[float]:
    """A detection's box, refused when it lies wholly outside its image (a box partly
    outside is a detector's ordinary output, left as it is)."""
    x, y, w, h = box
    width, height = image["width"], image["height"]
    if width and height and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
        raise GapscopeError(
            f"{where}: box [{x:g}, {y:g}, {w:g}, {h:g}] lies wholly outside its image "
            f"({width}×{height}): were the boxes written for another image size?"
        )
    return box


def file_part(file_name: str) -> PurePosixPath:
    """An annotation's file_name as a path, whichever separator it was written with:
    `.name` without its folders, `.stem` as YOLO names its txt file."""
    return PurePosixPath(PureWindowsPath(str(file_name)).as_posix())


def _yolo(folder: Path, truth: dict, where: str) -> list[dict]:
    by_stem: dict[str, dict] = {}
    for im in truth["images"]:
        by_stem.setdefault(file_part(im["file_name"]).stem, im)
    categories = [c["id"] for c in sorted(truth["categories"], key=lambda c: c["id"])]
    files = sorted(p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise GapscopeError(f"{where}: folder {folder} holds no .txt files")
    out = []
    for file in files:
        image = by_stem.get(file.stem)
        if image is None:
            raise GapscopeError(
                f"{where}: {shown(file.name)} names no image of the ground truth "
                "(YOLO names each file as its image)"
            )
        if not image["width"] or not image["height"]:
            raise GapscopeError(
                f"{where}: the ground truth gives no width and height for "
                f"{shown(image['file_name'])}, which YOLO's normalised boxes need"
            )
        try:
            lines = file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise GapscopeError(f"{where}: {shown(file.name)} cannot be read ({exc})") from None
        for n, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            here = f"{where}: {shown(file.name)} line {n}"
            if len(fields) != 6:
                raise GapscopeError(
                    f"{here} has {len(fields)} fields; YOLO predictions are 'class cx cy w h "
                    "confidence' (export them with confidences: save_conf=True)"
                )
            try:
                c = int(fields[0])
                cx, cy, w, h, score = (float(v) for v in fields[1:])
            except ValueError:
                raise GapscopeError(f"{here} is not numbers") from None
            if not 0 <= c < len(categories):
                raise GapscopeError(
                    f"{here}: class {c} is beyond the ground truth's {len(categories)} categories"
                )
            if not all(math.isfinite(v) for v in (cx, cy, w, h, score)) or w < 0 or h < 0:
                raise GapscopeError(f"{here}: a box or confidence is not a finite number")
            W, H = image["width"], image["height"]
            box = _inside([(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H], image, here)
            out.append(
                {"image_id": image["id"], "category_id": categories[c], "bbox": box, "score": score}
            )
    return out
