"""One batch run, as stages: scan → extract → project → neighbours → gap → plots → publish.

`run(config, store)` is what `python -m batch run` calls. Each stage is a function with
typed inputs and outputs; `run` chains them inside `store.writing()`, which publishes the
run when every stage succeeded and removes it on any error, so the previously published
run stays served.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from lib.atlas import AtlasProjector, middle_level
from lib.cluster import BlockMap, ScanMap, connect, describe, worker_precision
from lib.embeddings import EmbeddingSet, describe_embeddings, is_embeddings
from lib.errors import GapscopeError, first_line
from lib.gap import GapParams
from lib.images import (
    DETECTOR,
    WEB_SIZE,
    ImageRecord,
    ImageSet,
    Prepare,
    check_common_size,
    metadata_columns,
    needs_web_copy,
    open_images,
    sample_indices,
)
from lib.memmap import map_blocks
from lib.params import REQUIRED, check_minimums, param
from lib.progress import Progress, Silent, Stages
from lib.reduce import TSNEParams, UMAPParams, check_enough_points
from lib.store import Run, RunStore, RunWriter, thumb_name, web_name

log = logging.getLogger(__name__)

DOMAINS = ("real", "synthetic")


@dataclass
class RunConfig:
    """Everything a run depends on; written to the manifest as given. Fields made with
    `param` are also `batch run`'s options (batch.options), with these defaults."""

    real: Path = param(
        REQUIRED,
        "Folder of real images, a .npy (N,H,W,3), or embeddings: a .parquet, a .npy (N,D) "
        "with a CSV of paths, or a folder of them (see README, Large datasets).",
    )
    synthetic: Path = param(REQUIRED, "Synthetic images or embeddings, as for --real.")
    real_boxes: Path | None = param(
        None,
        "Object boxes on the real images: a COCO instances .json, or a folder of YOLO .txt "
        "(with classes.txt) or Pascal VOC .xml files. With --synthetic-boxes the run's rows "
        "are objects (README, Objects).",
    )
    synthetic_boxes: Path | None = param(None, "Object boxes on the synthetic images, as above.")
    objects: str = param(
        "auto",
        "How each box becomes a vector: roi (ROIAlign on the FPN level the detector's ROI "
        "heads assign it), levels (ROIAlign on every level), crop (the box and its margin "
        "cropped and run as an image); auto: roi for an FPN, else levels.",
    )
    object_margin: float = param(
        0.25, "--objects crop: context around the box, a share of its longer side.", minimum=0
    )
    object_size: int = param(224, "--objects crop: side of the square crop the model sees.",
                             minimum=8)  # fmt: skip
    backbone: str | None = param(
        None,
        "ARCH[:CHECKPOINT][@CONFIG] (see `backbones`). Default: resnet50-fpn with "
        "--checkpoint, detectron2 with --detectron2-config, else efficientnet-lite0 with its "
        "packaged ImageNet weights.",
    )
    checkpoint: Path | None = param(None, "State dict for the backbone (.pth, weights_only).")
    detectron2_config: Path | None = param(
        None,
        "A detectron2 config .yaml (with _BASE_ files beside it): that detector's FPN "
        "levels p2..p6, with --checkpoint model_final.pth or a model-zoo .pkl.",
    )
    random_weights: bool = param(
        False, "Use untrained weights on purpose (said loudly everywhere)."
    )
    pooling: str = param("gap", "gap | channel-sum | channel-mean")
    crop: int | None = param(None, "Centre crop N×N, padding smaller images.")
    resize: str | None = param(
        None,
        "N: shorter side to N, then centre crop N×N. detector: the detector's test-time "
        "resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST; the default for detectron2 models "
        "when image sizes differ), each image keeping its aspect.",
    )
    sample: int | None = param(None, "Use a random N images per domain.", minimum=1)
    follow_symlinks: bool = param(
        False, "Follow symlinks that lead outside the input folders (skipped and listed otherwise)."
    )
    seed: int = param(0, "Seed for --sample.")
    projections: tuple[str, ...] = param(
        ("umap",),
        "Repeatable: umap (fit on one domain, map the other), pca (the same, "
        "linear), tsne (both domains together, 2D).",
        flag="--projection",
        cli_type=list[str],
    )
    umap: UMAPParams = field(default_factory=UMAPParams)
    tsne: TSNEParams = field(default_factory=TSNEParams)
    k: int = param(16, "Nearest neighbours per image.", flag="--k", minimum=1)
    metric: str = param("cosine", "Neighbour distance: cosine | euclidean.")
    batch_size: int = param(32, "Images per forward pass.", minimum=1)
    shard: int = param(
        4096,
        "Images per feature-cache shard: a killed run resumes after the last complete one.",
        minimum=1,
    )
    workers: int | None = param(
        None,
        "Image-decoding processes (default: CPU half the cores, at most 4; GPU all but "
        "two, at most 16).",
    )
    precision: str = param("auto", "fp32 | bf16 (autocast) | auto: bf16 on a GPU, fp32 on the CPU.")
    web_size: int = param(
        WEB_SIZE,
        "Longest side of the web copy of each image larger than a thumbnail: what the demo "
        "shows large (it never serves the input folders).",
        minimum=160,
    )
    exclude_tags: tuple[str, ...] = param(
        (),
        "Repeatable: leave out the images users gave this tag in the demo (or `batch "
        "annotations`), e.g. --exclude-tag remove.",
        flag="--exclude-tag",
        cli_type=list[str],
    )
    labels_from_annotations: bool = param(
        False, "Use the labels users corrected (results/annotations.sqlite) as categories."
    )
    atlas_level: str = param(
        "auto",
        "The level the atlas lays out (a 2D UMAP of both domains together): auto = the "
        "middle level, the one the demo opens; none = no atlas.",
    )
    attribution: int = param(
        1000,
        "Images per domain (a seeded sample) whose photometric statistics attribute the "
        "gap (README, What differs); 0: none. Image inputs only.",
        minimum=0,
    )
    dask: str | None = param(
        None,
        "A Dask scheduler (tcp://host:8786) or local:N (N worker processes here): decoding, "
        "extraction, placements, per-image scores and searches run as tasks on its workers "
        "(README, Beyond one machine).",
    )
    backend: str = param("auto", "auto | cuml | cpu")
    plots: bool = param(True, "Write the static 3D PNGs.")
    gap: GapParams = field(default_factory=GapParams)

    def __post_init__(self):
        check_minimums(self)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["projections"] = list(self.projections)
        d["exclude_tags"] = list(self.exclude_tags)
        for key in ("real", "synthetic", "real_boxes", "synthetic_boxes", "checkpoint",
                    "detectron2_config"):  # fmt: skip
            d[key] = str(d[key]) if d[key] is not None else None
        return d


