"""The gap report's duplicates and leaks: how many of each kind the run found (the rule
stated), the pairs side by side, the copies tagged or flagged for removal like any
selection (where the demo may write), and the pairs as a CSV download.

The pairs come from the run's duplicates.parquet (lib.analysis.duplicates); a run made
before they were looked for says so.
"""

from __future__ import annotations

import csv
import io
from functools import partial

import gradio as gr
import pandas as pd

from demo import markup
from demo.curation import Editing, change_tags, export_folder, who_and_token
from demo.runs import PathGallery, caption, open_id, picture, tag_names
from lib.inputs.spreadsheet import escape
from lib.store.annotations import REMOVE, Annotations, keys_of
from lib.store.runs import Run, RunStore

# the radio's label → the kind in duplicates.parquet
KINDS = {
    "leaks (synthetic copies of real images)": "leak",
    "synthetic repeats": "synthetic repeat",
    "real repeats": "real repeat",
}
SHOWN = 12  # pairs in the gallery
CSV_COLUMNS = [
    "kind",
    "copy_domain",
    "copy_file",
    "of_domain",
    "of_file",
    "copy",
    "correlation",
    "pixel_distance",
    "feature_distance",
]


def note(run: Run) -> str:
    """The counts per kind and the rule that found them."""
    found = (run.metrics or {}).get("duplicates")
    if found is None:
        return (
            "### Duplicates and leaks\nThis run was made before gapscope looked for "
            "duplicates, or with `--duplicates-level none`."
        )
    lines = ["### Duplicates and leaks", "", "| | copies | images | candidates | unconfirmed |"]
    lines.append("|---|---|---|---|---|")
    for label, kind in KINDS.items():
        k = found["kinds"][kind]
        lines.append(
            f"| {label} | {k['copies']} | {k['images']} | {k['candidates']} | {k['unconfirmed']} |"
        )
    leaks = found["kinds"]["leak"]["images"]
    lines += [
        "",
        f"**{leaks} synthetic image{'s' if leaks != 1 else ''} copy a real one**"
        + (": if the real images are your test set, drop them before training." if leaks else "."),
        f"Rule ({markup.text(str(found.get('level') or 'pixels'))}): "
        + markup.text(found["rule"])
        + ". Candidates without pictures (given embeddings) are unconfirmed.",
    ]
    return "\n".join(lines)


def pairs(run: Run, kind: str):
    """The run's pairs of one kind, copies first, the most alike first."""
    frame = run.duplicates
    if frame is None:
        return None
    mine = frame[frame["kind"] == kind].copy()
    mine["_copy"] = mine["copy"].fillna(False).astype(bool)
    return mine.sort_values(["_copy", "correlation"], ascending=False).drop(columns="_copy")


def gallery(run: Run, kind: str, n: int = SHOWN) -> list[tuple[str, str]]:
    """The pairs as thumbnails side by side: the copy, then what it copies."""
    found = pairs(run, kind)
    if found is None:
        return []
    shown = found.head(n)
    keys = keys_of(run.rows, [int(a) for a in shown["a"]])
    notes = Annotations.of(run.results).about_many(keys)
    items = []
    for p, (tags, _) in zip(shown.itertuples(), notes, strict=True):
        tagged = f" · tags: {tag_names(tags)}" if tags else ""
        items.append(
            (picture(run.thumb(int(p.a))), f"{caption(run, int(p.a))} · {_verdict(p)}{tagged}")
        )
        items.append((picture(run.thumb(int(p.b))), f"↳ copies {caption(run, int(p.b))}"))
    return items


def is_copy(value) -> bool | None:
    """A pair's `copy` cell: True, False, or None where it was not checked (pandas reads a
    missing boolean back as pd.NA)."""
    return None if value is None or value is pd.NA else bool(value)


def _verdict(p) -> str:
    copy = is_copy(p.copy)
    if copy is None:
        return "unconfirmed"
    return f"{'copy' if copy else 'not a copy'} (r = {p.correlation:.3f})"


def show(store: RunStore, run_id: str, label: str):
    run = open_id(store, run_id)
    return note(run), gallery(run, KINDS.get(label, "leak"))


