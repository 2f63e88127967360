"""A run's parameters, one dataclass per stage, composed into `RunConfig`.

Each stage receives its own parameters and nothing else. Fields made with `param` are
also `batch run`'s options (batch.options builds them from `RunConfig`, nested
dataclasses included, with these defaults and help texts): the flags are the fields'
own names, whatever stage holds them.

The manifest records the configuration flat, as it always has (`RunConfig.as_dict`):
a stage marked `FLAT` spreads its fields into it; the gap's parameters, UMAP's and
t-SNE's stay nested under their names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import get_type_hints

from lib.analysis.atlas import middle_level
from lib.analysis.gap import GapParams
from lib.analysis.gap.modes import N_MODES
from lib.analysis.neighbours import METRIC, K
from lib.analysis.reduce import TSNEParams, UMAPParams
from lib.features.cache import SHARD
from lib.features.objects import CROP_SIZE, MARGIN
from lib.features.pooling import DEFAULT as DEFAULT_POOLING
from lib.features.sources import BATCH_SIZE
from lib.inputs.images import WEB_SIZE
from lib.runtime.errors import GapscopeError
from lib.runtime.params import REQUIRED, check_minimums, param

FLAT = {"flat": True}  # a stage whose fields the manifest lists among the run's own


@dataclass
class _Checked:
    def __post_init__(self):
        check_minimums(self)


@dataclass
class InputParams(_Checked):
    """The scan: which images (or embeddings), how they are prepared and sampled."""

    real: Path = param(
        REQUIRED,
        "Folder of real images, a .npy (N,H,W,3), or embeddings: a .parquet, a .npy (N,D) "
        "with a CSV of paths, or a folder of them (see README, Large datasets).",
    )
    synthetic: Path = param(REQUIRED, "Synthetic images or embeddings, as for --real.")
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
    seed: int = param(
        0, "Seed for --sample (and every seeded sample after it: attribution, search probe)."
    )
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


@dataclass
class ObjectParams(_Checked):
    """Objects: boxes on the images make the run's rows objects (README, Objects)."""

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
        MARGIN, "--objects crop: context around the box, a share of its longer side.", minimum=0
    )
    object_size: int = param(
        CROP_SIZE, "--objects crop: side of the square crop the model sees.", minimum=8
    )

    @property
    def given(self) -> bool:
        return bool(self.real_boxes or self.synthetic_boxes)


@dataclass
class ModelParams(_Checked):
    """The model whose features are compared."""

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


@dataclass
class ExtractParams(_Checked):
    """Extraction: how feature maps become vectors, in what batches, cached how."""

    pooling: str = param(
        DEFAULT_POOLING, "avg (global average; `gap` is its old name) | channel-sum | channel-mean"
    )
    batch_size: int = param(BATCH_SIZE, "Images per forward pass.", minimum=1)
    shard: int = param(
        SHARD,
        "Images per feature-cache shard: a killed run resumes after the last complete one.",
        minimum=1,
    )


@dataclass
class ProjectParams(_Checked):
    """Projections (fit on one domain, map the other), the atlas and the static plots."""

    projections: tuple[str, ...] = param(
        ("umap",),
        "Repeatable: umap (fit on one domain, map the other), pca (the same, "
        "linear), tsne (both domains together, 2D).",
        flag="--projection",
        cli_type=list[str],
    )
    umap: UMAPParams = field(default_factory=UMAPParams)
    tsne: TSNEParams = field(default_factory=TSNEParams)
    atlas_level: str = param(
        "auto",
        "The level the atlas lays out (a 2D UMAP of both domains together): auto = the "
        "middle level, the one the demo opens; none = no atlas.",
    )
    plots: bool = param(True, "Write the static 3D PNGs.")


@dataclass
class NeighbourParams(_Checked):
    """Each row's nearest rows, per level."""

    k: int = param(K, "Nearest neighbours per image.", flag="--k", minimum=1)
    metric: str = param(METRIC, "Neighbour distance: cosine | euclidean.")


@dataclass
class DuplicateParams(_Checked):
    """Near-copies and leaks (lib.analysis.duplicates)."""

    duplicates_level: str = param(
        "auto",
        "The level whose features propose near-copies besides the pixels (auto: the middle "
        "level; none: no search for duplicates and leaks).",
    )