@dataclass
class Scanned:
    """The scan stage's output: each domain's images (or given embeddings), in row order."""

    sets: dict[str, ImageSet | EmbeddingSet]
    size: tuple[int, int] | None  # what every prepared image measures; None for embeddings
    annotations: dict | None = None  # what applying the users' annotations did
    prepare: Prepare | None = None  # how the images were prepared, when the scan chose it

    @property
    def embeddings(self) -> bool:
        return isinstance(next(iter(self.sets.values())), EmbeddingSet)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets.values())

    @cached_property  # read by the extraction stages: built once
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


def run(config: RunConfig, store: RunStore, progress: Progress | None = None) -> Run:
    """Compute and publish one run. Raises GapscopeError for anything the user can fix."""
    from lib.backend import check_choices
    from lib.features import pooling_fn

    stages = Stages(progress or Silent())
    projectors = _projectors(config)  # misspelt choices fail before any work
    pooling_fn(config.pooling)
    check_choices(config.backend, config.precision)
    prepare = _prepare(config)
    started = datetime.now(timezone.utc)
    if config.backbone and config.backbone.startswith("trained:"):
        config = replace(config, backbone=_trained_spec(config.backbone, store.root))
    if config.dask:  # workers elsewhere may start in another folder: absolute paths only
        store = RunStore(store.root.resolve())
        config = replace(config, real=Path(config.real).resolve(),
                         synthetic=Path(config.synthetic).resolve())  # fmt: skip
    with contextlib.ExitStack() as stack:  # a Dask client, closed when the run ends
        client = stack.enter_context(connect(config.dask)) if config.dask else None
        return _run(config, store, stages, projectors, prepare, started, client)


