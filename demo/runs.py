"""What every tab reads of a published run: opened runs (cached), their listing, the
banner, captions and per-image scores, and the pieces every tab is built from (`Tab`, the
level picker). Plain functions; Gradio is imported only where a component is made.

Runs are immutable once published, so opened runs are cached by directory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.components.gallery import GalleryData, GalleryImage
from gradio.data_classes import ImageData
from gradio_client.utils import get_mimetype

from demo import markup
from lib.analysis.atlas import middle_level
from lib.runtime.errors import GapscopeError
from lib.store.annotations import REMOVE, Annotations, keys_of
from lib.store.names import shown
from lib.store.runs import Run, RunStore


@dataclass
class Tab:
    """One tab of the app: its own gr.Blocks (rendered into the app), the hidden textbox
    holding the run it shows, and what the app calls when the user switches runs:
    `on_run(store, run_id, *inputs)` → values for `outputs`."""

    blocks: object  # gr.Blocks
    run_id: object  # gr.Textbox, hidden (an API parameter too)
    on_run: Callable
    inputs: list
    outputs: list


log = logging.getLogger(__name__)

METHOD_LABELS = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}


@lru_cache(maxsize=8)
def open_run(run_dir: str) -> Run:
    return Run(Path(run_dir))


def open_id(store: RunStore, run_id: str | None) -> Run:
    """A published run by id (the latest for None), from the cache. A run deleted since
    the page loaded (`batch prune`), or an id no run has, is a message in the page that
    names no server path, not a traceback."""

    try:
        run = open_run(str(store.open(run_id or None).dir))
    except (GapscopeError, OSError, ValueError):  # OSError: an id too long for a file name
        if not run_id:
            raise gr.Error("no run is published yet") from None
        raise markup.error(
            f"no published run {shown(run_id)}: it may have been removed; reload the page "
            "for the runs there are now"
        ) from None
    _announce(store, run.id)
    return run


_SHOWN: dict[str, list[str]] = {}  # store → the runs this process showed last, newest last


def _announce(store: RunStore, run_id: str, remember: int = 8) -> None:
    """Tell the store which runs this demo shows (at most `remember`, as many as
    `open_run` caches), so `batch prune` never deletes them; written when the set changes."""
    shown = _SHOWN.setdefault(str(store.root), [])
    if shown and shown[-1] == run_id:
        return
    if run_id in shown:
        shown.remove(run_id)
    shown.append(run_id)
    del shown[:-remember]
    try:
        store.announce_serving(shown)
    except OSError as exc:  # a full disk: showing the run matters more than the note
        log.warning("could not note the runs this demo shows (%s)", exc.strerror or exc)


def default_level(run: Run) -> str:
    """The level the demo opens: the middle one (lib.analysis.atlas.middle_level), the atlas's."""
    return middle_level(run.levels)


def run_choices(store: RunStore) -> list[tuple[str, str]]:
    """(label, run id) for every published run, newest first. Listed again only when
    the runs folder changed (a run published or deleted renames an entry in it) or
    `latest` moved: a page load costs the same with one run or a thousand."""
    try:
        changed = store.runs_dir.stat().st_mtime_ns
    except FileNotFoundError:
        return []
    return list(_run_choices(str(store.root), changed, store.latest_id()))


@lru_cache(maxsize=4)
def _run_choices(root: str, changed: int, latest: str | None) -> tuple:
    store = RunStore(Path(root))
    out = []
    for run_id in store.run_ids():
        m = _manifest(str(store.runs_dir / run_id))
        counts = " + ".join(f"{n} {d}" for d, n in m["counts"].items())
        tag = " · latest" if run_id == latest else ""
        weights = " · RANDOM WEIGHTS" if m["backbone"]["random_weights"] else ""
        out.append((f"{run_id} · {m['backbone']['name']}{weights} · {counts}{tag}", run_id))
    return tuple(out)


