"""The scan stages: every image found, hashed, checked and thumbnailed (or the given
embeddings read), the users' annotations applied, and the objects on the images."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from lib.features.objects import check_mode
from lib.inputs.embeddings import (
    EmbeddingSet,
    check_same_levels,
    is_embeddings,
    open_embeddings,
    row_hash,
)
from lib.inputs.images import (
    DETECTOR,
    DecodeError,
    ImageRecord,
    ImageSet,
    Prepare,
    check_common_size,
    decode_rgb,
    metadata_columns,
    needs_web_copy,
    open_images,
    thumbnail_png,
    web_copy_jpeg,
)
from lib.inputs.objects import ObjectScan, scan_objects, write_object_pictures
from lib.jobs.run.config import InputParams, ModelParams, ObjectParams
from lib.jobs.run.context import DOMAINS, Context
from lib.runtime.errors import GapscopeError, first_line
from lib.store.annotations import Annotations
from lib.store.curation import apply
from lib.store.runs import RunWriter, thumb_name, web_name

log = logging.getLogger(__name__)


@dataclass
class Scanned:
    """The scan stage's output: each domain's images (or given embeddings), in row order."""

    sets: dict[str, ImageSet | EmbeddingSet]
    size: tuple[int, int] | None  # what every prepared image measures; None for embeddings
    prepare: Prepare | None  # how the images are prepared (None for embeddings)
    annotations: dict | None = None  # what applying the users' annotations did

    @property
    def embeddings(self) -> bool:
        return isinstance(next(iter(self.sets.values())), EmbeddingSet)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets.values())

    @cached_property  # read by the extraction stage: built once
    def items(self) -> list[tuple[ImageSet, ImageRecord]]:
        return [(s, r) for s in self.sets.values() for r in s.records]

    @cached_property
    def rows(self) -> dict[str, np.ndarray]:
        """Row indices of each domain in the run's tables."""
        out, start = {}, 0
        for domain, image_set in self.sets.items():
            out[domain] = np.arange(start, start + len(image_set))
            start += len(image_set)
        return out

    def table(self):
        """The run's images table: one row per image, `id` = row index."""
        import pandas as pd

        frame = pd.concat([s.table() for s in self.sets.values()], ignore_index=True)
        frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
        has_thumb = frame["path"] != "" if self.embeddings else np.ones(len(frame), bool)
        has_web = (frame["path"] != "") & needs_web_copy(frame["height"], frame["width"])
        frame["thumb"] = [
            thumb_name(d, h) if t else ""
            for d, h, t in zip(frame["domain"], frame["hash"], has_thumb, strict=True)
        ]
        frame["web"] = [
            web_name(d, h) if w else ""
            for d, h, w in zip(frame["domain"], frame["hash"], has_web, strict=True)
        ]
        if not self.embeddings:  # the atlas colours by any of them
            for column, values in metadata_columns(frame["source"], frame["path"]).items():
                frame[column] = values
        return frame

    def record(self) -> dict:
        """What the manifest says of the inputs."""
        sets = self.sets.values()
        return {
            "prepare": "embeddings given as features"
            if self.embeddings
            else self.prepare.describe(),
            "image_size": list(self.size) if self.size else None,
            "inputs": [_input_summary(s) for s in sets],
            "skipped": [
                {"domain": s.domain, "path": sk.path, "reason": sk.reason}
                for s in sets
                for sk in s.skipped
            ],
            "padded": 0 if self.embeddings else sum(r.padded for _, r in self.items),
            "test_size": list(self.prepare.test_size) if self.prepare.detector else None,
            "annotations": self.annotations,
        }


def preparation(inputs: InputParams, model: ModelParams) -> Prepare:
    """The run's image preparation; a detectron2 config gives the detector's test size."""
    test_size = Prepare.test_size
    if model.detectron2_config and not inputs.crop and inputs.resize in (None, DETECTOR):
        from lib.features.backbones.detectron2 import load_config
        from lib.features.backbones.detectron2.config import Arch

        path = Path(model.detectron2_config)
        test_size = Arch(load_config(path), path).test_size
    return Prepare(crop=inputs.crop, resize=inputs.resize, test_size=test_size)


def scan(
    params: InputParams, prepare: Prepare, fallback: Prepare | None, projectors: list, ctx: Context
) -> Scanned:
    """Find, hash and check every image (thumbnails written on the way; through the
    executor's scan map: on Dask workers there), or read the given embeddings; apply the
    users' annotations when asked; check there are enough images for every projection.
    Images of mixed sizes are prepared by `fallback` when there is one (a detector's
    test-time resize), else they are an error."""
    with ctx.stages("scan", f"{params.real} and {params.synthetic}") as stage:
        kinds = {d: is_embeddings(getattr(params, d)) for d in DOMAINS}
        if len(set(kinds.values())) > 1:
            given = next(d for d, k in kinds.items() if k)
            raise GapscopeError(
                f"--{given} gives embeddings but the other domain gives images: give both "
                "domains the same way"
            )
        if kinds["real"]:
            scanned = _scan_embeddings(params, prepare, ctx.writer)
        else:
            scanned = _scan_images(params, prepare, fallback, ctx)
        if params.exclude_tags or params.labels_from_annotations:
            scanned = _annotated(scanned, params, ctx.store.root)
        for projector in projectors:
            for domain, image_set in scanned.sets.items():
                projector.check(len(image_set), len(scanned), domain)
        stage.summary = ", ".join(f"{len(s)} {d}" for d, s in scanned.sets.items())
    return scanned