def _run(config, store, stages, projectors, prepare, started, client) -> Run:
    """The stages, inside `store.writing()`: `run`'s body, given the Dask client (or None)."""
    import pandas as pd

    from lib.backend import choose_backend

    with store.writing() as writer:
        with stages("scan", f"{config.real} and {config.synthetic}") as stage:
            scanned = scan(config, prepare, projectors, writer, store.root,
                           ScanMap(client) if client else None)  # fmt: skip
            stage.summary = ", ".join(f"{len(s)} {d}" for d, s in scanned.sets.items())
        prepare = scanned.prepare or prepare
        objects = None
        if config.real_boxes or config.synthetic_boxes:
            with stages("objects", f"{config.real_boxes} and {config.synthetic_boxes}") as stage:
                objects = scan_run_objects(config, scanned, prepare, projectors, writer)
                stage.summary = ", ".join(f"{len(r)} {d}" for d, r in objects.rows.items())
        rows = objects.rows if objects else scanned.rows
        n_rows = sum(len(r) for r in rows.values())
        precision = worker_precision(client, config.precision) if client else config.precision
        backend = choose_backend(config.backend, precision, config.workers,
                                 n_images=len(scanned))  # fmt: skip
        blocks = BlockMap(client, stages.progress) if client else map_blocks  # here or workers
        projectors = _projectors(config, backend.projection, blocks)
        if scanned.embeddings:
            with stages("features", f"{len(scanned)} vectors given"):
                vectors, cached = given_features(scanned, writer), 0
            source = describe_embeddings(list(scanned.sets.values()))
        else:
            with stages("model"):
                backbone = load_backbone(config)
            where = f" on Dask ({client.dashboard_link})" if client else ""
            what = f"{n_rows} objects ({config.objects})" if objects else f"{n_rows} images"
            with stages("extract", f"{what}{where}") as stage:
                if objects:
                    vectors, cached = extract_object_features(
                        config, objects, prepare, backbone, backend, store, writer,
                        stages.progress, client,
                    )  # fmt: skip
                else:
                    vectors, cached = extract_features(
                        config, scanned, prepare, backbone, backend, store, writer,
                        stages.progress, client,
                    )  # fmt: skip
                stage.summary = f"{what}, {cached} from the feature cache"
            source = backbone.describe()
        with stages("project", ", ".join(config.projections)):
            frame, projected = project(vectors, rows, projectors, stages.progress)
        level = atlas_level(config.atlas_level, list(vectors), n_rows, config.umap)
        if level is not None:
            with stages("atlas", f"2D UMAP of both domains at {level}"):
                atlas = [AtlasProjector(config.umap, backend.projection, blocks)]
                layout, report = project({level: vectors[level]}, rows, atlas,
                                         stages.progress)  # fmt: skip
                frame, projected = pd.concat([frame, layout], ignore_index=True), projected | report
        writer.projections(frame)
        with stages("neighbors", f"k={config.k}, {backend.knn_engine}") as stage:
            searches = find_neighbours(vectors, config, backend, writer, blocks)
            stage.summary = _recall_summary(searches)
        with stages("gap", f"{len(vectors)} levels"):
            metrics, scores = measure_gap(vectors, rows, config.gap, backend, writer,
                                          stages.progress, blocks)  # fmt: skip
        table = scanned.table()
        if objects:
            object_table = objects.table(table)
            with stages("strata", "gap per class and per object size"):
                metrics["objects"] = strata_gap(vectors, rows, object_table, config.gap, backend)
            writer.objects(object_table)
        sample = None if objects else _attribution_sample(scanned, table, config)
        if sample is not None:
            with stages("attribution", f"{len(sample[0])} images' photometry"):
                metrics["attribution"] = attribute_gap(sample, scores, config.seed)
        writer.metrics(metrics)
        if config.plots:
            with stages("plots"):
                save_plots(frame, rows, projectors, writer)
        writer.images(table)
        writer.manifest(
            manifest(
                config,
                scanned,
                prepare,
                source,
                backend,
                vectors,
                cached,
                started,
                dict(stages),
                searches,
                projected,
                describe(client, blocks) if client else None,
                objects,
            )  # fmt: skip
        )
    return writer.published


def _recall_summary(searches: dict) -> str | None:
    recalls = [f"{lv} {r['recall_at_k']:.3f}" for lv, r in searches.items() if not r["exact"]]
    return f"approximate; recall@k on the probe: {', '.join(recalls)}" if recalls else None


