"""Curating in the demo: the selected image's tags and label, and — when the demo may
write — tag it (or it and its neighbours), flag it for removal, correct its label, undo,
and download the annotations. Everything goes through lib.store.annotations (SQLite beside
the runs), so the command line (`batch annotations`) and the demo see the same edits.

Who may write (`Editing`): a demo on this machine only (127.0.0.1) writes freely; a
demo others can reach is read-only unless started with a write token (`--write-token`
or GAPSCOPE_WRITE_TOKEN), which each change must then carry; a read-only demo shows no
editing controls.
"""

from __future__ import annotations

import atexit
import hmac
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import gradio as gr

from demo import markup
from demo.runs import open_id
from lib.runtime.errors import GapscopeError
from lib.store import curation
from lib.store.annotations import REMOVE, Annotations, keys_of
from lib.store.runs import RunStore

SCOPES = ("this image", "it and its neighbours", "the picked images")
EXPORTS = {
    "CSV": "csv",
    "JSON": "json",
    "corrected metadata.csv": "metadata",
    "a tag's images (.zip)": "zip",
}


@dataclass(frozen=True)
class Editing:
    """Whether the demo writes annotations, and the token a change must carry (None:
    none needed)."""

    enabled: bool
    token: str | None = None

    @classmethod
    def decide(cls, host: str, token: str | None, local_hosts: tuple[str, ...]) -> Editing:
        if token:
            return cls(True, token)
        return cls(host in local_hosts)

    def check(self, given: str | None) -> None:
        if not self.enabled:
            raise gr.Error("This demo is read-only.")
        if self.token and not hmac.compare_digest((given or "").encode(), self.token.encode()):
            raise gr.Error("Wrong write token: nothing was changed.")


def image_notes(store: RunStore, run_id: str, row: int | None) -> str:
    """What users decided about an image: its tags and a corrected label."""
    return selection_notes(store, run_id, row)[0]


def selection_notes(store: RunStore, run_id: str, row: int | None) -> tuple[str, str]:
    """The notes on the selected image (its tags and a corrected label), and its label
    for the label box."""
    run = open_id(store, run_id)
    if row is None or not 0 <= row < len(run.rows):
        return "", ""
    (key,) = keys_of(run.rows, [row])
    tags, label = Annotations.of(store.root).about(key)
    parts = [f"tags: {markup.text(', '.join(sorted(tags)))}" if tags else "no tags"]
    if label:
        old, new = markup.text(label[0] or "–"), markup.text(label[1])
        parts.append(f"label corrected: {old} → **{new}**")
    shown = label[1] if label else str(run.rows.at[row, "category"])
    return f"#{row}: " + "; ".join(parts), shown


def tag_selected(
    store: RunStore,
    editing: Editing,
    run_id: str,
    level: str,
    row,
    tag: str,
    scope: str,
    who: str,
    token: str,
    picked=None,
    untag: bool = False,
) -> str:
    """Tag (or untag) the selected image, it and its nearest neighbours at `level`, or
    the `picked` images (a lasso on the 2D view, neighbours clicked in the gallery)."""
    editing.check(token)
    run = open_id(store, run_id)
    if scope == SCOPES[2]:
        rows = [int(r) for r in picked or []]
        if not rows:
            raise gr.Error("Pick images first: a lasso on the 2D view, or click neighbours.")
        row = rows[0] if row is None or int(row) < 0 else row
    else:
        rows = _selected(row)
    if scope == SCOPES[1]:
        rows += [int(j) for j in run.neighbours(level)[0][rows[0]]]
    return (
        change_tags(store, run, rows, tag, who, untag) + " " + image_notes(store, run_id, int(row))
    )


def change_tags(
    store: RunStore, run, rows: list[int], tag: str, who: str, untag: bool = False
) -> str:
    """Tag (or untag) the run's `rows` in the annotations; says how many changed. The
    caller has checked the user may write."""
    notes = Annotations.of(store.root)
    try:
        change = notes.untag if untag else notes.tag
        n = change(keys_of(run.rows, rows), tag, who or "anonymous")
    except GapscopeError as exc:
        raise markup.error(exc) from None
    done = "untagged" if untag else "tagged"
    return f"{done} {n} of {len(rows)} images {markup.text(repr(tag.strip()))}."


def flag_removal(store, editing, run_id, level, row, scope, who, token, picked=None) -> str:
    return tag_selected(store, editing, run_id, level, row, REMOVE, scope, who, token, picked)


def save_label(
    store: RunStore, editing: Editing, run_id: str, row, label: str, who: str, token: str
) -> str:
    editing.check(token)
    run, (r,) = open_id(store, run_id), _selected(row)
    (key,) = keys_of(run.rows, [r])
    try:
        changed = Annotations.of(store.root).set_label(
            key, str(run.rows.at[r, "category"]), label, who or "anonymous"
        )
    except GapscopeError as exc:
        raise markup.error(exc) from None
    return ("label saved. " if changed else "label unchanged. ") + image_notes(store, run_id, r)


def undo(store: RunStore, editing: Editing, run_id: str, row, who: str, token: str) -> str:
    editing.check(token)
    done = Annotations.of(store.root).undo(who or "anonymous")
    return f"{done}. {image_notes(store, run_id, row)}"


