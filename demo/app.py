"""The Gradio app: a thin layout over demo.views, reading published runs only.

Clicking a point of the plotly 3D scatter reaches Python through a hidden textbox that a
small script fills on `plotly_click` (gr.Plot has no point-click event); see
../shared/notes/gradio-plotly-click.md. The same `select_point` function serves the
browser and the API (`/select_point`).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from demo import caricatures, report, views
from lib.images import THUMB_SIZE
from lib.store import RunStore

BIND_CLICK_JS = r"""
() => {
  const bind = () => {
    const gd = document.querySelector('#overlap_plot .js-plotly-plot');
    if (!gd || gd.__gapscopeBound || typeof gd.on !== 'function') return;
    gd.__gapscopeBound = true;
    gd.on('plotly_click', (ev) => {
      const pt = ev.points[0];
      const id = pt.customdata !== undefined ? pt.customdata : pt.pointNumber;
      const box = document.querySelector('#click_box textarea, #click_box input');
      // the timestamp makes a second click on the same point still count as a change
      box.value = JSON.stringify({id: Array.isArray(id) ? id[0] : id, t: Date.now()});
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
  };
  new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
  bind();
}
"""

CSS = """
#banner {border-left: 4px solid #2ca02c; padding-left: 12px;}
#neighbours .caption-label {font-size: 11px;}
"""


def build_app(results: Path, roots: list[str] | None = None) -> gr.Blocks:
    """The app over the run store at `results`; `roots`: the folders it may serve files
    from (default: `allowed_paths`, computed here)."""
    store = RunStore(results)
    choices = views.run_choices(store)
    latest = store.latest_id()
    # Files are served only from the runs and the folders their images came from.
    roots = roots if roots is not None else allowed_paths(store)
    gr.set_static_paths(roots)

    def _run(run_id: str | None):
        return views.open_run(str(store.open(run_id or None).dir))

    def show_run(
        run_id: str, direction: str | None = None, color_by: str = "domain", method: str = "umap"
    ):
        """Everything that depends on the run; the overlap view keeps the user's direction,
        colouring and projection (when the run has it)."""
        run = _run(run_id)
        level = views.default_level(run)
        fit_on = views.DIRECTIONS.get(direction, "real")
        methods = views.methods(run)
        method = method if method in {name for _, name in methods} else methods[0][1]
        return (
            views.banner(run),
            gr.update(choices=run.levels, value=level),
            gr.update(choices=methods, value=method),
            views.overlap_figure(run, level, fit_on, color_by, method),
            gr.update(choices=run.levels, value=level),
            *show_report(run_id, level, "auc"),
        )

    def show_report(run_id: str, level: str, metric: str):
        """The gap report of a run: table, chart, images to blame at `level`, history."""
        run = _run(run_id)
        if not run.metrics:
            note = "This run has no gap metrics (it predates them): rerun the batch job."
            return note, None, None, [], [], [], [], None
        level = level if level in run.levels else views.default_level(run)
        blame = report.blame_galleries(run, level)
        return (
            report.notes_markdown(run),
            report.summary_table(run),
            report.levels_figure(run),
            blame["least_realistic"],
            blame["most_synthetic"],
            blame["uncovered_real"],
            blame["one_domain_clusters"],
            report.history_figure(store, level, metric),
        )

    def refresh():
        """On page load: list the runs published since the app started, show the latest."""
        run_id = store.latest_id() or run_dd.value
        return gr.update(choices=views.run_choices(store), value=run_id), *show_run(run_id)

    def show_plot(run_id: str, level: str, direction: str, color_by: str, method: str):
        run = _run(run_id)
        if level not in run.levels:
            level = views.default_level(run)
        methods = views.methods(run)
        if method not in {name for _, name in methods}:
            method = methods[0][1]
        return views.overlap_figure(run, level, views.DIRECTIONS[direction], color_by, method)

    def show_caricature_controls(run_id: str):
        """Fill the caricature view's pickers from the run, then show the first pair."""
        run = _run(run_id)
        models, layers, images = caricatures.choices(run)
        if not models:
            empty = gr.update(choices=[], value=None)
            return caricatures.HOW_TO, empty, empty, empty, empty, None, None, None, []
        a, b = models[0], models[min(1, len(models) - 1)]
        return (
            f"{len(run.caricatures['items'])} caricatures: {len(models)} models × "
            f"{len(layers)} layers × {len(images)} images",
            gr.update(choices=images, value=images[0]),
            gr.update(choices=layers, value=layers[-1]),
            gr.update(choices=models, value=a),
            gr.update(choices=models, value=b),
            *show_caricatures(run_id, images[0], layers[-1], a, b),
        )

    def show_caricatures(run_id: str, image: str, layer: str, model_a: str, model_b: str):
        run = _run(run_id)
        if not image or not layer or not model_a:
            return None, None, None, []
        left, right = caricatures.side_by_side(run, image, layer, model_a, model_b)
        return (
            caricatures.input_image(run, image),
            gr.update(value=left[0], label=left[1]) if left else None,
            gr.update(value=right[0], label=right[1]) if right else None,
            caricatures.across_layers(run, image, model_a),
        )

    def select_point(payload: str, run_id: str, level: str):
        """The clicked image, large, and its nearest neighbours in feature space."""
        run = _run(run_id)
        row = views.parse_click(payload)
        if row is None or not 0 <= row < len(run.images) or level not in run.levels:
            return gr.skip(), gr.skip(), gr.skip()
        image = run.image_file(row)
        r = run.images.iloc[row]
        if not _inside(image, roots) or max(r["width"], r["height"]) < THUMB_SIZE:
            image = run.thumb(row)  # tiny originals show better as the upscaled thumbnail
        return (
            gr.update(value=str(image), label=views.caption(run, row)),
            views.neighbour_gallery(run, level, row),
            f"**Selected {views.caption(run, row)}** — `{run.images.iloc[row]['relpath']}`; "
            f"its {run.manifest['config']['k']} nearest neighbours at level {level}:",
        )

    with gr.Blocks(title="gapscope") as app:
        gr.Markdown("# gapscope — does your model see synthetic images like real ones?")
        if not choices:
            gr.Markdown(
                f"No published run in `{results}` yet: run `make batch` (or `make demo`, "
                "which builds the bundled example first)."
            )
            return app
        first = _run(latest or choices[0][1])
        first_level = views.default_level(first)
        first_methods = views.methods(first)
        # allow_custom_value: runs published after start-up (nightly) are valid choices too.
        run_dd = gr.Dropdown(choices=choices, value=first.id, label="Run", allow_custom_value=True)
        banner = gr.Markdown(views.banner(first), elem_id="banner")
        with gr.Tab("Overlap"):
            with gr.Row():
                level_dd = level_dropdown("Level", first)
                method_radio = gr.Radio(
                    first_methods,
                    value=first_methods[0][1],
                    label="Projection",
                    elem_id="projection",
                )
                direction = gr.Radio(
                    list(views.DIRECTIONS),
                    value=list(views.DIRECTIONS)[0],
                    label="Direction",
                    scale=2,
                )
                color_by = gr.Radio(
                    list(views.COLOR_BY), value="domain", label="Colour by", scale=2
                )
            with gr.Row():
                with gr.Column(scale=3):
                    plot = gr.Plot(
                        views.overlap_figure(
                            first, first_level, "real", method=first_methods[0][1]
                        ),
                        elem_id="overlap_plot",
                        label="Overlap (click a point)",
                    )
                with gr.Column(scale=2):
                    selected = gr.Image(
                        label="Selected image", height=260, elem_id="selected_image"
                    )
                    info = gr.Markdown("Click a point in the plot to see its nearest neighbours.")
                    gallery = gr.Gallery(
                        label="Nearest neighbours", columns=4, height=420, elem_id="neighbours"
                    )
        with gr.Tab("Gap report"):
            report_notes = gr.Markdown(elem_id="report_notes")
            report_table = gr.Dataframe(
                headers=report.SUMMARY_HEADERS, label="Gap per level", elem_id="gap_table"
            )
            report_plot = gr.Plot(label="Metrics across levels (95% intervals; KID ± 1 std)")
            with gr.Row():
                blame_level = level_dropdown("Images to blame at level", first)
                history_metric = gr.Dropdown(
                    label="History of",
                    choices=[(report.METRICS[m][0], m) for m in report.METRICS],
                    value="auc",
                )
            least_realistic = gr.Gallery(
                label="Least realistic synthetic images (realism score; < 1 = outside the real "
                "manifold)",
                columns=8,
                height=260,
                elem_id="least_realistic",
            )
            most_synthetic = gr.Gallery(
                label="Most obviously synthetic (out-of-fold domain classifier)",
                columns=8,
                height=260,
            )
            uncovered = gr.Gallery(
                label="Real images no synthetic image covers (what the synthetic data misses)",
                columns=8,
                height=260,
                elem_id="uncovered_real",
            )
            one_domain = gr.Gallery(
                label="Samples from one-domain clusters (real-only: missed; synthetic-only: "
                "invented)",
                columns=8,
                height=260,
                elem_id="one_domain_clusters",
            )
            history = gr.Plot(label="Over all published runs")
        with gr.Tab("Caricatures"):
            cari_note = gr.Markdown(elem_id="caricature_note")
            with gr.Row():
                cari_image = gr.Dropdown(label="Image", allow_custom_value=True)
                cari_layer = gr.Dropdown(label="Layer", allow_custom_value=True)
                cari_a = gr.Dropdown(label="Model 1", allow_custom_value=True)
                cari_b = gr.Dropdown(label="Model 2", allow_custom_value=True)
            with gr.Row():
                cari_input = gr.Image(label="Input image", height=256)
                cari_left = gr.Image(label="Model 1", height=256, elem_id="caricature_left")
                cari_right = gr.Image(label="Model 2", height=256, elem_id="caricature_right")
            cari_grid = gr.Gallery(
                label="Model 1 at every layer",
                columns=6,
                height=300,
                object_fit="contain",
                elem_id="caricature_grid",
            )
        click_box = gr.Textbox(elem_id="click_box", visible="hidden")

        report_outputs = [
            report_notes, report_table, report_plot, least_realistic, most_synthetic, uncovered,
            one_domain, history,
        ]  # fmt: skip
        run_outputs = [banner, level_dd, method_radio, plot, blame_level, *report_outputs]
        run_dd.change(show_run, [run_dd, direction, color_by, method_radio], run_outputs)
        for control in (blame_level, history_metric):
            control.change(show_report, [run_dd, blame_level, history_metric], report_outputs)
        for control in (level_dd, direction, color_by, method_radio):
            control.change(show_plot, [run_dd, level_dd, direction, color_by, method_radio], plot)
        click_box.change(
            select_point,
            [click_box, run_dd, level_dd],
            [selected, gallery, info],
            api_name="select_point",
        )
        app.load(refresh, None, [run_dd, *run_outputs])
        cari_views = [cari_input, cari_left, cari_right, cari_grid]
        cari_controls = [cari_note, cari_image, cari_layer, cari_a, cari_b, *cari_views]
        run_dd.change(show_caricature_controls, run_dd, cari_controls)
        app.load(show_caricature_controls, run_dd, cari_controls)
        for control in (cari_image, cari_layer, cari_a, cari_b):
            control.change(
                show_caricatures, [run_dd, cari_image, cari_layer, cari_a, cari_b], cari_views
            )
        app.load(None, None, None, js=BIND_CLICK_JS)
    return app


def level_dropdown(label: str, run) -> gr.Dropdown:
    # allow_custom_value: another run's levels (switched to later) are valid values too
    return gr.Dropdown(
        label=label, choices=run.levels, value=views.default_level(run), allow_custom_value=True
    )


def allowed_paths(store: RunStore) -> list[str]:
    paths = {str(store.runs_dir.resolve())}
    for run_id in store.run_ids():
        run = views.open_run(str(store.runs_dir / run_id))
        paths.update(str(p) for p in run.image_roots())
    return sorted(paths)


def _inside(path: Path, roots: list[str]) -> bool:
    path = Path(path).resolve()
    return any(path.is_relative_to(root) for root in roots)
