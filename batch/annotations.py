"""`python -m batch annotations ...`: the users' tags and label fixes from the command
line: tag images of a run, undo, export them, gather a tag's images into folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lib.runtime.errors import GapscopeError

app = typer.Typer(
    help="Tags and label fixes kept in <results>/annotations.sqlite.", no_args_is_help=True
)

ResultsOpt = Annotated[Path, typer.Option("--results", help="Run store directory.")]
RunOpt = Annotated[
    str | None, typer.Option("--run", help="Run whose images are meant (default: latest).")
]
WhoOpt = Annotated[str, typer.Option("--who", help="Your name, for the audit trail.")]
RESULTS = Path("results")


def _opened(results: Path, run_id: str | None):
    from lib.store.annotations import Annotations
    from lib.store.runs import RunStore

    return RunStore(results).open(run_id), Annotations.of(results)


def _keys(run, ids: list[int]):
    from lib.store.annotations import keys_of

    bad = [i for i in ids if not 0 <= i < len(run.images)]
    if bad:
        raise GapscopeError(f"run {run.id} has images #0 to #{len(run.images) - 1}, not #{bad[0]}")
    return keys_of(run.images, ids)


@app.command()
def tag(
    name: Annotated[str, typer.Argument(help="The tag, e.g. remove.")],
    ids: Annotated[list[int], typer.Option("--id", help="Image #id in the run (repeatable).")],
    untag: Annotated[bool, typer.Option("--untag", help="Take the tag off instead.")] = False,
    run_id: RunOpt = None,
    who: WhoOpt = "anonymous",
    results: ResultsOpt = RESULTS,
) -> None:
    """Tag images of a run (the demo does the same with a selection)."""
    run, notes = _opened(results, run_id)
    keys = _keys(run, ids)
    changed = notes.untag(keys, name, who) if untag else notes.tag(keys, name, who)
    typer.echo(f"{'untagged' if untag else 'tagged'} {changed} of {len(keys)} images {name!r}")


@app.command()
def label(
    image: Annotated[int, typer.Argument(help="Image #id in the run.")],
    new: Annotated[str, typer.Argument(help="Its corrected label.")],
    run_id: RunOpt = None,
    who: WhoOpt = "anonymous",
    results: ResultsOpt = RESULTS,
) -> None:
    """Correct an image's label."""
    run, notes = _opened(results, run_id)
    (key,) = _keys(run, [image])
    original = str(run.images.at[image, "category"])
    changed = notes.set_label(key, original, new, who)
    typer.echo(f"#{image}: {original!r} → {new!r}" if changed else f"#{image}: unchanged")


@app.command()
def undo(who: WhoOpt = "anonymous", results: ResultsOpt = RESULTS) -> None:
    """Undo your last change (every image it touched)."""
    from lib.store.annotations import Annotations

    typer.echo(Annotations.of(results).undo(who))


@app.command()
def export(
    fmt: Annotated[
        str, typer.Option("--format", help="csv | json | metadata (a corrected metadata.csv)")
    ] = "csv",
    out: Annotated[Path | None, typer.Option("--out", help="File (default: stdout).")] = None,
    only_tag: Annotated[
        str | None, typer.Option("--tag", help="Only images with this tag (csv, json).")
    ] = None,
    domain: Annotated[
        str, typer.Option("--domain", help="metadata: which domain's metadata.csv.")
    ] = "synthetic",
    removed: Annotated[
        str, typer.Option("--removed", help="metadata: drop removed images, or mark them.")
    ] = "drop",
    run_id: RunOpt = None,
    results: ResultsOpt = RESULTS,
) -> None:
    """Write the annotations of a run's images: CSV, JSON, or a corrected metadata.csv."""
    from lib.store import curation

    run, notes = _opened(results, run_id)
    if fmt == "metadata":
        text = curation.corrected_metadata(run, notes, domain, removed)
    elif fmt in ("csv", "json"):
        frame = curation.annotated(run, notes, tag=only_tag)
        text = (
            curation.to_csv(frame)
            if fmt == "csv"
            else curation.to_json(frame, run.id, notes.last_seq())
        )
    else:
        raise GapscopeError(f"--format {fmt!r}: choose csv, json or metadata")
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)


@app.command()
def gather(
    name: Annotated[str, typer.Argument(help="The tag whose images to gather.")],
    out: Annotated[Path, typer.Option("--out", help="Folder: one sub-folder per label.")],
    symlink: Annotated[bool, typer.Option("--symlink", help="Link instead of copying.")] = False,
    run_id: RunOpt = None,
    results: ResultsOpt = RESULTS,
) -> None:
    """Copy (or link) a tag's original images into a folder per label."""
    from lib.store.curation import gather as gather_images

    run, notes = _opened(results, run_id)
    done = gather_images(run, notes, name, out, symlink)
    typer.echo(f"{'linked' if symlink else 'copied'} {done['written']} images into {out}")
    if done["missing"]:
        typer.echo(f"{len(done['missing'])} originals are gone, e.g. {done['missing'][0]}")
