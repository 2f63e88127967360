"""What-if experiments: which change to the synthetic images closes the gap?

`python -m batch whatif` takes a published run, applies each transform of
lib.inputs.transforms at each strength to a seeded sample of its synthetic images, extracts
their features again with the run's own model (same weights, preprocessing and
precision; the transforms and the model on the GPU when there is one) and measures each
level's gap for every variant against one seeded sample of the run's real images
(lib.analysis.gap.paired: FD, coverage and the classifier AUC, each with an interval, and each
variant's change from the untransformed baseline with a paired interval, so a change
within noise is said to be). A published run never changes: the results go into a run
derived from it (`whatif/results.json`, and before/after pairs as PNGs), which the demo's
What if tab shows.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from lib.analysis.gap import GapParams
from lib.analysis.gap.paired import METRICS, Comparison
from lib.features.backbones import create_backbone
from lib.features.engine import extract
from lib.features.pooling import pool
from lib.inputs.images import Prepare, load_recorded, thumbnail_png
from lib.inputs.transforms import (
    TRANSFORMS,
    Reference,
    Transform,
    channel_histogram,
    parse_transform,
    reference_cdf,
    tone_curve,
)
from lib.runtime.backend import check_device, choose_backend, default_workers
from lib.runtime.errors import GapscopeError
from lib.runtime.executor import Executor
from lib.runtime.memmap import read_rows
from lib.runtime.params import check_minimums, param
from lib.runtime.progress import Progress, Silent
from lib.store.runs import Run, RunStore

log = logging.getLogger(__name__)

BASELINE = "none"  # the untransformed synthetic sample, the variant every other is paired with


@dataclass
class WhatIfJob:
    """A what-if job's settings; every field is also a `batch whatif` option."""

    transforms: list[str] = param(
        [],
        "NAME or NAME=S1,S2,... (the transform's own parameter), repeatable; default: every "
        "transform at its default strengths (`python -m batch transforms` lists them).",
        flag="--transform",
    )
    run_id: str | None = param(None, "Base run (default: latest).", flag="--run")
    synthetic: int = param(
        500,
        "Synthetic images transformed: a seeded sample, the same for every transform.",
        flag="--synthetic-sample",
        minimum=20,
    )
    real: int = param(
        1000,
        "Real images every variant is measured against: a seeded sample, the same for all.",
        flag="--real-sample",
        minimum=20,
    )
    levels: list[str] = param([], "Level to measure, repeatable (default: all).", flag="--level")
    pairs: int = param(4, "Before/after image pairs kept per transform and strength.", minimum=0)
    resamples: int = param(200, "Resamples for every interval.", minimum=20)
    batch_size: int = param(32, "Images per forward pass.", minimum=1)
    seed: int = param(0, "Seed of the samples and of the random transforms.", minimum=0)
    device: str = param(
        "auto", "cpu, cuda, or auto: a GPU when there is one (lib.runtime.backend)."
    )

    def __post_init__(self):
        check_minimums(self)

        check_device(self.device)


@dataclass(frozen=True)
class Variant:
    transform: Transform | None  # None: the baseline
    strength: float = 0.0

    @property
    def key(self) -> str:
        return BASELINE if self.transform is None else f"{self.transform.name}={self.strength:g}"

    def apply(self, batch, generator, reference: Reference):
        if self.transform is None:
            return batch
        return self.transform.apply(batch, self.strength, generator, reference)


def variants_of(texts: list[str]) -> list[Variant]:
    """The baseline, then every transform × strength named (all at their defaults when
    none is); a misspelt name or a bad strength fails here, before any work."""

    chosen = [parse_transform(t) for t in texts] or [(t, t.defaults) for t in TRANSFORMS.values()]
    out = [Variant(None)]
    for transform, strengths in chosen:
        out += [Variant(transform, s) for s in strengths if Variant(transform, s) not in out]
    return out


# ---- the job ----------------------------------------------------------------------------