def copy_rows(run: Run, kind: str) -> list[int]:
    """The rows that are copies of another of `kind` (a leak's synthetic image, a
    repeat's later image): what tagging the copies tags."""
    found = pairs(run, kind)
    if found is None:
        return []
    return sorted(
        {int(a) for a, c in zip(found["a"], found["copy"], strict=True) if is_copy(c) is True}
    )


def tag_copies(
    store: RunStore,
    editing: Editing,
    run_id: str,
    label: str,
    tag: str,
    who: str,
    token: str,
) -> str:
    """Tag the copies of the chosen kind (the copy, never what it copies)."""
    editing.check(token)
    run = open_id(store, run_id)
    rows = copy_rows(run, KINDS.get(label, "leak"))
    if not rows:
        raise gr.Error("No copies of this kind in this run: nothing to tag.")
    return change_tags(store, run, rows, tag, who)


def to_csv(run: Run) -> str:
    """Every candidate pair as CSV: the files named relative to their folder, never as a
    server path, every text cell escaped for spreadsheets."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    found = run.duplicates
    rows = run.rows
    for p in [] if found is None else found.itertuples():
        a, b = int(p.a), int(p.b)
        copy = {None: "unconfirmed", True: "yes", False: "no"}[is_copy(p.copy)]
        writer.writerow(
            [
                p.kind,
                rows.at[a, "domain"],
                escape(str(rows.at[a, "relpath"])),
                rows.at[b, "domain"],
                escape(str(rows.at[b, "relpath"])),
                copy,
                _number(p.correlation),
                _number(p.pixel_distance),
                _number(p.feature_distance),
            ]
        )
    return out.getvalue()


def _number(value) -> str:
    return "" if value != value else f"{value:.6g}"  # NaN → empty


def export_csv(store: RunStore, run_id: str) -> str:
    run = open_id(store, run_id)
    if run.duplicates is None:
        raise gr.Error("This run has no duplicates to download.")
    path = export_folder() / f"{run.id}_duplicates.csv"
    path.write_text(to_csv(run), encoding="utf-8")
    return str(path)


def section(store: RunStore, editing: Editing, run_id) -> tuple[list, gr.Radio]:
    """The section's components and events: ([note, gallery] to fill when the run loads, the
    kind shown)."""
    text = gr.Markdown(elem_id="duplicates_note")
    kind = gr.Radio(list(KINDS), value=next(iter(KINDS)), label="Show", elem_id="duplicates_kind")
    shown = PathGallery(
        label="Pairs: the copy, then what it copies (pixel correlation r at the best shift)",
        columns=6,
        height=300,
        elem_id="duplicates_gallery",
        object_fit="contain",
    )
    with gr.Row():
        prepare = gr.Button("Download the pairs as CSV", elem_id="duplicates_export")
        exported = gr.File(label="Duplicates", elem_id="duplicates_file", interactive=False)
    prepare.click(partial(export_csv, store), run_id, exported, api_name="duplicates_csv")
    if editing.enabled:
        _tagging(store, editing, run_id, kind, shown)
    gr.on([run_id.change, kind.change], partial(show, store), [run_id, kind], [text, shown])
    return [text, shown], kind


def _tagging(store: RunStore, editing: Editing, run_id, kind, shown) -> None:
    with gr.Row():
        who, token = who_and_token(editing, "duplicates_who", "duplicates_token")
        tag = gr.Textbox(label="Tag", value="duplicate", elem_id="duplicates_tag")
    with gr.Row():
        tag_button = gr.Button("Tag the copies", elem_id="duplicates_tag_button")
        remove_button = gr.Button(
            "Flag the copies for removal", variant="stop", elem_id="duplicates_remove_button"
        )
    done = gr.Markdown(elem_id="duplicates_done")
    done.change(lambda run, label: show(store, run, label)[1], [run_id, kind], shown)
    tag_button.click(partial(tag_copies, store, editing), [run_id, kind, tag, who, token], done)
    remove_button.click(
        lambda run, label, name, secret: tag_copies(
            store, editing, run, label, REMOVE, name, secret
        ),
        [run_id, kind, who, token],
        done,
    )
