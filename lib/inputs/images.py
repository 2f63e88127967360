"""Image sets: discover, hash, decode, crop or resize, and make thumbnails.

A domain's images come from a folder (searched recursively, in sorted path order so rows
never depend on the file system's listing order) or from a `.npy` array shaped
(N, H, W, 3), as the original workflow saved them. Files that cannot be used are skipped
and reported, never silently dropped.
"""

from __future__ import annotations

import csv
import errno
import functools
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.inputs import spreadsheet
from lib.runtime.errors import GapscopeError, first_line

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".avif",
)
# images of formats Pillow (as installed) does not decode: listed as skipped, not ignored
UNREAD_EXTENSIONS = (
    ".heic",
    ".heif",
    ".jxl",
    ".svg",
    ".exr",
    ".dng",
    ".raw",
    ".cr2",
    ".nef",
    ".arw",
)
METADATA_FILE = "metadata.csv"
THUMB_SIZE = 160
WEB_SIZE = 1024  # longest side of the copy the demo shows large


@dataclass(frozen=True)
class Prepare:
    """How every image is brought to the size the model sees.

    crop: centre crop to crop×crop; images smaller than that are padded with black.
    resize: scale the shorter side to `resize`, then centre crop resize×resize; or
    "detector": detectron2's test-time `ResizeShortestEdge` to `test_size` (its
    INPUT.MIN_SIZE_TEST and MAX_SIZE_TEST), no crop, so sizes may differ.
    Neither: images must all have one size already.
    """

    crop: int | None = None
    resize: int | str | None = None
    test_size: tuple[int, int] = (800, 1333)  # detectron2's defaults

    def __post_init__(self):
        if isinstance(self.resize, str) and self.resize != DETECTOR:
            try:  # "--resize 224" arrives as text
                object.__setattr__(self, "resize", int(self.resize))
            except ValueError:
                raise GapscopeError(
                    f"--resize {self.resize}: give a side in pixels or `detector`"
                ) from None
        if self.crop and self.resize:
            raise GapscopeError("--crop and --resize exclude each other: pass one of them")
        for name in ("crop", "resize"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 8:
                raise GapscopeError(f"--{name} {value} is too small: use at least 8 pixels")

    @property
    def detector(self) -> bool:
        return self.resize == DETECTOR

    def describe(self) -> str:
        if self.crop:
            return f"centre crop {self.crop}×{self.crop} (smaller images padded)"
        if self.detector:
            low, high = self.test_size
            return f"detector test-time resize: shortest edge {low}, longest at most {high}"
        if self.resize:
            return f"resize shorter side to {self.resize}, centre crop {self.resize}×{self.resize}"
        return "as is"

    def pads(self, height: int, width: int) -> bool:
        """Whether an image of this size is smaller than the crop, so gets padded."""
        return bool(self.crop and min(height, width) < self.crop)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        if self.crop:
            return center_crop(rgb, self.crop)
        if self.detector:
            return resize_shortest_edge(rgb, *self.test_size)
        if self.resize:
            return resize_crop(rgb, self.resize)
        return rgb

    def prepared_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of an image of this size once prepared."""
        if self.crop:
            return self.crop, self.crop
        if self.detector:
            return shortest_edge_size(height, width, *self.test_size)
        if self.resize:
            return self.resize, self.resize
        return height, width

    def box_geometry(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(sx, sy, dx, dy): where a point (x, y) of an image of this size lands once
        prepared, x · sx + dx, y · sy + dy (boxes follow their image exactly)."""
        if self.crop:
            c = self.crop
            ph, pw = max(c - height, 0), max(c - width, 0)
            top, left = (height + ph - c) // 2, (width + pw - c) // 2
            return 1.0, 1.0, float(pw // 2 - left), float(ph // 2 - top)
        if self.detector:
            nh, nw = shortest_edge_size(height, width, *self.test_size)
            return nw / width, nh / height, 0.0, 0.0
        if self.resize:
            nh, nw = _resized_shape(height, width, self.resize)
            top, left = (nh - self.resize) // 2, (nw - self.resize) // 2
            return nw / width, nh / height, float(-left), float(-top)
        return 1.0, 1.0, 0.0, 0.0

    def apply_with_boxes(self, rgb: np.ndarray, boxes: np.ndarray):
        """The prepared image and its boxes (N, 4: x0 y0 x1 y1 in the image's pixels) in
        the prepared image's pixels, float32 (as detectron2's `apply_box`)."""
        sx, sy, dx, dy = self.box_geometry(*rgb.shape[:2])
        moved = np.asarray(boxes, np.float64).reshape(-1, 4) * [sx, sy, sx, sy] + [dx, dy, dx, dy]
        return self.apply(rgb), moved.astype(np.float32)


DETECTOR = "detector"


@dataclass
class ImageRecord:
    """One usable image of a domain; `path` is empty for rows of a `.npy` array."""

    domain: str
    source: str  # the folder or .npy file the image came from
    relpath: str  # path inside the folder, or "row <i>" for arrays
    hash: str  # sha256 of the file's bytes (or of the array row)
    width: int  # of the original image
    height: int
    category: str = ""
    path: str = ""
    row: int = -1  # index into the .npy array, -1 for files
    padded: bool = False  # smaller than the crop, so padded


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class ImageSet:
    """A domain's usable images plus everything that was skipped, with reasons."""

    domain: str
    source: Path
    records: list[ImageRecord]
    skipped: list[Skipped] = field(default_factory=list)
    array: np.ndarray | None = None  # memory-mapped .npy input
    array_scale: float = 1.0  # see array_scale()

    def __len__(self) -> int:
        return len(self.records)

    def table(self):
        """The images-table rows of this domain (see lib.jobs.run.images_frame)."""
        import pandas as pd

        columns = (
            "domain",
            "category",
            "path",
            "source",
            "relpath",
            "hash",
            "width",
            "height",
            "padded",
        )
        return pd.DataFrame(
            [{c: getattr(r, c) for c in columns} for r in self.records], columns=list(columns)
        )

    def load(self, record: ImageRecord, prepare: Prepare) -> np.ndarray:
        """The prepared (H, W, 3) uint8 image the model sees."""
        return loader_of(self).load(record, prepare)


@dataclass(frozen=True)
class ImageLoader:
    """What loading a set's images needs and nothing else (an ImageSet pickled whole
    would carry every record and a memory-mapped array's data): sent to Dask workers."""

    source: str  # the folder, or the .npy array (memory-mapped where it is loaded)
    array: bool
    array_scale: float = 1.0  # see array_scale()

    def load(self, record: ImageRecord, prepare: Prepare) -> np.ndarray:
        if not self.array:
            return prepare.apply(decode_rgb(Path(record.path)))
        rows = _mapped(self.source)
        return prepare.apply(array_row_to_uint8(rows[record.row], self.array_scale))


def loader_of(images: ImageSet | ImageLoader) -> ImageLoader:
    if isinstance(images, ImageLoader):
        return images
    source = str(Path(images.source).resolve())
    return ImageLoader(source, images.array is not None, float(images.array_scale))


def load_recorded(
    path: str, source: str, relpath: str, image_hash: str, prepare: Prepare
) -> np.ndarray:
    """The prepared image a published run recorded (its images table's path, source,
    relpath and hash), read again; a file or array row that changed since, or is gone,
    is an error: what is read must be what the run measured."""
    if path:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise GapscopeError(f"{path}: cannot read it again ({first_line(exc)})") from None
        if hashlib.sha256(data).hexdigest() != image_hash:
            raise GapscopeError(f"{path} changed since the run measured it: run `batch run` again")
        return prepare.apply(decode_rgb(Path(path)))
    array, scale = _recorded_array(source)
    rgb = array_row_to_uint8(array[int(relpath.removeprefix("row "))], scale)
    if array_row_hash(rgb) != image_hash:
        raise GapscopeError(f"{source} changed since the run measured it: run `batch run` again")
    return prepare.apply(rgb)


@functools.lru_cache(maxsize=4)
def _mapped(source: str) -> np.ndarray:
    """A .npy array of images, memory-mapped once per process."""
    try:
        return np.load(source, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise GapscopeError(f"{source}: cannot read it again ({first_line(exc)})") from None


@functools.lru_cache(maxsize=4)
def _recorded_array(source: str) -> tuple[np.ndarray, float]:
    array = _mapped(source)
    return array, array_scale(array)


# ---- decoding -------------------------------------------------------------------------


class DecodeError(GapscopeError):
    """An image file that cannot be used; `reason` says why, without the path."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def decode_rgb(path: Path) -> np.ndarray:
    """Decode any common image file to (H, W, 3) uint8 RGB, upright per its EXIF tag.

    Grayscale, palette, RGBA (composited on white), CMYK and 16-bit images are converted;
    a truncated, oversized or non-image file raises DecodeError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # the first frame of an animated GIF or a multi-page TIFF
            return to_rgb_array(_upright(img))
    except Image.DecompressionBombError as exc:
        raise DecodeError(path, f"image too large to decode safely ({first_line(exc)})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(path, f"cannot decode image ({first_line(exc)})") from None


def _upright(img):
    """The image turned as its EXIF orientation says; as stored when the EXIF block is
    unreadable (a broken tag must not cost the image)."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - any damage inside EXIF: keep the pixels
        log.info("ignoring unreadable EXIF (%s)", first_line(exc))
        return img


def to_rgb_array(img) -> np.ndarray:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max() > 255:
            top = 65535.0
        else:
            top = 1.0 if img.mode == "F" and arr.max() <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def array_scale(array: np.ndarray) -> float:
    """255 for float arrays in [0, 1], else 1: decided once for the whole array, so a dark
    image in a [0, 255] array is not mistaken for a [0, 1] one."""
    if not np.issubdtype(array.dtype, np.floating):
        return 1.0
    top = -np.inf
    rows = max(1, 2**24 // max(1, array[0].size))  # ~16 M values at a time: flat memory
    for start in range(0, len(array), rows):
        chunk = np.asarray(array[start : start + rows])
        finite = chunk[np.isfinite(chunk)]  # NaN/inf rows are skipped, not measured
        if finite.size:
            top = max(top, float(finite.max()))
    return 255.0 if top <= 1.0 else 1.0


def array_row_hash(rgb: np.ndarray) -> str:
    """An array row's content hash: its uint8 pixels and its size (a file's is its bytes')."""
    h, w = rgb.shape[:2]
    return hashlib.sha256(rgb.tobytes() + f"{h}x{w}".encode()).hexdigest()


def array_row_to_uint8(row: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A row of a user's array as uint8: multiplied by `scale`, then rounded and clipped."""
    if row.dtype == np.uint8:
        return np.ascontiguousarray(row)
    arr = np.asarray(row, dtype=np.float64) * scale
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to size×size, padding with black where the image is smaller."""
    h, w = rgb.shape[:2]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        rgb = np.pad(rgb, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = rgb.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def _resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))


def resize_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Scale the shorter side to `size` (bilinear), then centre crop size×size."""
    from PIL import Image

    h, w = rgb.shape[:2]
    nh, nw = _resized_shape(h, w, size)
    if (nh, nw) != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    return center_crop(rgb, size)


def shortest_edge_size(h: int, w: int, short: int, longest: int) -> tuple[int, int]:
    """detectron2's `ResizeShortestEdge.get_output_shape`: the shorter side to `short`
    unless the longer would then pass `longest`; rounded half up."""
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > longest:
        factor = longest / max(nh, nw)
        nh, nw = nh * factor, nw * factor
    return int(nh + 0.5), int(nw + 0.5)


def resize_shortest_edge(rgb: np.ndarray, short: int, longest: int) -> np.ndarray:
    """The detector's test-time resize, with Pillow's bilinear resize of the uint8 image
    as detectron2's `ResizeTransform` does (torch's interpolate differs by ±1 grey level
    in a fifth of the pixels)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    nh, nw = shortest_edge_size(h, w, short, longest)
    if (nh, nw) == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))


def thumbnail_png(rgb: np.ndarray, out: Path, size: int = THUMB_SIZE) -> None:
    from PIL import Image

    img = Image.fromarray(rgb)
    if max(img.size) > size:
        img.thumbnail((size, size), Image.BILINEAR)
    elif max(img.size) < size // 2:
        factor = max(1, size // max(img.size))
        img = img.resize((img.width * factor, img.height * factor), Image.NEAREST)
    img.save(out, optimize=False)


def needs_web_copy(height, width):
    """Images larger than a thumbnail get a web copy; smaller ones are shown by their
    thumbnail, which is the whole image. Element-wise for arrays."""
    return np.maximum(height, width) > THUMB_SIZE


def web_copy_jpeg(rgb: np.ndarray, out: Path, size: int = WEB_SIZE) -> None:
    """What the demo shows large instead of the original: longest side at most `size`,
    upright (decode_rgb applied the EXIF orientation), no metadata (saved from pixels)."""
    from PIL import Image

    img = Image.fromarray(rgb)
    if max(img.size) > size:
        img.thumbnail((size, size), Image.LANCZOS)
    img.save(out, format="JPEG", quality=90)


# ---- discovery ------------------------------------------------------------------------


def discover(
    folder: Path, follow_symlinks: bool = False, skipped: list[Skipped] | None = None
) -> list[Path]:
    """Image files under `folder`, recursively, sorted by relative path; hidden files and
    folders are left out. A symlink whose target lies outside `folder` (a file, or a
    folder: loops included) is not followed unless `follow_symlinks`; each one refused is
    added to `skipped` with its reason. Followed folders are entered once each, so a
    symlink loop ends."""
    root = folder.resolve()
    files: list[Path] = []
    seen = {root}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith("."):
                continue
            target = sub.resolve()
            if target in seen:  # a loop, or a folder reached twice
                _refuse(skipped, sub, "symlinked folder already scanned (a loop?)")
            elif not follow_symlinks and not target.is_relative_to(root):
                _refuse(
                    skipped,
                    sub,
                    "symlink to a folder outside the input folder "
                    "(pass --follow-symlinks to use it)",
                )
            else:
                seen.add(target)
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            path = here / name
            suffix = path.suffix.lower()
            if name.startswith(".") or suffix not in IMAGE_EXTENSIONS + UNREAD_EXTENSIONS:
                continue
            reason = _not_readable(path, root, follow_symlinks)
            if suffix in UNREAD_EXTENSIONS:
                reason = f"{suffix} images are not read (convert them to PNG or JPEG)"
            if reason:
                _refuse(skipped, path, reason)
            else:
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _not_readable(path: Path, root: Path, follow_symlinks: bool) -> str | None:
    """Why the scan must not open `path`, or None: only regular files are read (a named
    pipe would block the job forever), and a symlink only within the folder."""
    try:
        mode = path.stat().st_mode  # through links: what opening it would open
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop"
        return "broken symlink" if path.is_symlink() else f"cannot be read ({error.strerror})"
    if not stat.S_ISREG(mode):
        return "not a regular file (a named pipe, socket or device)"
    if path.is_symlink() and not follow_symlinks and not path.resolve().is_relative_to(root):
        return "symlink to a file outside the input folder (pass --follow-symlinks to use it)"
    return None


def _refuse(skipped: list[Skipped] | None, path: Path, reason: str) -> None:
    log.info("not scanned: %s: %s", path, reason)
    if skipped is not None:
        skipped.append(Skipped(str(path), reason))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def metadata_file(folder: Path) -> Path | None:
    """The metadata.csv describing a folder's images: in the folder or its parent."""
    folder = Path(folder)
    return next(
        (d / METADATA_FILE for d in (folder, folder.parent) if (d / METADATA_FILE).is_file()), None
    )


def read_metadata(folder: Path) -> tuple[list[str], list[dict]]:
    """The header and rows of a folder's metadata.csv (none: empty), each row with its
    image's resolved path under "_path" (filenames are relative to the csv's folder)."""
    meta = metadata_file(folder)
    if meta is None:
        return [], []
    with meta.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's BOM
        reader = csv.DictReader(fh)
        if reader.fieldnames:
            reader.fieldnames = [spreadsheet.unescape(name) for name in reader.fieldnames]
        if not reader.fieldnames or "filename" not in reader.fieldnames:
            raise GapscopeError(f"{meta}: needs a 'filename' column")
        rows = [_read_row(row, meta.parent) for row in reader]
    return list(reader.fieldnames), rows


def _read_row(row: dict, folder: Path) -> dict:
    """A metadata.csv row as written before a spreadsheet-safe export (lib.inputs.
    spreadsheet), with its image's resolved path under "_path"."""
    row = {k: spreadsheet.unescape(v) if isinstance(v, str) else v for k, v in row.items()}
    return dict(row, _path=str((folder / row["filename"]).resolve()))


def read_categories(folder: Path) -> dict[Path, str]:
    """Categories from a metadata.csv in the folder or its parent (columns filename,
    category). Returns {resolved path: category}."""
    _, rows = read_metadata(folder)
    return {Path(row["_path"]): (row.get("category") or "").strip() for row in rows}


METADATA_PREFIX = "meta:"  # the images table's columns copied from metadata.csv
_NOT_COPIED = {"filename", "category", "domain"}  # the table has these already


def metadata_columns(sources, paths) -> dict[str, list[str]]:
    """The other columns of the inputs' metadata.csv files (year, camera, weather, ...)
    for each image (`paths`, resolved; `sources`: each image's input folder), named
    "meta:<column>"; "" where an image's csv lacks the column or the image its row."""
    by_path: dict[str, dict] = {}
    columns: list[str] = []
    for source in dict.fromkeys(s for s in sources if s and Path(s).is_dir()):
        header, rows = read_metadata(Path(source))
        columns += [c for c in header if c not in _NOT_COPIED and c not in columns]
        by_path.update((row["_path"], row) for row in rows)
    return {
        METADATA_PREFIX + c: [(by_path.get(p) or {}).get(c) or "" for p in paths] for c in columns
    }


def sample_indices(n: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random sample of `sample` out of n (all when None)."""
    if sample is None or sample >= n:
        return np.arange(n)
    if sample < 1:
        raise GapscopeError(f"--sample {sample}: must be at least 1")
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def open_folder(
    folder: Path,
    domain: str,
    prepare: Prepare,
    thumbs: Callable[[ImageRecord], Path] | None = None,
    sample: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    web: Callable[[ImageRecord], Path] | None = None,
    web_size: int = WEB_SIZE,
    follow_symlinks: bool = False,
    mapper: Callable | None = None,
) -> ImageSet:
    """Scan a folder: hash and decode every image (so broken files are found now, not
    halfway through extraction), write thumbnails of what the model will see (to
    `thumbs(record)`, the run store's place for them) and, for images larger than a
    thumbnail, a web copy (to `web(record)`): the demo serves those, never the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise GapscopeError(f"{domain} folder {folder} does not exist")
    if not folder.is_dir():
        raise GapscopeError(f"{domain} input {folder} is neither a folder nor a .npy array")
    refused: list[Skipped] = []
    files = discover(folder, follow_symlinks, refused)
    if not files:
        raise GapscopeError(
            f"{domain} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    files = [files[i] for i in sample_indices(len(files), sample, seed)]
    categories = read_categories(folder)

    def scan(path: Path) -> tuple[ImageRecord, np.ndarray] | Skipped:
        rel = path.relative_to(folder).as_posix()
        try:
            data = path.read_bytes()
            rgb = decode_rgb(path)
        except DecodeError as exc:
            return Skipped(str(path), exc.reason)
        except OSError as exc:
            return Skipped(str(path), f"cannot read file ({first_line(exc)})")
        category = categories.get(path.resolve())
        if category is None:
            category = rel.split("/", 1)[0] if "/" in rel else ""
        h, w = rgb.shape[:2]
        return ImageRecord(
            domain=domain,
            source=str(folder.resolve()),
            relpath=rel,
            hash=hashlib.sha256(data).hexdigest(),
            width=w,
            height=h,
            category=category,
            path=str(path.resolve()),
            padded=prepare.pads(h, w),
        ), rgb

    copies = _Copies(prepare, thumbs, web, web_size)
    image_set = _finish(domain, folder, files, scan, copies, workers, mapper)
    image_set.skipped[:0] = refused
    return image_set


def open_array(
    path: Path,
    domain: str,
    prepare: Prepare,
    thumbs: Callable[[ImageRecord], Path] | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """A `.npy` array shaped (N, H, W, 3), uint8 or float in [0, 1] / [0, 255]."""
    path = Path(path)
    if not path.is_file():
        raise GapscopeError(f"{domain} array {path} does not exist")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise GapscopeError(f"{path}: not a readable .npy array ({first_line(exc)})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise GapscopeError(f"{path}: an .npz archive, not a .npy array: save one array")
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise GapscopeError(
            f"{path}: expected an array shaped (N, H, W, 3) of RGB images, got {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise GapscopeError(f"{path}: expected a numeric image array, got dtype {array.dtype}")
    rows = sample_indices(array.shape[0], sample, seed)
    h, w = array.shape[1:3]
    scale = array_scale(array)

    def scan(row: int) -> tuple[ImageRecord, np.ndarray] | Skipped:
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array[row]).all():
            return Skipped(f"{path.name} row {row}", "holds NaN or infinite values")
        rgb = array_row_to_uint8(array[row], scale)
        return ImageRecord(
            domain=domain,
            source=str(path.resolve()),
            relpath=f"row {row}",
            hash=array_row_hash(rgb),
            width=w,
            height=h,
            row=int(row),
            padded=prepare.pads(h, w),
        ), rgb

    copies = _Copies(prepare, thumbs)
    image_set = _finish(domain, path, [int(r) for r in rows], scan, copies, None)
    image_set.array = array
    image_set.array_scale = scale
    return image_set


@dataclass
class _Copies:
    """What the scan writes of each decoded image: its thumbnail (of what the model
    sees) and, when it is larger than that, a web copy (of the original)."""

    prepare: Prepare
    thumbs: Callable[[ImageRecord], Path] | None = None
    web: Callable[[ImageRecord], Path] | None = None
    web_size: int = WEB_SIZE

    def write(self, record: ImageRecord, rgb: np.ndarray) -> None:
        if self.thumbs is not None:
            thumbnail_png(self.prepare.apply(rgb), self.thumbs(record))
        if self.web is not None and needs_web_copy(*rgb.shape[:2]):
            web_copy_jpeg(rgb, self.web(record), self.web_size)


def _finish(domain, source, items, scan, copies: _Copies, workers, mapper=None) -> ImageSet:
    """Run `scan` over items in a thread pool (decoding releases the GIL), or through
    `mapper(fn, items)` (an ordered map: lib.runtime.dask's runs it on Dask workers), keep order,
    and write thumbnails and web copies; decoded pixels are not kept, so memory stays
    flat."""
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []

    def work(item) -> ImageRecord | Skipped:
        result = scan(item)
        if isinstance(result, Skipped):
            return result
        record, rgb = result
        copies.write(record, rgb)
        return record

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for result in (mapper or pool.map)(work, items):
            if isinstance(result, Skipped):
                log.info("skipped %s: %s", result.path, result.reason)
                skipped.append(result)
            else:
                records.append(result)
    if not records:
        raise GapscopeError(
            f"{domain}: none of the {len(items)} images in {source} could be used "
            f"(first problem: {skipped[0].path}: {skipped[0].reason})"
        )
    return ImageSet(domain=domain, source=Path(source), records=records, skipped=skipped)


def open_images(source: Path, domain: str, prepare: Prepare, **kwargs) -> ImageSet:
    """A folder or a `.npy` array, whichever `source` is."""
    source = Path(source)
    if source.suffix.lower() == ".npy":
        # an array's rows are scanned here even on a cluster: no decoding to spread
        for folder_only in ("workers", "web", "web_size", "follow_symlinks", "mapper"):
            kwargs.pop(folder_only, None)
        return open_array(source, domain, prepare, **kwargs)
    return open_folder(source, domain, prepare, **kwargs)


def check_common_size(sets: list[ImageSet], prepare: Prepare) -> tuple[int, int]:
    """The (H, W) every prepared image will have (None for the detector's resize, which
    keeps each image's aspect), or an error saying what to pass."""
    if prepare.detector:
        return None
    if prepare.crop:
        return prepare.crop, prepare.crop
    if prepare.resize:
        return prepare.resize, prepare.resize
    sizes = {(r.height, r.width) for s in sets for r in s.records}
    if len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise GapscopeError(
            f"images have different sizes (e.g. {a[1]}×{a[0]} and {b[1]}×{b[0]}): "
            "pass --crop N or --resize N"
        )
    return sizes.pop()