def run_whatif(job: WhatIfJob, store: RunStore, progress: Progress | None = None) -> Run:
    """Every variant's gap, published in a run derived from the base run; returns it."""
    progress = progress or Silent()
    variants = variants_of(job.transforms)
    base = store.open(job.run_id)
    levels = _levels(job, base)
    backbone, prepare, precision = _model_of(base)
    device = _device(job.device)
    rows = _samples(base, job)
    real_features = {lv: read_rows(base.features(lv), rows["real"]) for lv in levels}
    reference = _Reference(base, rows, prepare, variants, job.seed)
    seconds = {"reference": reference.seconds}
    with store.writing(derive_from=base) as writer:
        started = time.perf_counter()
        source = Variants(
            _Recorded.of(base, rows["synthetic"]),
            prepare,
            variants,
            reference,
            levels,
            base.manifest["config"]["pooling"],
            job.seed,
            job.batch_size,
            job.pairs,
            writer.new_whatif_dir(),
        )
        executor = Executor.on(
            device, progress, precision=precision, workers=default_workers(device)
        )
        features = extract(source, backbone, executor, task="what-if images").vectors
        seconds.update(source.seconds)
        seconds["decode"] = time.perf_counter() - started - sum(source.seconds.values())
        t = time.perf_counter()
        measured = _measure(
            real_features, source.by_variant(features), variants, job, base, device, progress
        )
        seconds["measure"] = time.perf_counter() - t
        n_images = len(rows["synthetic"]) * (len(variants) - 1)
        results = {
            "base_run": base.id,
            "params": {**asdict(job), "transforms": [v.key for v in variants[1:]]},
            "device": device,
            "precision": precision,
            "samples": {d: len(r) for d, r in rows.items()},
            "levels": levels,
            "transforms": _transforms_table(variants),
            **measured,
            "pairs": _pair_names(variants, min(job.pairs, len(rows["synthetic"]))),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "images_per_second": n_images / max(time.perf_counter() - started, 1e-9),
        }
        results["findings"] = findings(results)
        writer.whatif(results)
        writer.manifest({**base.manifest, "derived_from": base.id}, schema=base.schema)
    return writer.published


def _levels(job: WhatIfJob, base: Run) -> list[str]:
    unknown = [lv for lv in job.levels if lv not in base.levels]
    if unknown:
        raise GapscopeError(
            f"--level {unknown[0]}: run {base.id} has no such level ({', '.join(base.levels)})"
        )
    return list(dict.fromkeys(job.levels)) or base.levels


def _model_of(base: Run):
    """The run's own model, preprocessing and precision; the weights must be those the
    run used (a changed checkpoint would measure another model's gap)."""

    m = base.manifest
    if any(i["kind"] == "embeddings" for i in m["inputs"]):
        raise GapscopeError(
            f"run {base.id} was made from given embeddings: what-if needs images and the "
            "model that saw them (a run made from image folders or arrays)"
        )
    if m.get("objects") or m.get("test_size"):
        raise GapscopeError(
            f"run {base.id} measured objects or images at the detector's own sizes: what-if "
            "runs need whole images of one size (a run with --crop or --resize N)"
        )
    config = m["config"]
    backbone = create_backbone(
        config["backbone"],
        config["checkpoint"],
        config["random_weights"],
        config["detectron2_config"],
    )
    if backbone.weights != m["backbone"]["weights"]:
        raise GapscopeError(
            f"the model's weights are not those run {base.id} used ({backbone.weights} now, "
            f"{m['backbone']['weights']} then): run `batch run` again"
        )
    return (
        backbone,
        Prepare(crop=config["crop"], resize=config["resize"]),
        m["backend"]["precision"],
    )


def _device(choice: str) -> str:
    return choose_backend("auto").device if choice == "auto" else choice


def _samples(base: Run, job: WhatIfJob) -> dict[str, np.ndarray]:
    """Seeded samples of each domain's rows, in a random order (FD at equal N takes the
    first rows of the larger one)."""
    domain = base.column("domain")
    rng = np.random.default_rng(job.seed)
    out = {}
    for name, size in (("real", job.real), ("synthetic", job.synthetic)):
        rows = np.flatnonzero(domain == name)
        if len(rows) <= 10:
            raise GapscopeError(f"run {base.id} has {len(rows)} {name} images: too few to compare")
        out[name] = rows[rng.permutation(len(rows))[:size]]
    return out


@dataclass(frozen=True)
class _Recorded:
    """Some of a run's images as its images table recorded them (path, source, relpath,
    hash per image): what lib.inputs.images.load_recorded reads again, checked."""

    columns: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, base: Run, rows: np.ndarray) -> _Recorded:
        return cls(tuple(base.column(c)[rows] for c in ("path", "source", "relpath", "hash")))

    def __len__(self) -> int:
        return len(self.columns[0])

    def load(self, i: int, prepare) -> np.ndarray:
        return load_recorded(*(c[i] for c in self.columns), prepare)

    def stack(self, prepare, take=None) -> np.ndarray:
        """The prepared pixels of images `take` (all by default), (B, H, W, 3) uint8,
        decoded in threads (decoding frees the GIL)."""
        take = range(len(self)) if take is None else take
        with ThreadPoolExecutor(max_workers=4) as pool:
            return np.stack(list(pool.map(lambda i: self.load(i, prepare), take)))


