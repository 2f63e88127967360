"""The gap report's modes: the modes of both domains that one over- or under-represents,
in words with their ratio's interval, ranked by their share of the mismatch, and a few
images of each (lib.analysis.gap.modes; metrics.json's `modes`)."""

from __future__ import annotations

import gradio as gr

from demo import markup
from demo.runs import PathGallery, caption, open_id, picture
from lib.store.runs import Run, RunStore

SHOWN = 5  # modes in words and in the gallery


def note(run: Run) -> str:
    found = (run.metrics or {}).get("modes")
    if found is None:
        return (
            "### Modes\nThis run was made before gapscope looked for modes, or with "
            "`--modes-level none`."
        )
    lines = [
        f"### Modes at {markup.text(found['level'])}: what one domain over- or under-represents",
        "",
        f"The domains' shares of {found['k']} modes differ by "
        f"{found['total_variation']:.0%} (total variation; 0 = the same proportions). "
        "The modes that carry most of it:",
        "",
    ]
    for mode in found["modes"][:SHOWN]:
        lines.append(f"- {markup.text(mode['says'])} — {mode['contribution']:.0%} of the mismatch")
    lines += ["", f"Rule: {markup.text(found['rule'])}."]
    return "\n".join(lines)


def gallery(run: Run) -> list[tuple[str, str]]:
    """A few real and synthetic images of each of the top modes, nearest its centre."""
    found = (run.metrics or {}).get("modes")
    items = []
    for mode in [] if found is None else found["modes"][:SHOWN]:
        for domain in ("real", "synthetic"):
            for row in mode["examples"][domain]:
                items.append(
                    (picture(run.thumb(row)), f"mode {mode['mode']} · {caption(run, row)}")
                )
    return items


def show(store: RunStore, run_id: str):
    run = open_id(store, run_id)
    return note(run), gallery(run)


def section(store: RunStore, run_id) -> list:
    """The section's components ([note, gallery], filled when the run changes or loads)."""
    text = gr.Markdown(elem_id="modes_note")
    shown = PathGallery(
        label="Each mode's images nearest its centre: real, then synthetic",
        columns=8,
        height=300,
        elem_id="modes_gallery",
        object_fit="contain",
    )
    run_id.change(lambda run: show(store, run), run_id, [text, shown])
    return [text, shown]
