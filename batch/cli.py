"""The batch job runner: thin Typer commands over lib.

Errors a user can cause print one line and exit non-zero; nothing is published then.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from batch import annotations
from batch.options import options_from
from lib.jobs.calibrate import CalibrateJob
from lib.jobs.calibration import CalibrationJob
from lib.jobs.caricature import CaricatureJob
from lib.jobs.compare import CompareJob
from lib.jobs.detections import DetectionsJob
from lib.jobs.detector import DetectorJob
from lib.jobs.retrieval import RetrievalJob
from lib.jobs.run import RunConfig
from lib.jobs.training import MetricJob, ProtocolJob, TrainJob
from lib.jobs.whatif import WhatIfJob
from lib.runtime.errors import GapscopeError

app = typer.Typer(
    help="gapscope batch runner: compare how a model sees real and synthetic images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(annotations.app, name="annotations")
evaluate = typer.Typer(help="Evaluate a run's features.", no_args_is_help=True)
app.add_typer(evaluate, name="evaluate")
train = typer.Typer(help="Train models to use as backbones.", no_args_is_help=True)
app.add_typer(train, name="train")

RESULTS = Path("results")
ResultsOpt = Annotated[Path, typer.Option("--results", help="Run store directory.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage.")]
KeepOpt = Annotated[
    int | None,
    typer.Option(
        "--keep",
        help="After publishing, delete all but the newest N runs (never latest, nor a run "
        "a demo is showing). For nightly runs.",
    ),
]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, show_time=False, console=_stderr())],
        force=True,
    )


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


@app.command()
@options_from(RunConfig)
def run(
    config: RunConfig,
    results: ResultsOpt = RESULTS,
    verbose: VerboseOpt = False,
    keep: KeepOpt = None,
) -> None:
    """Compute features, projections, neighbours and the gap for two domains; publish a run."""
    _setup_logging(verbose)
    from batch.progress import progress_for_terminal
    from lib.jobs.run import run as run_pipeline
    from lib.store.runs import RunStore

    store = RunStore(results)
    with progress_for_terminal(_stderr()) as progress:
        published = run_pipeline(config, store, progress)
    if keep is not None:
        _report_pruned(store.prune(keep), keep)
    m = published.manifest
    typer.echo(f"published run {published.id} in {published.dir}")
    counts = ", ".join(f"{n} {d}" for d, n in m["counts"].items())
    unit = f"objects ({m['objects']['mode']})" if m.get("objects") else "images"
    typer.echo(f"  {unit}: {counts}; backbone {m['backbone']['name']}: {m['backbone']['weights']}")
    skipped_boxes = (m.get("objects") or {}).get("skipped", [])
    if skipped_boxes:
        typer.echo(f"  skipped {len(skipped_boxes)} boxes (listed in manifest.json):")
        for s in skipped_boxes[:5]:
            typer.echo(f"    {s['domain']} {s['file']} {s['source']}: {s['reason']}")
    if m["skipped"]:
        typer.echo(f"  skipped {len(m['skipped'])} unusable files (listed in manifest.json):")
        for s in m["skipped"][:5]:
            typer.echo(f"    {s['path']}: {s['reason']}")
    if m["padded"]:
        typer.echo(
            f"  {m['padded']} images were smaller than --crop {config.inputs.crop} and were padded"
        )
    typer.echo(f"  timings (s): {m['timings_s']}")


@app.command()
def example(
    out: Annotated[Path, typer.Option(help="Where to write the example.")] = Path("data/example"),
    n_real: Annotated[
        int | None, typer.Option(help="Real digits to use (default: all 1,797).")
    ] = None,
    n_synthetic: Annotated[int, typer.Option(help="Font-rendered digits.")] = 1000,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing example.")] = False,
    sharpened: Annotated[
        bool,
        typer.Option(
            help="Instead, a case with a known answer: real digits against other real digits "
            "sharpened with a little noise (a gap of filters only; README, What if). "
            "--n-real digits per domain (default 400)."
        ),
    ] = False,
    objects: Annotated[
        bool,
        typer.Option(
            help="Instead, scenes of 2-5 digits each on canvases of mixed sizes with a COCO "
            "instances file per domain (real.json, synthetic.json): the object example "
            "(README, Objects)."
        ),
    ] = False,
    scenes: Annotated[int, typer.Option(help="--objects: scenes per domain.")] = 300,
    version: Annotated[
        int,
        typer.Option(
            help="The synthetic generator's version: 2 blends each digit halfway toward its "
            "class's mean real digit (closer to real by construction; README, Versions)."
        ),
    ] = 1,
) -> None:
    """Build the bundled example: scikit-learn's handwritten digits vs font-rendered ones."""
    _setup_logging(False)
    from lib.inputs.example import build_example, build_filter_gap, build_object_example

    if objects:
        summary = build_object_example(out, scenes, seed, overwrite)
        typer.echo(
            f"wrote {summary.real} real and {summary.synthetic} synthetic scenes with COCO "
            f"boxes to {summary.root} (real.json, synthetic.json)"
        )
        return
    if sharpened:
        summary = build_filter_gap(out, n_real or 400, size, seed, overwrite)
    else:
        summary = build_example(out, n_real, n_synthetic, size, seed, overwrite, version)
    typer.echo(
        f"wrote {summary.real} real and {summary.synthetic} synthetic {size}×{size} images "
        f"to {summary.root} (with metadata.csv)"
    )