@lru_cache(maxsize=1024)
def _manifest(run_dir: str) -> dict:
    """A run's manifest alone (runs never change once published)."""
    return Run(Path(run_dir)).manifest


def banner(run: Run) -> str:
    """Markdown saying which run is shown, from what, with which weights."""
    m = run.manifest
    b = m["backbone"]
    lines = [f"**Run {run.id}** · computed {m['created'].replace('T', ' ')} UTC"]
    for inp in m["inputs"]:
        lines.append(  # the folder's name only: a hosted demo never shows server paths
            f"- {inp['domain']}: {markup.code(Path(inp['source']).name)} ({inp['used']} images"
            + (f", {inp['skipped']} skipped" if inp["skipped"] else "")
            + ")"
        )
    lines.append(
        f"- backbone **{markup.text(b['name'])}**, levels {markup.text(', '.join(b['levels']))}; "
        f"weights: {markup.text(b['weights'])}"
    )
    lines.append(
        f"- pooling {m['config']['pooling']}, images {m['prepare']}, projections "
        f"{', '.join(METHOD_LABELS.get(p, p) for p in m['config'].get('projections', ['umap']))}"
        f" (UMAP {json.dumps(m['config']['umap'])}), neighbours k={m['config']['k']} "
        f"({m['config']['metric']})"
    )
    if b["random_weights"]:
        lines.insert(
            0, "## ⚠️ RANDOM WEIGHTS: this backbone was never trained; neighbours mean little"
        )
    return "\n".join(lines)


def level_dropdown(label: str, run: Run):
    """A level picker starting at the run's middle level."""
    # allow_custom_value: another run's levels (switched to later) are valid values too
    return gr.Dropdown(
        label=label, choices=run.levels, value=default_level(run), allow_custom_value=True
    )


def caption(run: Run, row: int, distance: float | None = None) -> str:
    domain, category = image_column(run, "domain")[row], image_column(run, "category")[row]
    text = f"#{row} {domain} · {category or '–'}"
    if run.objects is not None:  # an object's size stratum, as the gap report names them
        text += f" · {image_column(run, 'size')[row]}"
    return text if distance is None else f"{text} · d={distance:.3f}"


def tag_names(tags: set[str]) -> str:
    """An image's tags as one name (a legend entry, a caption): "remove" first."""
    return ", ".join(sorted(tags, key=lambda t: (t != REMOVE, t))) if tags else "untagged"


def row_tags(run: Run) -> dict[int, set[str]]:
    """Every tagged image of the run by row."""
    return _by_row(run, Annotations.of(run.results).tags())


def row_labels(run: Run) -> dict[int, str]:
    """Every image of the run whose label a user corrected, by row: the new label."""
    corrected = Annotations.of(run.results).labels()
    return _by_row(run, {key: new for key, (_, new) in corrected.items()})


def _by_row(run: Run, by_key: dict) -> dict[int, object]:
    """Annotations keyed by image, re-keyed by the run's rows: joined on (hash, relpath)
    by pandas (a million rows in well under a second)."""
    import pandas as pd

    if not by_key:
        return {}
    keys = list(by_key)
    wanted = pd.DataFrame(
        {
            "hash": [k.hash for k in keys],
            "relpath": [k.relpath for k in keys],
            "k": np.arange(len(keys)),
        }
    )
    images = pd.DataFrame(
        {"hash": image_column(run, "hash"), "relpath": image_column(run, "relpath")}
    )
    found = images.reset_index(names="row").merge(wanted, on=["hash", "relpath"])
    return {int(r): by_key[keys[k]] for r, k in zip(found["row"], found["k"], strict=True)}


