"""The Python API (lib/__init__.py): the README's example runs as written, and each entry
point answers what the run's files hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import lib as gapscope
from tests.conftest import one_line

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_on_a_published_run(published_run, results_dir, capsys):
    code = readme_example().replace('"results"', repr(str(results_dir)))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    fd = published_run.metrics["levels"]["c3"]["metrics"]["fd"]["value"]
    assert f"FD at c3: {fd:.2f}" in printed


def test_the_gap_table_holds_every_metric_of_metrics_json(published_run):
    table = gapscope.gap_table(published_run)
    levels = published_run.metrics["levels"]
    assert len(table) == sum(len(m["metrics"]) for m in levels.values())
    row = table[(table.level == "c2") & (table.metric == "auc")].iloc[0]
    record = levels["c2"]["metrics"]["auc"]
    assert row.value == record["value"] and [row.lo, row.hi] == record["ci95"]


def test_neighbours_are_the_runs_own_nearest_first(published_run):
    indices, distances = published_run.neighbours("c4")
    near = gapscope.neighbours(published_run, "c4", image=5)
    assert near.id.tolist() == indices[5].tolist()
    assert np.all(np.diff(near.distance.to_numpy()) >= 0)
    assert set(near.domain) <= {"real", "synthetic"} and "relpath" in near


def test_scores_and_features_are_one_row_per_image(published_run):
    scores = gapscope.scores(published_run, "c1")
    assert sorted(scores.id) == list(range(len(published_run.images)))
    assert gapscope.level_features(published_run, "c1").shape[0] == len(published_run.images)


def test_a_wrong_level_or_image_is_a_one_line_error(published_run):
    with pytest.raises(gapscope.GapscopeError) as exc:
        gapscope.scores(published_run, "p9")
    assert "p9" in one_line(exc) and "c1" in one_line(exc)
    with pytest.raises(gapscope.GapscopeError) as exc:
        gapscope.neighbours(published_run, "c1", image=10**6)
    assert "no image" in one_line(exc)


def test_compare_runs_lines_up_two_runs_metrics(published_run, results_dir):
    other = json.loads((published_run.dir / "metrics.json").read_text())
    both = gapscope.compare_runs(published_run, gapscope.open_run(results_dir, published_run.id))
    assert len(both) == sum(len(m["metrics"]) for m in other["levels"].values())
    assert (both.change == 0).all()


def every_flag():
    """(command, flag) for every option of every `batch` command."""
    import typer

    from batch.cli import app

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
            return
        for p in command.params:
            for flag in [*p.opts, *getattr(p, "secondary_opts", [])]:
                if flag.startswith("--") and flag != "--help":
                    yield " ".join(path), flag

    return list(walk(typer.main.get_command(app), []))


def test_every_flag_of_every_batch_command_is_in_the_readme():
    text = README.read_text()
    flags = every_flag()
    assert len(flags) > 150 and ("run", "--dask") in flags
    missing = [
        f"{command} {flag}"
        for command, flag in flags
        # --no-x is documented with --x
        if not re.search(re.escape(flag.replace("--no-", "--")) + r"(?![\w-])", text)
    ]
    assert not missing, f"undocumented: {', '.join(missing)}"


def test_a_client_gets_the_gap_table_and_neighbours_from_the_served_demo(demo_url, published_run):
    """The README's gradio_client calls, against a served demo: named endpoints only."""
    from gradio_client import Client

    client = Client(demo_url, verbose=False)
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/list_runs", "/gap_table", "/neighbours", "/select_point"} <= names
    assert not [n for n in names if n.startswith(("/partial", "/lambda", "/on_run"))], names
    assert published_run.id in [r["id"] for r in client.predict(api_name="/list_runs")]
    rows = client.predict(published_run.id, api_name="/gap_table")
    want = gapscope.gap_table(published_run)
    assert len(rows) == len(want) and rows[0]["value"] == want.value.iloc[0]
    near = client.predict(published_run.id, "c3", 0, api_name="/neighbours")
    assert [r["id"] for r in near] == published_run.neighbours("c3")[0][0].tolist()
