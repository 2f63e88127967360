"""The model and extraction stages: every row's vector per level, into the run's feature
files, from the model (through the feature cache) or as the embeddings gave them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lib.features.backbones import create_backbone
from lib.features.cache import FeatureCache, cache_key
from lib.features.engine import extract
from lib.features.objects import Objects, RoiPooler, resolve_mode
from lib.features.sources import Images
from lib.inputs.embeddings import describe_embeddings
from lib.inputs.objects import ObjectScan
from lib.jobs.run.config import ExtractParams, ModelParams, ObjectParams
from lib.jobs.run.context import DOMAINS, Context
from lib.jobs.run.scan import Scanned
from lib.runtime.errors import GapscopeError
from lib.store.runs import RunWriter

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Each level's (N, D) float32 vectors (memory-mapped from the run's files), and what
    made them."""

    vectors: dict[str, np.ndarray]
    cached: int  # rows whose vectors came from the feature cache
    source: dict  # the backbone's description, or the given embeddings'

    def record(self) -> dict:
        return {
            "backbone": self.source,
            "levels": list(self.vectors),
            "feature_dims": {level: int(v.shape[1]) for level, v in self.vectors.items()},
            "cached_images": self.cached,
        }


def features(
    model: ModelParams,
    extraction: ExtractParams,
    boxes: ObjectParams,
    scanned: Scanned,
    objects: ObjectScan | None,
    ctx: Context,
) -> Features:
    """The run's vectors: the embeddings given, or the model's for every image (or
    object) through the executor."""
    if scanned.embeddings:
        with ctx.stages("features", f"{len(scanned)} vectors given"):
            vectors = given_features(scanned, ctx.writer)
        return Features(vectors, 0, describe_embeddings(list(scanned.sets.values())))
    with ctx.stages("model"):
        backbone = load_backbone(model)
    what = f"{len(objects)} objects ({boxes.objects})" if objects else f"{len(scanned)} images"
    with ctx.stages("extract", f"{what}{ctx.executor.where()}") as stage:
        if objects is None:
            source = Images(
                scanned.items,
                scanned.prepare,
                backbone.levels,
                extraction.pooling,
                extraction.batch_size,
            )
        else:
            mode = resolve_mode(boxes.objects, backbone.levels)
            source = Objects(
                objects.images,
                scanned.prepare,
                mode,
                RoiPooler.for_backbone(backbone),
                backbone.levels,
                extraction.pooling,
                boxes.object_margin,
                boxes.object_size,
                extraction.batch_size,
            )
        vectors, cached = extract_into(source, backbone, extraction, ctx)
        stage.summary = f"{what}, {cached} from the feature cache"
    return Features(vectors, cached, backbone.describe())


def extract_into(source, backbone, extraction: ExtractParams, ctx: Context):
    """Every row's vector per level into the run's feature files (returned memory-mapped),
    and how many came from the feature cache, which keeps them by content and by how they
    were made."""
    precision = ctx.executor.backend.precision
    key = cache_key(backbone, source.describe(), source.prepare, precision)
    cache = FeatureCache(ctx.store.cache_dir, key, extraction.shard)
    done = extract(source, backbone, ctx.executor, cache, ctx.writer.features_array)
    for array in done.vectors.values():
        array.flush()
    return {lv: ctx.writer.features_read(lv) for lv in done.vectors}, done.cached


def load_backbone(params: ModelParams):
    backbone = create_backbone(
        params.backbone, params.checkpoint, params.random_weights, params.detectron2_config
    )
    if not backbone.levels:
        raise GapscopeError(
            f"{backbone.name} has no feature levels to compare (it is for caricatures): "
            "choose a backbone from `python -m batch backbones`"
        )
    if backbone.random_weights:
        log.warning(
            "RANDOM WEIGHTS: %s features are untrained; neighbours mean little", backbone.name
        )
    return backbone


def given_features(scanned: Scanned, writer: RunWriter) -> dict[str, np.ndarray]:
    """The given embeddings, both domains' kept rows, into the run's feature files (a
    block at a time); returned memory-mapped."""
    sets = list(scanned.sets.values())
    out = {}
    for level, d in sets[0].dims().items():
        array = writer.features_array(level, (len(scanned), d))
        start = 0
        for s in sets:
            s.copy_into(level, array, start)
            start += len(s)
        array.flush()
        out[level] = writer.features_read(level)
    return out


def objects_record(params: ObjectParams, objects: ObjectScan, source: dict) -> dict:
    """What the manifest says of an object run's objects and how they were pooled."""
    pooler = RoiPooler.of(source, source["levels"])
    mode = resolve_mode(params.objects, source["levels"])
    crop = {"margin": params.object_margin, "size": params.object_size}
    return {
        "mode": mode,
        "pooler": pooler.describe() if mode != "crop" else None,
        "crop": crop if mode == "crop" else None,
        "formats": objects.formats,
        "images": {d: sum(dd == d for dd in objects.domains) for d in DOMAINS},
        "skipped": objects.skipped,
    }
