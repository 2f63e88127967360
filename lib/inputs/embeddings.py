"""Embeddings given as features: a domain's vectors computed elsewhere, instead of images.

A domain input is read as embeddings when it is

- a Parquet file: an `id`, `path` or `filename` column; an optional `category`; and either
  list-valued columns (one level each, named by the column) or numbered columns (`0..D-1`,
  or one prefix followed by numbers such as `f0..f255`), which form one level, `embedding`;
- a `.npy` array shaped (N, D) with a CSV of the same N rows in the same order beside it
  (`<stem>.csv`, else `metadata.csv`: pixplotml's `image_vectors.npy` + `metadata.csv`),
  with a `path`, `filename` or `id` column and an optional `category`; one level,
  `embedding`;
- a folder of such files, one level per file, named by the file's stem (`p2.npy`,
  `p3.npy` + `metadata.csv`, or `p2.parquet`, `p3.parquet`).

Rows whose vector holds NaN or inf at any level are dropped and reported (`skipped`).
Paths are resolved against the file's folder; when one names an existing image, its
thumbnail is made as for image folders, else the demo shows the point and its caption.

Vectors stay memory-mapped where the format allows (`.npy`); `copy_into` writes the kept
rows into the run's feature file a block at a time, so memory does not grow with N.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.inputs.images import Skipped, sample_indices
from lib.runtime.errors import GapscopeError, first_line
from lib.runtime.memmap import release
from lib.store.names import checked_name, shown

log = logging.getLogger(__name__)

ID_COLUMNS = ("id", "path", "filename")
SINGLE_LEVEL = "embedding"
CSV_NAMES = ("{stem}.csv", "metadata.csv")
BLOCK = 65_536  # rows per block when checking and copying vectors
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def is_embeddings(source: Path) -> bool:
    """Whether a domain input holds embeddings (see the module doc) rather than images."""
    source = Path(source)
    if source.is_dir():
        return any(_level_files(source))
    suffix = source.suffix.lower()
    if suffix == ".parquet":
        return True
    if suffix == ".npy" and source.is_file():
        return _npy_ndim(source) == 2
    return False


def _level_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and (p.suffix.lower() == ".parquet" or (p.suffix.lower() == ".npy" and _npy_ndim(p) == 2))
    )


def _npy_ndim(path: Path) -> int:
    try:  # memory-mapping reads the header only
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # object arrays too: never unpickled
        raise GapscopeError(f"{path}: not a readable .npy array ({first_line(exc)})") from None
    return array.ndim if isinstance(array, np.ndarray) else -1


@dataclass
class EmbeddingSet:
    """One domain's rows: ids, categories and paths, and each level's (N, D) vectors
    (`keep` selects the usable rows, in order)."""

    domain: str
    source: Path
    ids: np.ndarray  # str, as given (all rows)
    categories: np.ndarray  # str
    paths: np.ndarray  # resolved path when the file exists, else ""
    levels: dict[str, np.ndarray]  # level -> (N, D), memory-mapped when possible
    keep: np.ndarray  # int64 row indices used, sorted
    skipped: list[Skipped] = field(default_factory=list)
    skipped_total: int = 0
    sizes: np.ndarray | None = None  # (N, 2) height, width of the images decoded; 0 if none

    def __post_init__(self):
        if self.sizes is None:
            self.sizes = np.zeros((len(self.ids), 2), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.keep)

    def dims(self) -> dict[str, int]:
        return {level: int(x.shape[1]) for level, x in self.levels.items()}

    def table(self):
        """The images-table rows of the kept vectors (see lib.jobs.run.images_frame)."""
        import pandas as pd

        ids = self.ids[self.keep]
        return pd.DataFrame(
            {
                "domain": self.domain,
                "category": self.categories[self.keep],
                "path": self.paths[self.keep],
                "source": str(self.source.resolve()),
                "relpath": ids,
                "hash": [row_hash(self.domain, i) for i in ids],
                "width": self.sizes[self.keep, 1],
                "height": self.sizes[self.keep, 0],
                "padded": False,
            }
        )

    def copy_into(self, level: str, out: np.ndarray, start: int) -> None:
        """Write this domain's kept vectors of `level` into out[start:start + len(self)],
        a block at a time."""

        x = self.levels[level]
        for s in range(0, len(self.keep), BLOCK):
            rows = self.keep[s : s + BLOCK]
            out[start + s : start + s + len(rows)] = x[rows]
            release(x)
            release(out)


def row_hash(domain: str, row_id: str) -> str:
    """A given row's stand-in for an image hash (thumbnail names): its domain and id."""
    return hashlib.sha256(f"{domain}\0{row_id}".encode()).hexdigest()