@app.command()
@options_from(CaricatureJob)
def caricature(
    job: CaricatureJob,
    results: ResultsOpt = RESULTS,
    verbose: VerboseOpt = False,
) -> None:
    """Caricatures (feature visualisations) for every model × layer × image, in a new run."""
    _setup_logging(verbose)
    from batch.progress import Steps, progress_for_terminal
    from lib.jobs.caricature import run_caricatures
    from lib.store.runs import RunStore

    with progress_for_terminal(_stderr()) as progress:
        published = run_caricatures(job, RunStore(results), Steps(progress))
    items = published.caricatures["items"]
    typer.echo(f"published run {published.id} with {len(items)} caricatures")
    for item in items:
        typer.echo(
            f"  {item['model']} {item['layer']} {item['image']}: cosine "
            f"{item['start_cosine']:.2f} → {item['cosine']:.2f}"
        )


@app.command()
@options_from(WhatIfJob)
def whatif(
    job: WhatIfJob,
    results: ResultsOpt = RESULTS,
    verbose: VerboseOpt = False,
) -> None:
    """Which change to the synthetic images closes the gap: each transform at each
    strength, features extracted again, the gap measured per level; in a new run."""
    _setup_logging(verbose)
    from batch.progress import progress_for_terminal
    from lib.jobs.whatif import run_whatif
    from lib.store.runs import RunStore

    with progress_for_terminal(_stderr()) as progress:
        published = run_whatif(job, RunStore(results), progress)
    out = published.whatif
    typer.echo(
        f"published run {published.id} with {len(out['variants'])} what-if variants "
        f"of {out['samples']['synthetic']} synthetic images "
        f"({out['images_per_second']:.1f} images × variants per second)"
    )
    for line in out["findings"]:
        typer.echo(f"  {line}")


@app.command()
@options_from(CompareJob)
def compare(
    job: CompareJob,
    run_ids: Annotated[
        list[str], typer.Argument(help="Runs of each synthetic version, oldest first (2 or more).")
    ],
    results: ResultsOpt = RESULTS,
) -> None:
    """Is each version of the synthetic set closer to real than the one before? Every gap
    metric's change per level, class and object size with paired intervals, against the
    real images the runs share; in a new run."""
    _setup_logging(False)
    from lib.jobs.compare import run_compare
    from lib.store.runs import RunStore

    published = run_compare(job, run_ids, RunStore(results))
    out = published.compare
    shared = min(out["shared_real"].values())
    typer.echo(
        f"published run {published.id}: {len(out['runs'])} versions against {shared} shared "
        "real images"
    )
    for line in out["findings"]:
        typer.echo(f"  {line}")


@evaluate.command("retrieval")
@options_from(RetrievalJob)
def retrieval(job: RetrievalJob, results: ResultsOpt = RESULTS) -> None:
    """Does each query image find its own label among its nearest gallery images? Pass
    rate, per-rank accuracy, recall@1/5/10 and mAP@R per level, in a new run."""
    _setup_logging(False)
    from lib.jobs.retrieval import run_retrieval
    from lib.store.runs import RunStore

    published = run_retrieval(job, RunStore(results))
    out = published.retrievals[job.name]
    typer.echo(
        f"published run {published.id}: {out['n_query']} {job.query} queries against "
        f"{out['n_gallery']} {job.gallery} images (k={job.k})"
    )
    for level, m in out["levels"].items():
        r = m["recall_at"]
        typer.echo(
            f"  {level}: pass {m['pass']['value']:.3f}  recall@1 {r['1']['value']:.3f}  "
            f"@5 {r['5']['value']:.3f}  @10 {r['10']['value']:.3f}  "
            f"mAP@R {m['map_at_r']['value']:.3f}"
        )


