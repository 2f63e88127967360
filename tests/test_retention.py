"""Partial runs of killed jobs are cleaned up, old runs are pruned (never latest, never
what a demo shows), concurrent runs both publish whole, and everyday mistakes are one
line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, one_line
from test_store import write_run

from lib.runtime.errors import GapscopeError
from lib.store.runs import OWNER, RunStore


def _publish(store: RunStore, n: int = 1) -> list[str]:
    ids = []
    for _ in range(n):
        with store.writing() as writer:
            write_run(writer)
        ids.append(writer.id)
        time.sleep(1.1)  # run ids carry the second they start
    return ids


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_run_removes_partials_whose_writer_is_gone_and_keeps_live_ones(tmp_path):
    store = RunStore(tmp_path)
    abandoned, ownerless, elsewhere, live = (store.begin() for _ in range(4))
    (abandoned.dir / OWNER).write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname()})
    )
    (ownerless.dir / OWNER).unlink()  # left by a gapscope from before owners were written
    (elsewhere.dir / OWNER).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    # `live` is this process's own, still being written
    with store.writing() as writer:
        write_run(writer)
    assert not abandoned.dir.exists() and not ownerless.dir.exists()
    assert live.dir.is_dir() and elsewhere.dir.is_dir()
    assert not (store.runs_dir / writer.id / OWNER).exists()  # published: no owner file


def test_prune_keeps_the_newest_latest_and_what_a_demo_shows(tmp_path):
    store = RunStore(tmp_path)
    oldest, shown, middle, newest = _publish(store, 4)
    store.announce_serving([shown])  # this process plays a demo showing an old run
    with pytest.raises(GapscopeError) as exc:
        store.prune(0)
    assert "keep at least 1" in one_line(exc)
    assert store.prune(1) == [middle, oldest]
    assert store.run_ids() == [newest, shown] and store.latest_id() == newest
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]


def test_a_demo_that_is_gone_protects_nothing(tmp_path):
    store = RunStore(tmp_path)
    old, new = _publish(store, 2)
    (tmp_path / ".serving").mkdir()
    (tmp_path / ".serving" / "x.json").write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "runs": [old]})
    )
    assert store.serving() == set()
    assert store.prune(1) == [old]


def test_the_demo_says_a_removed_run_was_removed(tmp_path):
    import gradio as gr

    from demo.runs import open_id

    store = RunStore(tmp_path)
    old, _ = _publish(store, 2)
    assert open_id(store, old).id == old
    assert old in store.serving()  # the demo announced what it shows
    os.replace(store.runs_dir / old, tmp_path / "elsewhere")  # deleted by hand
    with pytest.raises(gr.Error, match="may have been removed; reload the page"):
        open_id(store, old)


def _cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batch", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_batch_prune_and_nightly_keep(tmp_path):
    store = RunStore(tmp_path / "results")
    first, second, third = _publish(store, 3)
    out = _cli("prune", "--keep", "2", "--results", str(tmp_path / "results"))
    assert (
        out.returncode == 0 and f"deleted 1 old runs (keeping the newest 2): {first}" in out.stdout
    )
    assert store.run_ids() == [third, second]


def test_two_runs_at_once_both_publish_whole_runs(tmp_path):
    from lib.inputs.mixture import write_pair

    real, fake = write_pair(tmp_path / "v", 300, 300, dim=8)
    cmd = [
        sys.executable,
        "-m",
        "batch",
        "run",
        "--real",
        str(real),
        "--synthetic",
        str(fake),
        "--results",
        str(tmp_path / "results"),
        "--projection",
        "pca",
        "--no-plots",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    store = RunStore(tmp_path / "results")
    ids = store.run_ids()
    assert len(ids) == 2 and store.latest_id() in ids
    for run_id in ids:
        assert store.open(run_id).manifest["status"] == "complete"
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]


def test_the_demo_on_a_port_in_use_says_so_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "demo", "--results", str(tmp_path), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        f"error: cannot serve on 127.0.0.1:{port} (Address already in use): pass another "
        "--port, or stop what is using it"
    )