def open_embeddings(
    source: Path, domain: str, sample: int | None = None, seed: int = 0
) -> EmbeddingSet:
    """Read a domain given as embeddings; every problem is a one-line GapscopeError."""
    source = Path(source)
    if not source.exists():
        raise GapscopeError(f"{domain} embeddings {source} do not exist")
    files = _level_files(source) if source.is_dir() else [source]
    if not files:
        raise GapscopeError(f"{domain} folder {source} holds no .npy or .parquet embeddings")
    levels: dict[str, np.ndarray] = {}
    rows = None  # (ids, categories, base folder) of the first file; the others must agree
    for path in files:
        found, meta = (_read_parquet if path.suffix.lower() == ".parquet" else _read_npy)(path)
        if source.is_dir():  # one level per file, named by the file
            if len(found) != 1:
                raise GapscopeError(
                    f"{path}: a folder of embeddings holds one level per file; this file "
                    f"has {len(found)} vector columns ({', '.join(found)})"
                )
            found = {path.stem: next(iter(found.values()))}
        for level in found:  # a level names its files in the run: never a path
            checked_name(level, f"{path.name}: level name")
        if len(meta[0]) == 0:
            raise GapscopeError(f"{domain} embeddings {path.name} hold no rows")
        rows = rows or meta
        if len(meta[0]) != len(rows[0]):
            raise GapscopeError(
                f"{path}: {len(meta[0])} rows, but {files[0].name} has {len(rows[0])}"
            )
        levels.update(found)
    ids, categories, base = rows
    _check_unique(ids, domain)
    paths = _existing_paths(ids, base)
    keep, skipped, total = _finite_rows(levels, ids)
    keep = keep[sample_indices(len(keep), sample, seed)]
    if len(keep) == 0:
        raise GapscopeError(f"{domain}: no usable vectors in {source} (all hold NaN or inf)")
    return EmbeddingSet(domain, source, ids, categories, paths, levels, keep, skipped, total)


def check_same_levels(sets: list[EmbeddingSet]) -> None:
    """Both domains must give the same levels with the same dimensions."""
    first, *rest = sets
    for other in rest:
        if first.dims() != other.dims():
            raise GapscopeError(
                f"the domains' embeddings differ: {first.domain} has "
                f"{_describe_dims(first)}, {other.domain} has {_describe_dims(other)}"
            )


def _describe_dims(s: EmbeddingSet) -> str:
    return ", ".join(f"{level} ({d}-d)" for level, d in s.dims().items())


# ---- formats ---------------------------------------------------------------------------


def _read_npy(path: Path) -> tuple[dict[str, np.ndarray], tuple]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise GapscopeError(f"{path}: not a readable .npy array ({first_line(exc)})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise GapscopeError(f"{path}: expected embeddings shaped (N, D), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise GapscopeError(f"{path}: expected numeric embeddings, got dtype {array.dtype}")
    meta_file = next(
        (
            path.parent / n.format(stem=path.stem)
            for n in CSV_NAMES
            if (path.parent / n.format(stem=path.stem)).is_file()
        ),
        None,
    )
    if meta_file is None:
        raise GapscopeError(
            f"{path}: needs a CSV of the images in the same row order beside it "
            f"({path.stem}.csv or metadata.csv, with a path, filename or id column)"
        )
    ids, categories = _read_csv(meta_file)
    if len(ids) != len(array):
        raise GapscopeError(
            f"{path} has {len(array)} rows but {meta_file.name} has {len(ids)}: they must "
            "list the same images in the same order"
        )
    return {SINGLE_LEVEL: array}, (ids, categories, meta_file.parent)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's BOM
        reader = csv.DictReader(fh)
        column = next((c for c in ID_COLUMNS if c in (reader.fieldnames or ())), None)
        if column is None:
            raise GapscopeError(
                f"{path}: needs a column naming each row's image ({', '.join(ID_COLUMNS)}); "
                f"found {', '.join(reader.fieldnames or ()) or 'no header'}"
            )
        ids, categories = [], []
        for row in reader:
            ids.append((row.get(column) or "").strip())
            categories.append((row.get("category") or "").strip())
    return np.array(ids, dtype=object), np.array(categories, dtype=object)


def _read_parquet(path: Path) -> tuple[dict[str, np.ndarray], tuple]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise GapscopeError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    names = table.column_names
    column = next((c for c in ID_COLUMNS if c in names), None)
    if column is None:
        raise GapscopeError(
            f"{path}: needs a column naming each row's image ({', '.join(ID_COLUMNS)}); "
            f"found {', '.join(names[:8])}{'…' if len(names) > 8 else ''}"
        )
    ids = np.array(table[column].cast(pa.string()).fill_null("").to_pylist(), dtype=object)
    categories = (
        np.array(table["category"].cast(pa.string()).fill_null("").to_pylist(), dtype=object)
        if "category" in names
        else np.full(len(ids), "", dtype=object)
    )
    rest = [n for n in names if n not in (column, "category")]
    lists = [
        n
        for n in rest
        if pa.types.is_list(table[n].type)
        or pa.types.is_fixed_size_list(table[n].type)
        or pa.types.is_large_list(table[n].type)
    ]
    if lists:
        levels = {n: _list_column(path, n, table[n]) for n in lists}
    else:
        levels = {SINGLE_LEVEL: _numbered_columns(path, table, rest)}
    return levels, (ids, categories, path.parent)


def _list_column(path: Path, name: str, column) -> np.ndarray:
    """A list-valued column as (N, D) float32; every row must have the same length."""
    import pyarrow as pa

    chunks = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise GapscopeError(f"{path}: column {name!r} has {chunk.null_count} empty rows")
        if pa.types.is_fixed_size_list(chunk.type):
            d = chunk.type.list_size
        else:
            lengths = np.diff(np.asarray(chunk.offsets))
            if len(lengths) and lengths.min() != lengths.max():
                raise GapscopeError(
                    f"{path}: column {name!r} mixes vector lengths "
                    f"({lengths.min()} to {lengths.max()}): every row needs the same dimension"
                )
            d = int(lengths[0]) if len(lengths) else 0
        values = chunk.flatten()
        if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
            raise GapscopeError(f"{path}: column {name!r} holds {values.type}, not numbers")
        chunks.append(values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d))
    out = np.concatenate(chunks) if chunks else np.empty((0, 0), np.float32)
    if out.shape[1] == 0:
        raise GapscopeError(f"{path}: column {name!r} holds empty vectors")
    return out