def _scan_images(
    params: InputParams, prepare: Prepare, fallback: Prepare | None, ctx: Context
) -> Scanned:
    writer = ctx.writer

    def thumb(record: ImageRecord):
        return writer.thumb(record.domain, record.hash)

    def web(record: ImageRecord):
        return writer.web(record.domain, record.hash)

    sets = {
        domain: open_images(
            getattr(params, domain),
            domain,
            prepare,
            thumbs=thumb,
            web=web,
            web_size=params.web_size,
            sample=params.sample,
            seed=params.seed,
            follow_symlinks=params.follow_symlinks,
            mapper=ctx.executor.scan_map,
        )
        for domain in DOMAINS
    }
    try:
        return Scanned(sets, check_common_size(list(sets.values()), prepare), prepare)
    except GapscopeError as exc:
        if fallback is None:
            raise
        log.info("%s: prepared as %s", first_line(exc), fallback.describe())
        return Scanned(sets, None, fallback)


def mixed_sizes(prepare: Prepare, model: ModelParams, boxes: ObjectParams) -> Prepare | None:
    """How images of mixed sizes are prepared: a detectron2 model's own test-time resize;
    objects' images as they are (each pooled from its part of a padded batch); else None
    (an error)."""
    if model.detectron2_config:
        return replace(prepare, resize=DETECTOR)
    return prepare if boxes.given else None


def _annotated(scanned: Scanned, params: InputParams, results: Path) -> Scanned:
    """The scan without the images tagged `params.exclude_tags`, with corrected labels
    when `params.labels_from_annotations`; records what was applied."""
    if scanned.embeddings:
        raise GapscopeError(
            "--exclude-tag and --labels-from-annotations apply to images (folders or "
            "arrays), not to given embeddings: filter the embeddings file instead"
        )
    notes = Annotations.of(results)
    sets, applied = {}, {}
    for domain, image_set in scanned.sets.items():
        sets[domain], applied[domain] = apply(
            image_set, notes, params.exclude_tags, params.labels_from_annotations
        )
    record = {
        "database": str(notes.path.resolve()),
        "audit_seq": notes.last_seq(),
        "exclude_tags": list(params.exclude_tags),
        "labels_from_annotations": params.labels_from_annotations,
        **applied,
    }
    return Scanned(sets, scanned.size, scanned.prepare, record)


def _scan_embeddings(params: InputParams, prepare: Prepare, writer: RunWriter) -> Scanned:
    """Both domains' embeddings; thumbnails of the rows whose path names an image (a row
    whose image cannot be decoded keeps its vector and loses its path)."""
    sets = {
        d: open_embeddings(getattr(params, d), d, sample=params.sample, seed=params.seed)
        for d in DOMAINS
    }
    check_same_levels(list(sets.values()))

    def thumb(s: EmbeddingSet, i: int) -> None:
        try:
            rgb = decode_rgb(Path(s.paths[i]))
            image_hash = row_hash(s.domain, s.ids[i])
            thumbnail_png(rgb, writer.thumb(s.domain, image_hash))
            if needs_web_copy(*rgb.shape[:2]):
                web_copy_jpeg(rgb, writer.web(s.domain, image_hash), params.web_size)
            s.sizes[i] = rgb.shape[:2]
        except (DecodeError, OSError) as exc:
            log.info("no thumbnail for %s: %s", s.paths[i], exc)
            s.paths[i] = ""

    with ThreadPoolExecutor() as pool:
        for s in sets.values():
            list(pool.map(lambda i, s=s: thumb(s, i), [i for i in s.keep if s.paths[i]]))
    return Scanned(sets, None, prepare)


def scan_boxes(
    params: ObjectParams, scanned: Scanned, projectors: list, ctx: Context
) -> ObjectScan | None:
    """The run's objects (lib.inputs.objects), their thumbnails and pictures written,
    checked to be enough for every projection; None when no boxes are given."""
    if not params.given:
        return None
    with ctx.stages("objects", f"{params.real_boxes} and {params.synthetic_boxes}") as stage:
        if scanned.embeddings:
            raise GapscopeError("--real-boxes and --synthetic-boxes need images, not embeddings")
        boxes = {"real": params.real_boxes, "synthetic": params.synthetic_boxes}
        crop = check_mode(params.objects) == "crop"  # boxes cut away by --crop still crop
        objects = scan_objects(scanned.sets, scanned.rows, boxes, scanned.prepare, crop)
        for projector in projectors:
            for domain, rows in objects.rows.items():
                projector.check(len(rows), len(objects), domain)
        write_object_pictures(objects, ctx.writer.thumb, ctx.writer.web)
        stage.summary = ", ".join(f"{len(r)} {d}" for d, r in objects.rows.items())
    return objects


def _input_summary(image_set: ImageSet | EmbeddingSet) -> dict:
    if isinstance(image_set, EmbeddingSet):
        kind, skipped = "embeddings", image_set.skipped_total
    else:
        kind = "array" if image_set.array is not None else "folder"
        skipped = len(image_set.skipped)
    return {
        "domain": image_set.domain,
        "kind": kind,
        "source": str(image_set.source.resolve()),
        "used": len(image_set),
        "skipped": skipped,
    }