@evaluate.command("detections")
@options_from(DetectionsJob)
def detections(job: DetectionsJob, results: ResultsOpt = RESULTS) -> None:
    """How well each detector finds the test images' objects (COCO mAP, AP50, AP75, per
    class and size, with bootstrap intervals), what happened to each object, and whether
    the real objects it misses are the ones no synthetic object covers; in a new run."""
    _setup_logging(False)
    from lib.jobs.detections import run_detections
    from lib.store.runs import RunStore

    published = run_detections(job, RunStore(results))
    typer.echo(f"published run {published.id} with {len(published.detections)} detectors")
    for name in job.detectors():
        for line in published.detections[name]["findings"]:
            typer.echo(f"  {line}")


@evaluate.command("calibration")
@options_from(CalibrationJob)
def calibration(job: CalibrationJob, results: ResultsOpt = RESULTS) -> None:
    """Which gap number predicts mAP: across runs of synthetic variants, each with a
    detector trained on it and evaluated on the same real test images, Spearman's rho of
    every gap metric at every level with the detector's AP, with intervals; in a new run."""
    _setup_logging(False)
    from lib.jobs.calibration import run_calibration
    from lib.store.runs import RunStore

    _say_calibration(run_calibration(job, RunStore(results)))


def _say_calibration(published) -> None:
    """A published calibration: each variant's figure (and its run, when the loop made
    it), then the findings."""
    out = published.calibration
    typer.echo(f"published run {published.id}: {len(out['variants'])} variants")
    for variant, value in out["variants"].items():
        made = f" (run {out['runs'][variant]})" if "runs" in out else ""
        typer.echo(f"  {variant}: {out['figure']} {value:.3f}{made}")
    for line in out["findings"]:
        typer.echo(f"  {line}")


def _train(train_it, job, results: Path, validated_by: str) -> None:
    """Run a training, a line per epoch, and say how to use the model."""

    def report(epoch: int, epochs: int, row: dict) -> None:
        typer.echo(
            f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, validation "
            f"loss {row['val_loss']:.4f}, {validated_by} {row['val_accuracy']:.3f} "
            f"({row['seconds']:.1f} s)"
        )

    out = train_it(job, results, report)
    typer.echo(f"model in {out} (best.pt, training.csv): use it with --backbone trained:{job.name}")


@train.command("classifier")
@options_from(TrainJob)
def train_classifier(
    job: TrainJob, results: ResultsOpt = RESULTS, verbose: VerboseOpt = False
) -> None:
    """Fine-tune a backbone with a classification head on labelled images; resumes a
    killed job from its last finished epoch. Then: --backbone trained:NAME."""
    _setup_logging(verbose)
    from lib.jobs.training import train_classifier as train_it

    _train(train_it, job, results, "accuracy")


@train.command("metric")
@options_from(MetricJob)
def train_metric(
    job: MetricJob, results: ResultsOpt = RESULTS, verbose: VerboseOpt = False
) -> None:
    """Metric learning: triplet margin loss (pytorch-metric-learning) on triplets mined
    offline each epoch (or in each batch: --mining online), validated by precision@1;
    resumes like `train classifier`. Then: --backbone trained:NAME."""
    _setup_logging(verbose)
    from lib.jobs.training import train_metric as train_it

    _train(train_it, job, results, "precision@1")


@train.command("detector")
@options_from(DetectorJob)
def train_detector(
    job: DetectorJob, results: ResultsOpt = RESULTS, verbose: VerboseOpt = False
) -> None:
    """Train a small torchvision detector (FCOS or RetinaNet on a registered backbone's
    FPN) on image folders with boxes, validated by AP50, resumable; then its COCO figures
    on the test images, with intervals (test.json)."""
    _setup_logging(verbose)
    import json

    from lib.jobs.detector import train_detector as train_it

    def report(epoch: int, epochs: int, row: dict) -> None:
        typer.echo(
            f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, validation AP50 "
            f"{row['val_ap50']:.3f}, AP {row['val_ap']:.3f} ({row['seconds']:.1f} s)"
        )

    out = train_it(job, results, report)
    test = json.loads((out / "test.json").read_text())
    s, ci = test["summary"], test["ci95"]
    typer.echo(
        f"model in {out} (best.pt from epoch {test['epoch']}, training.csv, test.json): on "
        f"{test['test_images']} test images AP {s['AP']:.3f} {_bracket(ci.get('AP'))}, "
        f"AP50 {s['AP50']:.3f} {_bracket(ci.get('AP50'))}"
    )