def _numbered_columns(path: Path, table, names: list[str]) -> np.ndarray:
    """Columns `0..D-1` or `<prefix>0..<prefix>D-1`, in numeric order, as (N, D) float32."""
    import pyarrow as pa

    matches = [_NUMBERED.match(n) for n in names]
    prefixes = {m.group(1) for m in matches if m}
    if not names or None in matches or len(prefixes) != 1:
        raise GapscopeError(
            f"{path}: no vectors found: give one list-valued column per level, or numbered "
            "columns (0, 1, … or f0, f1, …) besides id/path and category"
        )
    for n in names:
        if not (pa.types.is_floating(table[n].type) or pa.types.is_integer(table[n].type)):
            raise GapscopeError(f"{path}: column {n!r} holds {table[n].type}, not numbers")
    ordered = sorted(names, key=lambda n: int(_NUMBERED.match(n).group(2)))
    out = np.empty((table.num_rows, len(ordered)), dtype=np.float32)
    for j, n in enumerate(ordered):
        out[:, j] = table[n].to_numpy(zero_copy_only=False)  # nulls become NaN: dropped
    return out


# ---- rows ------------------------------------------------------------------------------


def _finite_rows(levels: dict[str, np.ndarray], ids: np.ndarray):
    """Rows finite at every level; the others as Skipped (the first 1,000) and a count."""

    n = len(ids)
    bad = np.zeros(n, dtype=bool)
    why = np.full(n, "", dtype=object)
    for level, x in levels.items():
        for s in range(0, n, BLOCK):
            block_bad = ~np.isfinite(x[s : s + BLOCK]).all(axis=1)
            release(x)
            fresh = block_bad & ~bad[s : s + BLOCK]
            why[s : s + BLOCK][fresh] = f"NaN or inf in level {level}"
            bad[s : s + BLOCK] |= block_bad
    dropped = np.flatnonzero(bad)
    skipped = [Skipped(f"row {i}: {ids[i]}", why[i]) for i in dropped[:1000]]
    return np.flatnonzero(~bad), skipped, len(dropped)


def _check_unique(ids: np.ndarray, domain: str) -> None:
    """An id names one image: repeated ids would share thumbnails, tags and labels."""
    named = ids[ids != ""].astype(str)
    values, counts = np.unique(named, return_counts=True)
    if len(values) and counts.max() > 1:
        worst = int(counts.argmax())
        raise GapscopeError(
            f"{domain} embeddings: ids must be unique, but {shown(values[worst])} names "
            f"{counts[worst]} rows ({int((counts > 1).sum())} ids repeat)"
        )


def _existing_paths(ids: np.ndarray, base: Path) -> np.ndarray:
    """Each id as a resolved path when it names an existing regular file inside `base`
    (relative ids against it), else "": an id naming a file elsewhere on the disk
    (`/etc/...`, `../../x`, a link out) never becomes a published thumbnail."""
    import os
    import stat

    root = os.path.realpath(base)
    out = np.full(len(ids), "", dtype=object)
    outside = 0
    for i, name in enumerate(ids):
        if not name:
            continue
        path = os.path.realpath(os.path.join(base, name))
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:  # missing, a loop, too long a name: no image
            continue
        if not regular:
            continue
        if os.path.commonpath([root, path]) != root:
            outside += 1
            continue
        out[i] = path
    if outside:
        log.warning("%d ids name files outside %s: shown without images", outside, base)
    return out


def describe_embeddings(sets: list[EmbeddingSet]) -> dict:
    """What the manifest says in place of a backbone: where the vectors came from."""
    return {
        "name": "given embeddings",
        "levels": list(sets[0].levels),
        "weights": "computed outside gapscope",
        "random_weights": False,
        "dims": sets[0].dims(),
        "files": {s.domain: str(s.source.resolve()) for s in sets},
    }
