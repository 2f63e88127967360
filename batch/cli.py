"""The batch job runner: thin Typer commands over lib.

Errors a user can cause print one line and exit non-zero; nothing is published then.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from lib.errors import GapscopeError

app = typer.Typer(
    help="gapscope batch runner: compare how a model sees real and synthetic images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RESULTS = Path("results")
ResultsOpt = Annotated[Path, typer.Option("--results", help="Run store directory.")]


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


class RichProgress:
    """lib.pipeline's Progress, drawn as rich progress bars."""

    LABELS = {
        "extract": "extracting features",
        "project": "projections",
        "gap": "gap metrics per level",
    }

    def __init__(self, bar):
        self.bar = bar
        self.tasks = {}

    def start(self, name: str, total: int) -> None:
        self.tasks[name] = self.bar.add_task(self.LABELS.get(name, name), total=total)

    def advance(self, name: str, n: int = 1) -> None:
        self.bar.advance(self.tasks[name], n)


@app.command()
def run(
    real: Annotated[Path, typer.Option(help="Folder of real images, or a .npy (N,H,W,3).")],
    synthetic: Annotated[Path, typer.Option(help="Folder of synthetic images, or a .npy.")],
    results: ResultsOpt = RESULTS,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Architecture (see `backbones`). Default: resnet50-fpn with "
            "--checkpoint, else efficientnet-lite0 with its packaged ImageNet weights."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="State dict for the backbone (.pth, weights_only).")
    ] = None,
    detectron2_config: Annotated[
        Path | None,
        typer.Option(
            help="A detectron2 config .yaml (with _BASE_ files beside it): use that detector's "
            "FPN levels p2..p6, with --checkpoint model_final.pth or a model-zoo .pkl."
        ),
    ] = None,
    random_weights: Annotated[
        bool, typer.Option(help="Use untrained weights on purpose (said loudly everywhere).")
    ] = False,
    pooling: Annotated[str, typer.Option(help="gap | channel-sum | channel-mean")] = "gap",
    crop: Annotated[
        int | None, typer.Option(help="Centre crop N×N, padding smaller images.")
    ] = None,
    resize: Annotated[
        int | None, typer.Option(help="Shorter side to N, then centre crop N×N.")
    ] = None,
    sample: Annotated[int | None, typer.Option(help="Use a random N images per domain.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for --sample.")] = 0,
    projection: Annotated[
        list[str] | None,
        typer.Option(
            "--projection",
            help="Repeatable: umap (default; fit on one domain, map the other), pca (the "
            "same, linear), tsne (both domains together, 2D).",
        ),
    ] = None,
    n_neighbors: Annotated[int, typer.Option(help="UMAP n_neighbors.")] = 15,
    min_dist: Annotated[float, typer.Option(help="UMAP min_dist.")] = 0.1,
    umap_metric: Annotated[str, typer.Option(help="UMAP metric.")] = "euclidean",
    umap_seed: Annotated[int, typer.Option(help="UMAP random_state.")] = 42,
    perplexity: Annotated[float, typer.Option(help="t-SNE perplexity.")] = 30.0,
    k: Annotated[int, typer.Option("--k", help="Nearest neighbours per image.")] = 16,
    metric: Annotated[str, typer.Option(help="Neighbour distance: cosine | euclidean.")] = "cosine",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Image-decoding processes (default: CPU half the cores, at most 4; "
            "GPU all but two, at most 16)."
        ),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32 | bf16 (autocast) | auto: bf16 on a GPU, fp32 on the CPU.")
    ] = "auto",
    backend: Annotated[str, typer.Option(help="auto | cuml | cpu")] = "auto",
    plots: Annotated[bool, typer.Option(help="Write the static 3D PNGs.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage.")] = False,
) -> None:
    """Compute features, projections and neighbours for two domains; publish a run."""
    _setup_logging(verbose)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from lib.pipeline import RunConfig
    from lib.pipeline import run as run_pipeline
    from lib.reduce import TSNEParams, UMAPParams
    from lib.store import RunStore

    config = RunConfig(
        real=real,
        synthetic=synthetic,
        backbone=backbone,
        checkpoint=checkpoint,
        detectron2_config=detectron2_config,
        random_weights=random_weights,
        pooling=pooling,
        crop=crop,
        resize=resize,
        sample=sample,
        seed=seed,
        projections=tuple(dict.fromkeys(projection or ["umap"])),
        umap=UMAPParams(
            n_neighbors=n_neighbors, min_dist=min_dist, metric=umap_metric, random_state=umap_seed
        ),
        tsne=TSNEParams(perplexity=perplexity),
        k=k,
        metric=metric,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        backend=backend,
        plots=plots,
    )
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_stderr(), transient=False) as bar:
        published = run_pipeline(config, RunStore(results), RichProgress(bar))
    m = published.manifest
    typer.echo(f"published run {published.id} in {published.dir}")
    counts = ", ".join(f"{n} {d}" for d, n in m["counts"].items())
    typer.echo(f"  images: {counts}; backbone {m['backbone']['name']}: {m['backbone']['weights']}")
    if m["skipped"]:
        typer.echo(f"  skipped {len(m['skipped'])} unusable files (listed in manifest.json):")
        for s in m["skipped"][:5]:
            typer.echo(f"    {s['path']}: {s['reason']}")
    if m["padded"]:
        typer.echo(f"  {m['padded']} images were smaller than --crop {crop} and were padded")
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
) -> None:
    """Build the bundled example: scikit-learn's handwritten digits vs font-rendered ones."""
    _setup_logging(False)
    from lib.example import build_example

    summary = build_example(out, n_real, n_synthetic, size, seed, overwrite)
    typer.echo(
        f"wrote {summary.real} real and {summary.synthetic} synthetic {size}×{size} images "
        f"to {summary.root} (with metadata.csv)"
    )