def _projectors(config: RunConfig, implementation: str = "cpu", blocks=None) -> list:
    """The run's projectors, on cuML or the CPU (`Backend.projection`), placing points
    through the block map `blocks` (here by default; lib.cluster.BlockMap: on Dask)."""
    from lib.reduce import create_projector

    if not config.projections:
        raise GapscopeError("name at least one projection (--projection umap)")
    params = {"umap": config.umap, "tsne": config.tsne}
    return [create_projector(m, params.get(m), implementation, blocks)
            for m in config.projections]  # fmt: skip


# ---- stages ---------------------------------------------------------------------------


def scan(
    config: RunConfig,
    prepare: Prepare,
    projectors: list,
    writer: RunWriter,
    results: Path,
    mapper=None,
) -> Scanned:
    """Find, hash and check every image (thumbnails written on the way; through `mapper`
    on Dask workers when given), or read the given embeddings; apply the users'
    annotations kept in `results` when asked; check there are enough images for every
    projection."""
    kinds = {d: is_embeddings(getattr(config, d)) for d in DOMAINS}
    if len(set(kinds.values())) > 1:
        given = next(d for d, k in kinds.items() if k)
        raise GapscopeError(
            f"--{given} gives embeddings but the other domain gives images: give both "
            "domains the same way"
        )
    if kinds["real"]:
        scanned = _scan_embeddings(config, writer)
    else:

        def thumb(record: ImageRecord):
            return writer.thumb(record.domain, record.hash)

        def web(record: ImageRecord):
            return writer.web(record.domain, record.hash)

        sets = {
            domain: open_images(getattr(config, domain), domain, prepare, thumbs=thumb,
                                web=web, web_size=config.web_size, sample=config.sample,
                                seed=config.seed, follow_symlinks=config.follow_symlinks,
                                mapper=mapper)
            for domain in DOMAINS
        }  # fmt: skip
        size, chosen = _common_size(sets, prepare, config)
        scanned = Scanned(sets, size, prepare=chosen)
    if config.exclude_tags or config.labels_from_annotations:
        scanned = _annotated(scanned, config, results)
    for projector in projectors:
        for domain, image_set in scanned.sets.items():
            projector.check(len(image_set), len(scanned), domain)
    return scanned


def _prepare(config: RunConfig) -> Prepare:
    """The run's image preparation; a detectron2 config gives the detector's test size."""
    test_size = Prepare.test_size
    if config.detectron2_config and not config.crop and config.resize in (None, DETECTOR):
        from lib.backbones.detectron2 import load_config
        from lib.backbones.detectron2.config import Arch

        path = Path(config.detectron2_config)
        test_size = Arch(load_config(path), path).test_size
    return Prepare(crop=config.crop, resize=config.resize, test_size=test_size)


def _common_size(sets: dict, prepare: Prepare, config: RunConfig):
    """(the size every prepared image has, or None; the preparation): images of mixed
    sizes get a detectron2 model's own test-time resize; objects' images are fine as
    they are (each pooled from its part of a padded batch); otherwise they are an error."""
    try:
        return check_common_size(list(sets.values()), prepare), prepare
    except GapscopeError as exc:
        if config.detectron2_config:
            log.info("%s: using the detector's test-time resize", first_line(exc))
            return None, replace(prepare, resize=DETECTOR)
        if config.real_boxes or config.synthetic_boxes:
            return None, prepare
        raise


def scan_run_objects(config: RunConfig, scanned: Scanned, prepare: Prepare, projectors: list,
                     writer: RunWriter):  # fmt: skip
    """The run's objects (lib.objects), their thumbnails and pictures written, checked to
    be enough for every projection."""
    from lib.objects import scan_objects, write_object_pictures

    if scanned.embeddings:
        raise GapscopeError("--real-boxes and --synthetic-boxes need images, not embeddings")
    objects = scan_objects(scanned.sets, scanned.rows,
                           {"real": config.real_boxes, "synthetic": config.synthetic_boxes},
                           prepare, config.objects)  # fmt: skip
    for projector in projectors:
        for domain, rows in objects.rows.items():
            projector.check(len(rows), len(objects), domain)
    write_object_pictures(objects, writer.thumb, writer.web)
    return objects