def export_file(
    store: RunStore, run_id: str, kind: str, tag: str = "", domain: str = "synthetic"
) -> str:
    """A file to download: the run's annotations as CSV or JSON, the domain's corrected
    metadata.csv (removed images dropped), or the images with `tag` as a zip of a
    folder per label (the run's web copies: the demo hands out no original)."""

    run, notes = open_id(store, run_id), Annotations.of(store.root)
    fmt = EXPORTS[kind]
    folder = export_folder()
    try:
        if fmt == "zip":
            tag = (tag or "").strip()
            if not tag:
                raise GapscopeError("name the tag whose images to download")
            path = folder / f"{run.id}_{_file_safe(tag)}.zip"
            curation.gather_zip(run, notes, tag, path)
            return str(path)
        if fmt == "metadata":
            text, name = curation.corrected_metadata(run, notes, domain), "metadata.csv"
        elif fmt == "csv":
            text, name = curation.to_csv(curation.annotated(run, notes)), "annotations.csv"
        else:
            text = curation.to_json(curation.annotated(run, notes), run.id, notes.last_seq())
            name = "annotations.json"
    except GapscopeError as exc:
        raise markup.error(exc) from None
    path = folder / f"{run.id}_{name}"
    path.write_text(text, encoding="utf-8")
    return str(path)


KEEP_EXPORTS = 16  # folders: more than the exports that can be between return and copy


@lru_cache(maxsize=1)
def _exports_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="gapscope-exports-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def export_folder() -> Path:
    """A fresh folder for one export. Gradio copies the returned file into its own cache
    as the event ends, so only the newest `KEEP_EXPORTS` are kept (8 events run at once)
    and the rest go when the demo stops: exports never pile up in /tmp."""
    root = _exports_root()
    done = sorted(root.iterdir(), key=_age)
    for old in done[: max(0, len(done) - KEEP_EXPORTS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def _age(folder: Path) -> int:
    try:
        return folder.stat().st_mtime_ns
    except OSError:  # removed by another export meanwhile
        return 0


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80] or "tag"


def _selected(row) -> list[int]:
    if row is None or int(row) < 0:
        raise gr.Error("Select an image first: click a point or find it by name.")
    return [int(row)]


def who_and_token(editing: Editing, who_id: str, token_id: str) -> tuple:
    """The editor's name and write token boxes (the token shown only when one is needed),
    as every tab that writes annotations asks for them."""
    who = gr.Textbox(label="Your name", placeholder="anonymous", elem_id=who_id)
    token = gr.Textbox(
        label="Write token",
        type="password",
        elem_id=token_id,
        visible=editing.token is not None,
    )
    return who, token


def panel(store: RunStore, editing: Editing, run_id, level, selected_row, picked) -> None:
    """The selected image's tags and label (always), the editing controls (when the demo
    may write) and the downloads, inside the caller's layout; `selected_row` is the
    hidden number the selection events set, `picked` the rows a lasso selected."""
    notes = gr.Markdown(elem_id="image_notes")
    if not editing.enabled:
        selected_row.change(partial(image_notes, store), [run_id, selected_row], notes)
    else:
        with gr.Accordion("Curate the selected image", open=True, elem_id="curate"):
            with gr.Row():
                who, token = who_and_token(editing, "who", "write_token")
            with gr.Row():
                tag = gr.Textbox(label="Tag", placeholder="e.g. odd lighting", elem_id="tag_name")
                scope = gr.Radio(
                    list(SCOPES), value=SCOPES[0], label="Apply to", elem_id="tag_scope"
                )
            with gr.Row():
                tag_button = gr.Button("Tag", elem_id="tag_button")
                untag_button = gr.Button("Untag", elem_id="untag_button")
                remove_button = gr.Button(
                    "Flag for removal", variant="stop", elem_id="remove_button"
                )
            with gr.Row():
                label = gr.Textbox(label="Label", elem_id="label_box", scale=3)
                label_button = gr.Button("Save label", elem_id="label_button")
            undo_button = gr.Button("Undo my last change", elem_id="undo_button")
        # one event for both: the label box never lags behind the notes it belongs to
        selected_row.change(partial(selection_notes, store), [run_id, selected_row], [notes, label])
        where, mine = [run_id, level, selected_row], [who, token]
        # a gr.State input (the lasso's rows) is no API parameter: /tag keeps its signature
        events = {  # api name: (button, function, inputs)
            "tag": (tag_button, tag_selected, [*where, tag, scope, *mine, picked]),
            "untag": (
                untag_button,
                partial(tag_selected, untag=True),
                [*where, tag, scope, *mine, picked],
            ),
            "flag_removal": (remove_button, flag_removal, [*where, scope, *mine, picked]),
            "save_label": (label_button, save_label, [run_id, selected_row, label, *mine]),
            "undo": (undo_button, undo, [run_id, selected_row, *mine]),
        }
        for name, (button, fn, inputs) in events.items():
            button.click(partial(fn, store, editing), inputs, notes, api_name=name)
        downloads(store, run_id)  # the exports hold server paths: for editors only


def downloads(store: RunStore, run_id, prefix: str = "") -> None:
    """The annotation downloads (CSV, JSON, corrected metadata.csv); `prefix`: for the
    element ids of a second copy on the page (the atlas tab's)."""
    with gr.Row():
        kind = gr.Radio(
            list(EXPORTS),
            value="CSV",
            label="Download the annotations",
            elem_id=f"{prefix}export_kind",
            scale=2,
        )
        tag = gr.Textbox(label="Tag (for the .zip)", elem_id=f"{prefix}export_tag")
        prepare = gr.Button("Prepare download", elem_id=f"{prefix}export_button")
    exported = gr.File(label="Annotations", elem_id=f"{prefix}export_file", interactive=False)
    prepare.click(
        partial(export_file, store), [run_id, kind, tag], exported, api_name=f"{prefix}export"
    )