def _floats3(text: str | None, flag: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise GapscopeError(f"{flag} takes three comma-separated numbers, e.g. 0.5,0.5,0.5")
    return values


@app.command()
def caricature(
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            help="NAME=ARCH[:CHECKPOINT], repeatable: a torchvision classifier with its state "
            "dict (resnet50:syn.pth), a TorchScript file (torchscript:model.pt), a gapscope "
            "backbone (efficientnet-lite0) or detectron2:model_final.pth@config.yaml.",
        ),
    ],
    layer: Annotated[
        list[str],
        typer.Option(
            "--layer",
            help="Layer, repeatable: dotted (layer3.2.conv2), underscore "
            "(layer3_2_conv2) or a level (p4, c3). See `layers`.",
        ),
    ],
    image: Annotated[
        list[Path] | None,
        typer.Option("--image", help="Input image file, repeatable. Default: from the run."),
    ] = None,
    from_run: Annotated[
        int, typer.Option(help="Without --image: this many of the run's images, half per domain.")
    ] = 4,
    results: ResultsOpt = RESULTS,
    run_id: Annotated[str | None, typer.Option("--run", help="Base run (default: latest).")] = None,
    size: Annotated[int, typer.Option(help="Caricature side in pixels.")] = 128,
    input_size: Annotated[int, typer.Option(help="Model input side in pixels.")] = 224,
    steps: Annotated[
        int | None, typer.Option(help="Adam steps (default: 512; 1024 for layer4*).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.05,
    cossim_pow: Annotated[
        float, typer.Option(help="Objective: dot × cosine**this (0: the original's dot only).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed (same seed, same caricatures on CPU).")] = 0,
    mean: Annotated[
        str | None,
        typer.Option(
            help="Normalisation mean for torchvision and TorchScript models, e.g. 0.5,0.5,0.5",
        ),
    ] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std, e.g. 0.5,0.5,0.5")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Caricatures (feature visualisations) for every model × layer × image, in a new run."""
    _setup_logging(verbose)
    from rich.progress import Progress

    from lib.caricature_job import CaricatureJob, run_caricatures
    from lib.store import RunStore

    job = CaricatureJob(
        models=model, layers=layer, images=image or [], from_run=from_run, run_id=run_id,
        size=size, input_size=input_size, steps=steps, lr=lr, cossim_pow=cossim_pow, seed=seed,
        mean=_floats3(mean, "--mean"), std=_floats3(std, "--std"), device=device,
    )  # fmt: skip
    with Progress(console=_stderr()) as bar:
        tasks = {}

        def progress(name: str, step: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"caricatures of {name}", total=total)
            bar.update(tasks[name], completed=step, total=total)
            if step == total:  # the next batch of this model starts from zero
                tasks.pop(name)

        published = run_caricatures(job, RunStore(results), progress)
    items = published.caricatures["items"]
    typer.echo(f"published run {published.id} with {len(items)} caricatures")
    for item in items:
        typer.echo(
            f"  {item['model']} {item['layer']} {item['image']}: cosine "
            f"{item['start_cosine']:.2f} → {item['cosine']:.2f}"
        )


@app.command()
def layers(
    model: Annotated[str, typer.Argument(help="ARCH[:CHECKPOINT] or NAME=ARCH[:CHECKPOINT]")],
) -> None:
    """List the layer names `caricature --layer` accepts for a model."""
    _setup_logging(False)
    from lib.caricature_job import list_layers

    for name in list_layers(model):
        typer.echo(name)


@app.command()
def runs(results: ResultsOpt = RESULTS) -> None:
    """List published runs, newest first (* marks latest)."""
    from lib.store import RunStore

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
def backbones() -> None:
    """List the backbone architectures `run --backbone` accepts."""
    from lib.backbones import DEFAULT, available

    for name in available():
        typer.echo(f"{name}{'  (default)' if name == DEFAULT else ''}")


def main() -> None:
    try:
        app()
    except GapscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: nothing was published", file=sys.stderr)
        sys.exit(130)