def _annotated(scanned: Scanned, config: RunConfig, results: Path) -> Scanned:
    """The scan without the images tagged `config.exclude_tags`, with corrected labels
    when `config.labels_from_annotations`; records what was applied."""
    from lib.annotations import Annotations
    from lib.curation import apply

    if scanned.embeddings:
        raise GapscopeError(
            "--exclude-tag and --labels-from-annotations apply to images (folders or "
            "arrays), not to given embeddings: filter the embeddings file instead"
        )
    notes = Annotations.of(results)
    sets, applied = {}, {}
    for domain, image_set in scanned.sets.items():
        sets[domain], applied[domain] = apply(
            image_set, notes, config.exclude_tags, config.labels_from_annotations
        )
    record = {"database": str(notes.path.resolve()), "audit_seq": notes.last_seq(),
              "exclude_tags": list(config.exclude_tags),
              "labels_from_annotations": config.labels_from_annotations, **applied}  # fmt: skip
    return Scanned(sets, scanned.size, record, scanned.prepare)


def _scan_embeddings(config: RunConfig, writer: RunWriter) -> Scanned:
    """Both domains' embeddings; thumbnails of the rows whose path names an image (a row
    whose image cannot be decoded keeps its vector and loses its path)."""
    from concurrent.futures import ThreadPoolExecutor

    from lib.embeddings import check_same_levels, open_embeddings, row_hash
    from lib.images import DecodeError, decode_rgb, thumbnail_png, web_copy_jpeg

    sets = {
        d: open_embeddings(getattr(config, d), d, sample=config.sample, seed=config.seed)
        for d in DOMAINS
    }
    check_same_levels(list(sets.values()))

    def thumb(s: EmbeddingSet, i: int) -> None:
        try:
            rgb = decode_rgb(Path(s.paths[i]))
            image_hash = row_hash(s.domain, s.ids[i])
            thumbnail_png(rgb, writer.thumb(s.domain, image_hash))
            if needs_web_copy(*rgb.shape[:2]):
                web_copy_jpeg(rgb, writer.web(s.domain, image_hash), config.web_size)
            s.sizes[i] = rgb.shape[:2]
        except (DecodeError, OSError) as exc:
            log.info("no thumbnail for %s: %s", s.paths[i], exc)
            s.paths[i] = ""

    with ThreadPoolExecutor() as pool:
        for s in sets.values():
            list(pool.map(lambda i, s=s: thumb(s, i), [i for i in s.keep if s.paths[i]]))
    return Scanned(sets, None)


def load_backbone(config: RunConfig):
    from lib.backbones import create_backbone

    backbone = create_backbone(
        config.backbone, config.checkpoint, config.random_weights, config.detectron2_config
    )
    if not backbone.levels:
        raise GapscopeError(
            f"{backbone.name} has no feature levels to compare (it is for caricatures): "
            "choose a backbone from `python -m batch backbones`"
        )
    if backbone.random_weights:
        log.warning("RANDOM WEIGHTS: %s features are untrained; neighbours mean little",
                    backbone.name)  # fmt: skip
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


def extract_features(
    config: RunConfig,
    scanned: Scanned,
    prepare: Prepare,
    backbone,
    backend,
    store: RunStore,
    writer: RunWriter,
    progress: Progress,
    client=None,
) -> tuple[dict[str, np.ndarray], int]:
    """Pooled vectors per level (the feature cache skips images already computed), on
    the Dask cluster's workers when given its client."""
    from lib.features import FeatureCache, cache_key, extract

    items = scanned.items
    key = cache_key(backbone, config.pooling, prepare, backend.precision)
    cache = FeatureCache(store.cache_dir, key, config.shard)
    remote = None
    if client is not None:
        from lib.cluster import extract_on_cluster

        model = _model_spec(config, backbone)

        def remote(items, todo, out, advance):
            extract_on_cluster(client, model, items, todo, prepare, config.pooling,
                               config.batch_size, backend.precision, cache, out, advance,
                               progress)  # fmt: skip

    progress.start("extract", len(items))
    extraction = extract(
        backbone, items, prepare, pooling=config.pooling, batch_size=config.batch_size,
        cache=cache, device=backend.device,
        progress=lambda n: progress.advance("extract", n), workers=backend.workers,
        precision=backend.precision, allocate=writer.features_array, remote=remote,
    )  # fmt: skip
    for array in extraction.vectors.values():
        array.flush()
    return {lv: writer.features_read(lv) for lv in extraction.vectors}, extraction.cached


def _model_spec(config: RunConfig, backbone):
    """How a Dask worker builds the run's model (lib.cluster.ModelSpec)."""
    from lib.cluster import ModelSpec

    return ModelSpec(config.backbone, _str(config.checkpoint), config.random_weights,
                     _str(config.detectron2_config), backbone.fingerprint())  # fmt: skip


