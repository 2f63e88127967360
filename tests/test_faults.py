"""A batch job that survives faults: killed in any stage or while publishing, or out of
disk, it publishes nothing half-done, `latest` stays on a whole run, and the rerun
resumes from the feature cache."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, example_config, one_line

from lib.runtime.errors import GapscopeError
from lib.store.runs import RunStore

pytestmark = pytest.mark.slow


def light_config(example_dir):
    """The session's images and model (so its feature cache applies), PCA only: each
    test runs the job twice."""

    return example_config(example_dir).replace(projections=("pca",), plots=False)


@pytest.fixture()
def store(published_run, results_dir, tmp_path):
    """A copy of the session's store: one published run, its feature cache."""
    shutil.copytree(results_dir, tmp_path / "store", symlinks=True)
    return RunStore(tmp_path / "store")


def _run_killed(store: RunStore, example_dir, sabotage: str) -> subprocess.CompletedProcess:
    """The batch job in a child process that SIGKILLs itself where `sabotage` says."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from dataclasses import replace
        from conftest import example_config
        from pathlib import Path
        import lib.jobs.run, lib.store.runs
        from lib.store.runs import RunStore

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        {sabotage}
        config = example_config(Path({str(example_dir)!r})).replace(projections=("pca",),
                                                                    plots=False)
        lib.jobs.run.run(config, RunStore(Path({str(store.root)!r})))
    """)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _resumes(store: RunStore, example_dir, before: str) -> None:
    """Nothing new is served; the rerun completes from the feature cache and removes
    what the killed run left."""
    from lib.jobs.run import run

    assert store.latest_id() == before
    assert store.open().manifest["status"] == "complete"
    again = run(light_config(example_dir), store)
    assert again.manifest["cached_images"] == len(again.images)
    assert store.latest_id() == again.id
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]
    assert store.run_ids() == [again.id, before]  # the killed one is gone
    assert not list(store.root.glob(".latest-*"))


def test_killed_during_projection(store, example_dir):
    before = store.latest_id()
    done = _run_killed(store, example_dir, "lib.jobs.run.measure.project = die")
    assert done.returncode == -signal.SIGKILL
    assert store.run_ids() == [before]
    assert len(list(store.runs_dir.glob(".partial-*"))) == 1  # left behind, for now
    _resumes(store, example_dir, before)


def test_killed_while_switching_latest(store, example_dir):
    """The worst moment: the run is in place, `latest` not yet switched."""
    before = store.latest_id()
    sabotage = textwrap.dedent("""
        real_replace = os.replace
        def switching(src, dst):
            if str(dst).endswith("latest"):
                die()
            return real_replace(src, dst)
        lib.store.runs.os.replace = switching
    """).replace("\n", "\n        ")
    done = _run_killed(store, example_dir, sabotage)
    assert done.returncode == -signal.SIGKILL
    assert store.latest_id() == before  # still the whole previous run
    assert store.run_ids() == [before]  # the run in place is not listed (#27 hole 13)
    _resumes(store, example_dir, before)


def test_a_full_disk_is_one_line_removes_the_partial_run_and_keeps_serving(
    store, example_dir, monkeypatch
):
    import lib.store.runs
    from lib.jobs.run import run

    before = store.latest_id()

    def full(self, rel, frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lib.store.runs.RunWriter, "_table", full)  # projections are the first table
    with pytest.raises(GapscopeError) as exc:
        run(light_config(example_dir), store)
    assert one_line(exc).startswith(f"the disk under {store.root} is full (No space left")
    assert "previous run is still served" in str(exc.value)
    assert store.latest_id() == before and store.run_ids() == [before]
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]


def test_other_write_errors_are_not_called_a_full_disk(store, example_dir, monkeypatch):
    import lib.store.runs
    from lib.jobs.run import run

    def denied(self, rel, frame):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(lib.store.runs.RunWriter, "_table", denied)
    with pytest.raises(PermissionError):
        run(light_config(example_dir), store)
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]