class _Reference:
    """What transforms take from the real images (lib.inputs.transforms.Reference): the
    real sample's pooled histogram and the synthetic → real tone curve, read once, and a
    seeded real image per synthetic one (`style`, read with the synthetic image it goes
    with)."""

    def __init__(self, base: Run, rows: dict, prepare, variants: list[Variant], seed: int):
        import torch

        needs = {v.transform.needs for v in variants if v.transform is not None}
        self.cdf = self.curve = None
        t = time.perf_counter()

        def counts(domain: str):
            images = _Recorded.of(base, rows[domain])
            total = torch.zeros(3, 256, dtype=torch.float64)
            for s in range(0, len(images), 64):
                chunk = range(s, min(s + 64, len(images)))
                total += channel_histogram(_nchw(images.stack(prepare, chunk)))
            return total

        if needs & {"cdf", "curve"}:
            real = counts("real")
            self.cdf = reference_cdf(real)
            if "curve" in needs:
                self.curve = tone_curve(real, counts("synthetic"))
        rng = np.random.default_rng([seed, 1])
        style_rows = rows["real"][rng.integers(0, len(rows["real"]), len(rows["synthetic"]))]
        self.style = _Recorded.of(base, style_rows) if "style" in needs else None
        self.seconds = time.perf_counter() - t