def extract_object_features(config: RunConfig, objects, prepare: Prepare, backbone, backend,
                            store: RunStore, writer: RunWriter, progress: Progress,
                            client=None):  # fmt: skip
    """Every object's vector per level (lib.objects), into the run's feature files; the
    feature cache keeps objects by image, box and how they are pooled. On the Dask
    cluster's workers when given its client."""
    from lib.features import FeatureCache, cache_key
    from lib.objects import RoiPooler, extract_objects, resolve_mode

    pooler = RoiPooler.for_backbone(backbone)
    mode = resolve_mode(config.objects, backbone.levels)
    how = f"objects {mode} {pooler.describe()} {config.pooling}"
    if mode == "crop":
        how += f" margin {config.object_margin:g} side {config.object_size}"
    cache = FeatureCache(store.cache_dir, cache_key(backbone, how, prepare, backend.precision),
                         config.shard)  # fmt: skip
    remote = None
    if client is not None:
        from lib.cluster import ObjectPooling, extract_objects_on_cluster

        model = _model_spec(config, backbone)
        how = ObjectPooling(prepare, mode, pooler, config.pooling, config.object_margin,
                            config.object_size, config.batch_size, backend.precision)  # fmt: skip

        def remote(images, todo, offsets, out, advance):
            extract_objects_on_cluster(client, model, how, images, todo, offsets, cache, out,
                                       advance, progress)  # fmt: skip

    progress.start("extract", len(objects))
    vectors, cached = extract_objects(
        backbone, objects.images, prepare, mode, pooler, config.pooling,
        config.object_margin, config.object_size, config.batch_size, cache, backend.device,
        backend.precision, backend.workers, lambda n: progress.advance("extract", n),
        allocate=writer.features_array, remote=remote,
    )  # fmt: skip
    for array in vectors.values():
        array.flush()
    return {lv: writer.features_read(lv) for lv in vectors}, cached


def strata_gap(vectors, rows, objects, params: GapParams, backend) -> dict:
    """lib.gap.strata per class and per COCO size stratum (and all objects: the run's
    levels)."""
    from lib.gap.strata import gap_by

    real, synthetic = rows["real"], rows["synthetic"]
    return {
        "by_class": gap_by(vectors, real, synthetic, objects["category"].to_numpy(), params,
                           backend.device),
        "by_size": gap_by(vectors, real, synthetic, objects["size"].to_numpy(), params,
                          backend.device),
    }  # fmt: skip


def _trained_spec(spec: str, results: Path) -> str:
    """trained:NAME → trained:<results>/models/NAME (a path is kept as given)."""
    name = spec.removeprefix("trained:")
    if "/" in name or Path(name).exists():
        return spec
    return f"trained:{(Path(results) / 'models' / name).resolve()}"


