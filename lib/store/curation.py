"""Acting on annotations: export them (CSV, JSON), write a corrected `metadata.csv` in
the input's own format, gather a tag's images into one folder per label, and apply them
to a new run (`batch run --exclude-tag`, `--labels-from-annotations`).

Everything here reads a published run's images table beside the annotations database
(lib.store.annotations), so an export names exactly the images the user saw.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

from lib.inputs import spreadsheet
from lib.inputs.images import Skipped, read_metadata
from lib.runtime.errors import GapscopeError
from lib.store.annotations import REMOVE, TAG_SEPARATOR, Annotations

COLUMNS = (
    "id",
    "domain",
    "relpath",
    "path",
    "hash",
    "category",
    "label",
    "label_changed",
    "tags",
    "removed",
)
REMOVED_MODES = ("drop", "mark")


def annotated(run, notes: Annotations, tag: str | None = None):
    """One row per annotated image of `run` (or per image with `tag`): its original
    category, its label (corrected or not), its tags (sorted, joined by TAG_SEPARATOR)
    and whether it is flagged for removal; in the run's row order."""
    import pandas as pd

    images = run.rows
    tags = {(k.hash, k.relpath): v for k, v in notes.tags().items()}
    labels = {(k.hash, k.relpath): v for k, v in notes.labels().items()}
    rows = []
    for r in images.itertuples(index=False):
        key = (r.hash, r.relpath)
        if key not in tags and key not in labels:
            continue
        its_tags = tags.get(key, set())
        if tag is not None and tag not in its_tags:
            continue
        label = labels[key][1] if key in labels else r.category
        rows.append(
            (
                int(r.id),
                r.domain,
                r.relpath,
                r.path,
                r.hash,
                r.category,
                label,
                key in labels,
                TAG_SEPARATOR.join(sorted(its_tags)),
                REMOVE in its_tags,
            )
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_csv(frame) -> str:
    """CSV text: a header, plain fields (no padding: pixplotml's export had a leading
    space in every field), quoted only where needed, a cell a spreadsheet would run as
    a formula written as text (lib.inputs.spreadsheet)."""
    out = io.StringIO()
    frame.map(spreadsheet.escape).to_csv(out, index=False, lineterminator="\n")
    return out.getvalue()


def to_json(frame, run_id: str, seq: int) -> str:
    """JSON: the run, the last audit entry the export saw, and one object per image with
    its tags as a list."""
    images = frame.to_dict(orient="records")
    for image in images:
        image["tags"] = image["tags"].split(TAG_SEPARATOR) if image["tags"] else []
    return json.dumps({"run": run_id, "audit_seq": seq, "images": images}, indent=2) + "\n"


def corrected_metadata(run, notes: Annotations, domain: str, removed: str = "drop") -> str:
    """The domain's `metadata.csv` with the users' corrections, in the input's own
    format: the same columns and rows in the same order, `category` replaced where a
    label was corrected, images flagged "remove" dropped (`removed="drop"`) or kept with
    a `removed` column of 0/1 (`"mark"`). An input without a metadata.csv (categories from
    sub-folder names) gets one in the format gapscope reads: filename, category."""
    if removed not in REMOVED_MODES:
        raise GapscopeError(f"removed images: choose {' or '.join(REMOVED_MODES)}, not {removed!r}")
    images = run.images[run.images["domain"] == domain]
    if images.empty:
        raise GapscopeError(f"run {run.id} has no {domain} images")
    if (images["path"] == "").all():
        raise GapscopeError(
            f"the {domain} images of run {run.id} came from an array or embeddings, not "
            "files: export the CSV or JSON instead"
        )
    frame = annotated(run, notes)
    by_path = {
        p: (lab, rem)
        for p, lab, rem in zip(frame["path"], frame["label"], frame["removed"], strict=True)
    }
    header, rows = read_metadata(Path(images["source"].iloc[0]))
    if not header:
        header = ["filename", "category"]
        rows = [
            {"filename": rel, "category": cat, "_path": path}
            for rel, cat, path in zip(
                images["relpath"], images["category"], images["path"], strict=True
            )
        ]
    elif "category" not in header:
        header.append("category")
    if removed == "mark":
        header.append("removed")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writerow({c: spreadsheet.escape(c) for c in header})  # column names are data too
    for row in rows:
        label, is_removed = by_path.get(row["_path"], (None, False))
        if label is not None:
            row["category"] = label
        if removed == "drop" and is_removed:
            continue
        if removed == "mark":
            row["removed"] = int(bool(is_removed))
        writer.writerow({k: spreadsheet.escape(v) for k, v in row.items()})
    return out.getvalue()


def gather(run, notes: Annotations, tag: str, out: Path, symlink: bool = False) -> dict:
    """Copy (or symlink) the original files of the images with `tag` into `out/<label>/`,
    one folder per (corrected) label ("unlabelled" for none); a name already taken gets
    the image's hash in front. Returns {"written": n, "missing": [paths no longer there]}."""
    frame = annotated(run, notes, tag=tag)
    out = Path(out)
    written, missing = 0, []

    def on_disk(name: str) -> bool:
        return (out / name).exists() or (out / name).is_symlink()

    for path, label, image_hash in zip(frame["path"], frame["label"], frame["hash"], strict=True):
        if not path or not Path(path).is_file():
            missing.append(path)
            continue
        target = out / _placed(label, Path(path).name, image_hash, on_disk)
        target.parent.mkdir(parents=True, exist_ok=True)
        if symlink:
            os.symlink(path, target)
        else:
            shutil.copy2(path, target)
        written += 1
    return {"written": written, "missing": missing}


def gather_zip(run, notes: Annotations, tag: str, out: Path) -> dict:
    """The images with `tag` as a zip of `<label>/<file>` (gather's layout), made of the
    copies the run published (web copy, else thumbnail): what a hosted demo may hand
    out, never the original files. Returns {"written": n}; no image with the tag is an
    error."""
    import zipfile

    frame = annotated(run, notes, tag=tag)
    if frame.empty:
        raise GapscopeError(f"no image of run {run.id} has the tag {tag!r}")
    taken: set[str] = set()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:  # PNG/JPEG: compressed already
        for row, label, image_hash in zip(frame["id"], frame["label"], frame["hash"], strict=True):
            copy = run.web(int(row)) or run.thumb(int(row))
            stem = _safe(Path(run.rows.at[int(row), "relpath"]).stem)
            name = _placed(label, f"{stem}{copy.suffix}", image_hash, taken.__contains__)
            taken.add(name)
            zf.write(copy, name)
    return {"written": len(taken)}


def _placed(label: str, filename: str, image_hash: str, taken) -> str:
    """`<label folder>/<filename>` in gather's layout ("unlabelled" for no label), with
    the image's hash in front of the name when `taken(name)` says it is in use."""
    folder = _safe(label or "unlabelled")
    name = f"{folder}/{filename}"
    return f"{folder}/{image_hash[:12]}_{filename}" if taken(name) else name


def _safe(name: str) -> str:
    """A label (or a file's stem) as one name in a folder or a zip: no separators (/, \\),
    no control characters (a newline in a zip entry), no leading dot; letters of any
    script kept."""
    name = re.sub(r"[\x00-\x1f\x7f/\\]", "_", name).strip().lstrip(".")
    return name or "_"


# ---- applying annotations to a new run ---------------------------------------------------


def apply(image_set, notes: Annotations, exclude_tags: tuple[str, ...], relabel: bool):
    """A domain's scanned images without those carrying any of `exclude_tags` and, with
    `relabel`, with corrected categories; and what was done ({"excluded", "relabelled"})."""

    excluded = set()
    for tag in exclude_tags:
        excluded |= notes.tagged(tag)
    labels = {(k.hash, k.relpath): v[1] for k, v in notes.labels().items()} if relabel else {}
    kept, dropped, relabelled = [], [], 0
    for record in image_set.records:
        key = (record.hash, record.relpath)
        if key in excluded:
            dropped.append(
                Skipped(record.path or record.relpath, f"tagged {' or '.join(exclude_tags)}")
            )
            continue
        if key in labels and labels[key] != record.category:
            record = replace(record, category=labels[key])
            relabelled += 1
        kept.append(record)
    if not kept:
        raise GapscopeError(
            f"every {image_set.domain} image is tagged {' or '.join(exclude_tags)}: "
            "nothing is left to measure"
        )
    image_set = replace(image_set, records=kept, skipped=[*image_set.skipped, *dropped])
    return image_set, {"excluded": len(dropped), "relabelled": relabelled}