def _nchw(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@dataclass
class Variants:
    """The synthetic sample as an item source of the extraction engine
    (lib.features.engine): a unit is a sample image, decoded once; every variant is made
    from its batch on the device and its vectors are the outputs (variant key, level).
    Each variant's generator is seeded by the job's seed, the variant and the batch's
    first image. The first `pairs` images are saved before and after each variant."""

    images: _Recorded
    prepare: object
    variants: list[Variant]
    reference: _Reference
    measured: list[str]  # the levels measured
    pooling: str
    seed: int
    batch_size: int
    pairs: int
    pairs_dir: Path
    seconds: dict = field(default_factory=lambda: {"transform": 0.0, "extract": 0.0})
    stacked = True

    def __len__(self) -> int:
        return len(self.images)

    @property
    def levels(self) -> tuple:
        return tuple((v.key, lv) for v in self.variants for lv in self.measured)

    @cached_property
    def keys(self) -> list[str]:
        return list(self.images.columns[3])

    @property
    def per_batch(self) -> int:
        return self.batch_size

    def rows(self, units) -> np.ndarray:
        return np.asarray(units, dtype=np.int64)

    def todo(self, done: np.ndarray) -> list[int]:
        return np.flatnonzero(~done).tolist()

    def load(self, unit: int):
        style = self.reference.style
        return (
            self.images.load(unit, self.prepare),
            style.load(unit, self.prepare) if style is not None else None,
        )

    def collate(self, loaded: list):
        pixels = _nchw(np.stack([p for p, _ in loaded]))
        style = None if loaded[0][1] is None else _nchw(np.stack([s for _, s in loaded]))
        return pixels, style

    def forward(self, backbone, batch, units, device: str, precision: str) -> dict:
        import torch

        pixels, style = batch
        reference = Reference(cdf=self.reference.cdf, style=style, curve=self.reference.curve)
        pixels = pixels.to(device)
        out = {}
        for i, variant in enumerate(self.variants):
            t = time.perf_counter()
            seed = self.seed * 1_000_003 + i * 10_007 + int(units[0])
            changed = variant.apply(pixels, torch.Generator().manual_seed(seed), reference)
            _sync(device)
            self.seconds["transform"] += time.perf_counter() - t
            t = time.perf_counter()
            maps = backbone(changed.permute(0, 2, 3, 1), device=device, precision=precision)
            for lv in self.measured:
                out[variant.key, lv] = pool(maps[lv], self.pooling).cpu().numpy()
            self.seconds["extract"] += time.perf_counter() - t
            _save_pairs(changed, int(units[0]), variant, self.pairs, self.pairs_dir)
        return out

    def by_variant(self, vectors: dict) -> dict[str, dict[str, np.ndarray]]:
        """The engine's outputs as {variant key: {level: (n, D)}}."""
        out = {v.key: {} for v in self.variants}
        for (key, level), array in vectors.items():
            out[key][level] = array
        return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _pair_file(index: int, key: str) -> str:
    return f"{index}_{key.replace('=', '_')}.png"


def _save_pairs(changed, start: int, variant: Variant, pairs: int, folder) -> None:
    for j in range(max(0, min(pairs - start, len(changed)))):
        image = changed[j].permute(1, 2, 0).cpu().numpy()
        thumbnail_png(image, folder / _pair_file(start + j, variant.key))


def _pair_names(variants: list[Variant], n: int) -> dict[str, list[str]]:
    return {v.key: [_pair_file(i, v.key) for i in range(n)] for v in variants}


def _measure(real, features, variants, job, base, device, progress) -> dict:
    """Per level: the baseline's gap, then each variant's and its paired change."""

    run_params = (base.metrics or {}).get("params", {})
    n = max(len(next(iter(real.values()))), len(next(iter(features[BASELINE].values()))))
    # classifier_max = n: every image scored, so the AUC change pairs them all
    params = GapParams(
        k=run_params.get("k", 5),
        folds=run_params.get("folds", 5),
        resamples=job.resamples,
        seed=job.seed,
        classifier_max=n,
    )
    progress.start("what-if gaps", len(real) * len(variants))
    baseline, by_variant = {}, {v.key: {} for v in variants[1:]}
    for level, x in real.items():
        comparison = Comparison(x, params, device)
        base_gap = comparison.measure(features[BASELINE][level])
        baseline[level] = base_gap.records
        progress.advance("what-if gaps")
        for v in variants[1:]:
            gap = comparison.measure(features[v.key][level])
            by_variant[v.key][level] = {
                "records": gap.records,
                "change": comparison.change(base_gap, gap),
            }
            progress.advance("what-if gaps")
    rows = [
        {
            "transform": v.transform.name,
            "strength": v.strength,
            "key": v.key,
            "label": v.transform.label(v.strength),
            "levels": by_variant[v.key],
        }
        for v in variants[1:]
    ]
    return {"baseline": baseline, "variants": rows, "best": best_per_level(baseline, rows)}


def _transforms_table(variants: list[Variant]) -> dict:
    out = {}
    for v in variants[1:]:
        t = v.transform
        entry = out.setdefault(
            t.name, {"parameter": t.parameter, "description": t.description, "strengths": []}
        )
        entry["strengths"].append(v.strength)
    return out


def best_per_level(baseline: dict, variants: list[dict]) -> dict:
    """Per level and metric (FD, AUC): the variant that closes most of the gap beyond
    noise, or None when none does."""
    out = {}
    for level in baseline:
        out[level] = {}
        for metric in ("fd", "auc"):
            closing = [
                v
                for v in variants
                if not v["levels"][level]["change"][metric]["within_noise"]
                and v["levels"][level]["change"][metric]["value"] < 0
            ]
            if not closing:
                out[level][metric] = None
                continue
            top = max(closing, key=lambda v: v["levels"][level]["change"][metric]["gap_closed"])
            measured = top["levels"][level]
            out[level][metric] = {
                "key": top["key"],
                "label": top["label"],
                "gap_closed": measured["change"][metric]["gap_closed"],
                "before": baseline[level][metric]["value"],
                "after": measured["records"][metric]["value"],
            }
    return out


def _share(x: float) -> str:
    return "<1%" if 0 < x < 0.005 else f"{x:.0%}"


def findings(results: dict) -> list[str]:
    """The results in words, a line per level: the change that closes most of the FD gap,
    the one that moves the classifier most (or that nothing does), and the transforms
    within noise on every metric."""
    lines = []
    for level in results["levels"]:
        best = results["best"][level]
        fd, auc = best["fd"], best["auc"]
        if fd is None and auc is None:
            lines.append(f"{level}: no transform closes the gap beyond noise")
            continue
        parts = []
        if fd is not None:
            parts.append(
                f"{fd['label']} closes {_share(fd['gap_closed'])} of the FD gap above "
                "its no-gap level "
                f"({fd['before']:.3g} → {fd['after']:.3g})"
            )
        if auc is not None:
            same = fd is not None and fd["key"] == auc["key"]
            who = "and" if same else f"{auc['label']} closes"
            parts.append(
                f"{who} {_share(auc['gap_closed'])} of the classifier's "
                f"(AUC {auc['before']:.2f} → {auc['after']:.2f})"
            )
        else:
            base = results["baseline"][level]["auc"]["value"]
            parts.append(f"nothing moves the classifier's AUC ({base:.2f}) beyond noise")
        moved = {
            v["transform"]
            for v in results["variants"]
            if not all(v["levels"][level]["change"][m]["within_noise"] for m in METRICS)
        }
        idle = sorted({v["transform"] for v in results["variants"]} - moved)
        if idle:
            parts.append(f"within noise: {', '.join(idle)}")
        lines.append(f"{level}: " + "; ".join(parts))
    return lines