@dataclass
class ModeParams(_Checked):
    """Modes one domain over- or under-represents (lib.analysis.gap.modes)."""

    modes_level: str = param(
        "auto",
        "The level whose features the modes are found in (auto: the middle level; none: no modes).",
    )
    modes: int = param(
        N_MODES, "Modes (k-means on both domains; fewer when the domains are small).", minimum=2
    )


def chosen_level(choice: str, levels: list[str], flag: str) -> str | None:
    """The level a stage's `--<flag>` names: auto → the middle level, none → None."""
    if choice == "none":
        return None
    if choice == "auto":
        return middle_level(levels)
    if choice not in levels:
        raise GapscopeError(f"--{flag} {choice}: no such level ({', '.join(levels)})")
    return choice


@dataclass
class AttributionParams(_Checked):
    """What differs: photometric statistics against each image's p(synthetic)."""

    attribution: int = param(
        1000,
        "Images per domain (a seeded sample) whose photometric statistics attribute the "
        "gap (README, What differs); 0: none. Image inputs only.",
        minimum=0,
    )


@dataclass
class RuntimeParams(_Checked):
    """Where the work runs (lib.runtime.backend, lib.runtime.executor)."""

    workers: int | None = param(
        None,
        "Image-decoding processes (default: CPU half the cores, at most 4; GPU all but "
        "two, at most 16).",
    )
    precision: str = param("auto", "fp32 | bf16 (autocast) | auto: bf16 on a GPU, fp32 on the CPU.")
    dask: str | None = param(
        None,
        "A Dask scheduler (tcp://host:8786) or local:N (N worker processes here): decoding, "
        "extraction, placements, per-image scores and searches run as tasks on its workers "
        "(README, Beyond one machine).",
    )
    backend: str = param("auto", "auto | cuml | cpu")


@dataclass
class RunConfig:
    """Everything a run depends on, stage by stage; written to the manifest as given.
    `RunConfig.of(real=..., synthetic=..., k=8)` builds one from `batch run`'s option
    names, as a notebook or test would write them."""

    inputs: InputParams = field(metadata=FLAT)
    boxes: ObjectParams = field(default_factory=ObjectParams, metadata=FLAT)
    model: ModelParams = field(default_factory=ModelParams, metadata=FLAT)
    extraction: ExtractParams = field(default_factory=ExtractParams, metadata=FLAT)
    projection: ProjectParams = field(default_factory=ProjectParams, metadata=FLAT)
    neighbours: NeighbourParams = field(default_factory=NeighbourParams, metadata=FLAT)
    duplicates: DuplicateParams = field(default_factory=DuplicateParams, metadata=FLAT)
    modes: ModeParams = field(default_factory=ModeParams, metadata=FLAT)
    gap: GapParams = field(default_factory=GapParams)
    photometry: AttributionParams = field(default_factory=AttributionParams, metadata=FLAT)
    runtime: RuntimeParams = field(default_factory=RuntimeParams, metadata=FLAT)

    @classmethod
    def of(cls, *paths, **options) -> RunConfig:
        """From option names: RunConfig.of(real, synthetic, crop=32, k=8, gap=GapParams())."""
        options = dict(zip(("real", "synthetic"), paths, strict=False)) | options
        parts = {}
        for name, stage in _stages(cls).items():
            if stage is None:
                if name in options:
                    parts[name] = options.pop(name)
                continue
            own = {f.name for f in fields(stage)}
            parts[name] = stage(**{k: options.pop(k) for k in own & options.keys()})
        if options:
            raise TypeError(f"batch run has no option {sorted(options)[0]!r}")
        return cls(**parts)

    def replace(self, **options) -> RunConfig:
        """A copy with some options changed (by option name)."""
        return RunConfig.of(**(self._options() | options))

    def _options(self) -> dict:
        out = {}
        for name, stage in _stages(type(self)).items():
            value = getattr(self, name)
            out |= (
                {name: value}
                if stage is None
                else {f.name: getattr(value, f.name) for f in fields(value)}
            )
        return out

    def as_dict(self) -> dict:
        """The manifest's `config`: every option by name, nested parameters as dicts."""
        d = {}
        for name, value in self._options().items():
            if is_dataclass(value):
                value = asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            d[name] = value
        return d


@cache
def _stages(cls) -> dict[str, type | None]:
    """RunConfig's fields: name → the stage dataclass whose fields are options of their
    own (FLAT), or None for a field that is one option (the gap's parameters)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] if f.metadata.get("flat") else None for f in fields(cls)}