def with_tags(run: Run, items: list[tuple], rows: list[int]) -> list[tuple]:
    """Gallery items (picture, caption) with what users decided in each caption (a
    corrected label, the tags): it shows wherever the image appears."""
    notes = Annotations.of(run.results).about_many(keys_of(run.rows, rows))
    out = []
    for (picture, text), (tags, label) in zip(items, notes, strict=True):
        text += f" · label → {label}" if label else ""
        out.append((picture, f"{text} · 🏷 {tag_names(tags)}" if tags else text))
    return out


ASSETS = Path(__file__).resolve().parent / "assets"  # served beside the runs (demo.app)
NO_IMAGE = ASSETS / "no_image.png"


class PathGallery(gr.Gallery):
    """gr.Gallery whose values are (image path, caption) pairs, turned into Gradio's
    gallery data inline. Gradio's own `postprocess` starts a thread pool on every call:
    under 16 clicking clients a fifth of the server's time went to starting threads.
    Other values go to Gradio's. `is_template`: the browser draws it as a gallery."""

    is_template = True

    def postprocess(self, value):
        pairs = value is not None and all(
            isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value
        )
        if not pairs:
            return super().postprocess(value)
        return GalleryData(
            root=[
                GalleryImage(
                    image=ImageData(
                        path=path, orig_name=Path(path).name, mime_type=get_mimetype(path)
                    ),
                    caption=text,
                )
                for path, text in value
            ]
        )


def with_ci(rec: dict | None, fmt: str = ".3f") -> str:
    """A record (lib.analysis.gap.records' shape) as a table cell: "0.412 [0.371, 0.455]",
    the value alone when it has no interval, "–" for none."""
    if not rec:
        return "–"
    ci = rec.get("ci95")
    return f"{rec['value']:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "")


def picture(thumb: Path | None) -> str:
    """A thumbnail's path, or a "no image" tile for a given embedding without an image
    (its caption says which row it is): one file, not an image encoded per click."""
    return str(thumb if thumb is not None else NO_IMAGE)


def level_scores(run: Run, level: str):
    """The run's per-image scores at one level, indexed by image id (cached)."""
    return _level_scores(str(run.dir), level)


@lru_cache(maxsize=32)
def _level_scores(run_dir: str, level: str):
    scores = open_run(run_dir).scores
    return scores[scores["level"] == level].set_index("id")


def image_column(run: Run, name: str) -> np.ndarray:
    """One column of the images table as an array indexed by row id (cached): what the
    plot reads for the points it draws, without a join over the whole table."""
    return run.column(name)


def projection_view(run: Run, level: str, method: str, fit_on: str):
    """The projection rows of one level, method and direction as arrays (id, x, y, z),
    and the direction really shown (a joint projection has only "both"); cached."""
    return _projection_view(str(run.dir), level, method, fit_on)


@lru_cache(maxsize=32)
def _projection_view(run_dir: str, level: str, method: str, fit_on: str):
    proj = open_run(run_dir).projections
    proj = proj[(proj["level"] == level) & (proj["method"] == method)]
    if (proj["fit_on"] == "both").any():
        fit_on = "both"
    proj = proj[proj["fit_on"] == fit_on]
    view = {c: proj[c].to_numpy() for c in ("id", "x", "y", "z")}
    view["id"] = view["id"].astype(np.int64)
    return view, fit_on


def score_values(run: Run, level: str, ids: np.ndarray, name: str) -> np.ndarray:
    """Per-image values of one score (realism, p_synthetic) at this level, for `ids`."""
    return level_scores(run, level).loc[ids, name].to_numpy(dtype=float)


def cluster_names(run: Run, level: str, ids: np.ndarray) -> np.ndarray:
    """A legend name per image: 'cluster 3 · real-only', or 'noise'."""
    kinds = {c["cluster"]: c["kind"] for c in run.metrics["levels"][level]["clusters"]["table"]}
    labels = level_scores(run, level).loc[ids, "cluster"].to_numpy()
    return np.array(
        ["noise" if c < 0 else f"cluster {c:02d} · {kinds.get(c, 'mixed')}" for c in labels]
    )