@train.command("calibrate")
@options_from(CalibrateJob)
def train_calibrate(
    job: CalibrateJob, results: ResultsOpt = RESULTS, verbose: VerboseOpt = False
) -> None:
    """The whole loop: per synthetic variant, its gap against the real images (a run) and
    a detector trained on it, tested on the same real images; then which gap metric at
    which level predicts the detectors' AP (Spearman, with intervals); in a new run."""
    _setup_logging(verbose)
    from lib.jobs.calibrate import run_calibrate
    from lib.store.runs import RunStore

    _say_calibration(run_calibrate(job, RunStore(results), typer.echo))


def _bracket(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "(no interval)"


@train.command("protocol")
@options_from(ProtocolJob)
def train_protocol(
    job: ProtocolJob, results: ResultsOpt = RESULTS, verbose: VerboseOpt = False
) -> None:
    """The sim-to-real protocol: classifiers trained on synthetic only, real only and
    both, each tested on the same held-out real images (--test-on synthetic: the
    reverse)."""
    _setup_logging(verbose)
    from lib.jobs.training import run_protocol

    out = run_protocol(job, results)
    tested = out["tested_on"]
    other = "synthetic" if tested == "real" else "real"
    typer.echo(f"accuracy on {out['test']} held-out {tested} images:")
    for variant, m in out["models"].items():
        acc = m["test_accuracy"]
        typer.echo(
            f"  trained on {variant:<9} ({m['trained_on']:>6} images): {acc['value']:.3f} "
            f"[{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]"
        )
    typer.echo(f"  adding the {other} images to the {tested} ones: {out[f'{other}_buys']:+.3f}")


@app.command()
def transforms() -> None:
    """List the transforms `whatif --transform` accepts, with their default strengths."""
    from lib.inputs.transforms import TRANSFORMS

    for t in TRANSFORMS.values():
        strengths = ",".join(f"{s:g}" for s in t.defaults)
        typer.echo(f"{t.name:<10} {t.parameter}: {strengths}   {t.description}")


@app.command()
def layers(
    model: Annotated[str, typer.Argument(help="ARCH[:CHECKPOINT][@CONFIG], NAME= optional")],
) -> None:
    """List the layer names `caricature --layer` accepts for a model."""
    _setup_logging(False)
    from lib.jobs.caricature import list_layers

    for name in list_layers(model):
        typer.echo(name)


@app.command()
def runs(results: ResultsOpt = RESULTS) -> None:
    """List published runs, newest first (* marks latest)."""
    from lib.store.runs import RunStore

    store = RunStore(results)
    latest = store.latest_id()
    ids = store.run_ids()
    if not ids:
        typer.echo(f"no published runs in {results}")
    for run_id in ids:
        m = store.open(run_id).manifest
        mark = "*" if run_id == latest else " "
        counts = "+".join(str(n) for n in m["counts"].values())
        typer.echo(f"{mark} {run_id}  {m['backbone']['name']}  {counts} images  {m['created']}")


@app.command()
def prune(
    keep: Annotated[int, typer.Option("--keep", help="Published runs to keep, newest first.")],
    results: ResultsOpt = RESULTS,
) -> None:
    """Delete old runs (never latest, nor a run a demo is showing) and the partial runs
    of killed batch jobs."""
    from lib.store.runs import RunStore

    store = RunStore(results)
    abandoned = store.remove_abandoned()
    if abandoned:
        typer.echo(f"removed {len(abandoned)} partial runs of batch jobs that are gone")
    _report_pruned(store.prune(keep), keep)


def _report_pruned(deleted: list[str], keep: int) -> None:
    if deleted:
        typer.echo(
            f"deleted {len(deleted)} old runs (keeping the newest {keep}): " + ", ".join(deleted)
        )


@app.command()
def backbones() -> None:
    """List the architectures `run --backbone` and `caricature --model` accept."""
    from lib.features.backbones import DEFAULT, available, lookup
    from lib.features.backbones.registry import families

    for name in available():
        entry = lookup(name)
        default = "  (default)" if name == DEFAULT else ""
        typer.echo(f"{name:<20} {entry.description}{default}")
    for family in families():
        typer.echo(f"{'...':<20} {family}")


def main() -> None:
    try:
        app()
    except GapscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: nothing was published", file=sys.stderr)
        sys.exit(130)