def _str(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def atlas_level(choice: str, levels: list[str], n: int, umap: UMAPParams) -> str | None:
    """The level the atlas lays out ("auto": the middle one), or None: "none", or too few
    images for a UMAP (the run goes on without an atlas)."""
    if choice == "none":
        return None
    if choice != "auto" and choice not in levels:
        raise GapscopeError(
            f"--atlas-level {choice}: no such level (this model's: {', '.join(levels)}, "
            "or auto, or none)"
        )
    try:
        check_enough_points(n, umap, "both domains")
    except GapscopeError as exc:
        log.warning("no atlas: %s", exc)
        return None
    return middle_level(levels) if choice == "auto" else choice


def project(vectors, rows: dict[str, np.ndarray], projectors: list, progress: Progress):
    """Every projector at every level: fitted on one domain with the other mapped in (both
    ways), or both domains embedded together (a joint projector). Returns the rows of
    the projections table and each fit's report."""
    import pandas as pd

    fits = [(p, fit_on) for p in projectors for fit_on in _fit_domains(p)]
    progress.start("project", len(fits) * len(vectors))
    frames, reports = [], {}
    for level, X in vectors.items():
        for projector, fit_on in fits:
            frames += _project_one(X, rows, projector, fit_on, level)
            if hasattr(projector, "report_"):
                reports[f"{projector.name} {level} fit on {fit_on}"] = projector.report_
            progress.advance("project")
    return pd.concat(frames, ignore_index=True), reports


def _fit_domains(projector) -> tuple[str, ...]:
    return ("both",) if projector.joint else DOMAINS


def _project_one(X: np.ndarray, rows, projector, fit_on: str, level: str) -> list:
    if fit_on == "both":
        both = np.concatenate([rows[d] for d in DOMAINS])
        consecutive = np.array_equal(both, np.arange(both[0], both[-1] + 1))
        # a view of the feature file, not a copy (2 GB at 1M + 1M × 256): its placements
        # can then run on Dask workers, which read the rows from the file
        fitted = projector.fit(X[_span(both)] if consecutive else X[both]).embedding_
        return [_projection_frame(both, level, projector, "both", fitted)]
    other = next(d for d in DOMAINS if d != fit_on)
    fitted = projector.fit(X[_span(rows[fit_on])]).embedding_
    mapped = projector.transform(X[_span(rows[other])])
    return [
        _projection_frame(rows[fit_on], level, projector, fit_on, fitted),
        _projection_frame(rows[other], level, projector, fit_on, mapped),
    ]


def _span(rows: np.ndarray) -> slice:
    """A domain's rows (consecutive) as a slice: a view of memory-mapped features, not a
    copy."""
    return slice(int(rows[0]), int(rows[-1]) + 1)


def _projection_frame(rows: np.ndarray, level: str, projector, fit_on: str, coords):
    """Rows of the projections table; a 2D embedding (t-SNE) has z = NaN."""
    import pandas as pd

    return pd.DataFrame(
        {
            "id": rows.astype(np.int32),
            "level": level,
            "method": projector.name,
            "fit_on": fit_on,
            "x": coords[:, 0],
            "y": coords[:, 1],
            "z": coords[:, 2] if projector.dimensions > 2 else np.float32(np.nan),
        }
    )


def find_neighbours(vectors, config: RunConfig, backend, writer: RunWriter,
                    blocks=map_blocks) -> dict:  # fmt: skip
    """Each level's neighbour table; returns what was done per level (engine, and the
    measured recall@k of an approximate search). On a Dask cluster (`blocks` a
    lib.cluster.BlockMap) an approximate search's queries run on the workers, and a GPU's
    exact search on GPU workers (cuML's multi-GPU search) when the run is on cuML."""
    from functools import partial

    from lib.cluster import search_on_cluster
    from lib.neighbors import knn_report

    dask = isinstance(blocks, BlockMap)
    search = partial(search_on_cluster, blocks, writer.dir) if dask else None
    exact = blocks.cuml_neighbours if dask and backend.name == "cuml" else None
    reports = {}
    for level, X in vectors.items():
        idx, dist, reports[level] = knn_report(
            X, config.k, config.metric, backend.device, engine=backend.knn_engine,
            seed=config.seed, search=search, exact=exact,
        )  # fmt: skip
        writer.neighbors(level, idx, dist)
    return reports


def measure_gap(vectors, rows, params: GapParams, backend, writer: RunWriter, progress: Progress,
                blocks=map_blocks):  # fmt: skip
    """The gap metrics and the per-image scores table, level by level; writes the scores
    and returns (the metrics, to which the attribution is added, the scores). The scores
    of images outside the gap sample go through the block map `blocks`."""
    import pandas as pd

    from lib.gap import NOTES, level_gap
    from lib.gap.records import SCHEMA

    levels, frames = {}, []
    progress.start("gap", len(vectors))
    for level, X in vectors.items():
        result = level_gap(X[_span(rows["real"])], X[_span(rows["synthetic"])], params, backend,
                           blocks)  # fmt: skip
        levels[level] = result.metrics
        frames.append(_scores_frame(result, rows, level))
        progress.advance("gap")
    scores = pd.concat(frames, ignore_index=True)
    writer.scores(scores)
    return {"schema": SCHEMA, "params": params.as_dict(), "notes": NOTES, "levels": levels}, scores


def _attribution_sample(scanned: Scanned, table, config: RunConfig):
    """(paths, their rows, synthetic?) of a seeded sample of at most `config.attribution`
    images per domain with files (`table`: the images table); None when there are too
    few to look at."""
    if not config.attribution or scanned.embeddings:
        return None
    paths, picked = table["path"].to_numpy(), []
    for rows in scanned.rows.values():
        with_file = rows[paths[rows] != ""]
        picked.append(with_file[sample_indices(len(with_file), config.attribution, config.seed)])
    if min(len(p) for p in picked) < 10:  # too few for an AUC with an interval
        return None
    rows = np.concatenate(picked)
    return paths[rows].tolist(), rows, table["domain"].to_numpy()[rows] == "synthetic"


def attribute_gap(sample, scores, seed: int) -> dict:
    """lib.attribution on the sample, against each level's out-of-fold p(synthetic)."""
    from lib.attribution import attribute

    paths, rows, synthetic = sample
    p = {
        level: part.set_index("id")["p_synthetic"].reindex(rows).to_numpy()
        for level, part in scores.groupby("level", sort=False)
    }
    return attribute(paths, synthetic, p, seed=seed)


def _scores_frame(result, rows, level: str):
    """One row per image: out-of-fold p(synthetic), realism (synthetic images), covered
    (real images) and cluster, in the order of the images table's ids."""
    import pandas as pd

    real, synthetic = rows["real"], rows["synthetic"]
    n = len(real) + len(synthetic)
    frame = pd.DataFrame({"id": np.arange(n, dtype=np.int32), "level": level})
    frame["p_synthetic"] = np.nan
    frame.loc[np.r_[real, synthetic], "p_synthetic"] = result.p_synthetic
    frame["realism"] = np.nan
    frame.loc[synthetic, "realism"] = result.realism
    frame["covered"] = pd.array([pd.NA] * n, dtype="boolean")
    frame.loc[real, "covered"] = result.covered
    frame["cluster"] = np.int32(-1)
    frame.loc[np.r_[real, synthetic], "cluster"] = result.clusters
    return frame


def save_plots(frame, rows: dict[str, np.ndarray], projectors: list, writer: RunWriter) -> None:
    """The original tool's static overlap PNGs, for the projectors that have them."""
    from lib.plots import save_overlap_png

    for projector in projectors:
        if not projector.plots:
            continue
        ours = frame[frame["method"] == projector.name]
        for (level, fit_on), group in ours.groupby(["level", "fit_on"], sort=False):
            xyz = group.set_index("id")[["x", "y", "z"]]
            order = dict.fromkeys(d for d in (fit_on, *DOMAINS) if d in rows)  # fitted first
            coords = {domain: xyz.loc[rows[domain]].to_numpy() for domain in order}
            out = writer.overlap_plot(projector.name, level, fit_on)
            save_overlap_png(coords, level, fit_on, out, projector.label)


# ---- what the run records --------------------------------------------------------------


def manifest(
    config: RunConfig,
    scanned: Scanned,
    prepare: Prepare,
    source: dict,
    backend,
    vectors: dict[str, np.ndarray],
    cached: int,
    started: datetime,
    timings: dict,
    searches: dict,
    projected: dict,
    dask: dict | None = None,
    objects=None,
) -> dict:
    sets = scanned.sets.values()
    rows = objects.rows if objects else scanned.rows
    return {
        "status": "complete",
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "prepare": "embeddings given as features" if scanned.embeddings else prepare.describe(),
        "image_size": list(scanned.size) if scanned.size else None,
        "backbone": source,
        "backend": backend.describe(),
        "dask": dask,
        "inputs": [_input_summary(s) for s in sets],
        "skipped": [
            {"domain": s.domain, "path": sk.path, "reason": sk.reason}
            for s in sets
            for sk in s.skipped
        ],
        "padded": 0 if scanned.embeddings else sum(r.padded for _, r in scanned.items),
        "counts": {d: int(len(r)) for d, r in rows.items()},
        "test_size": list(prepare.test_size) if prepare.detector else None,
        "objects": _objects_summary(config, objects, source) if objects else None,
        "annotations": scanned.annotations,
        "levels": list(vectors),
        "feature_dims": {level: int(v.shape[1]) for level, v in vectors.items()},
        "cached_images": cached,
        "neighbors": searches,
        "projections": projected,
        "timings_s": timings,
        "versions": _versions(),
    }


def _objects_summary(config: RunConfig, objects, source: dict) -> dict:
    from lib.objects import RoiPooler, resolve_mode

    pooler = RoiPooler.of(source, source["levels"])
    mode = resolve_mode(config.objects, source["levels"])
    return {
        "mode": mode,
        "pooler": pooler.describe() if mode != "crop" else None,
        "crop": {"margin": config.object_margin, "size": config.object_size}
        if mode == "crop" else None,
        "formats": objects.formats,
        "images": {d: sum(dd == d for dd in objects.domains) for d in DOMAINS},
        "skipped": objects.skipped,
    }  # fmt: skip


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


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "timm", "umap-learn", "faiss-cpu", "numpy", "cuml"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
