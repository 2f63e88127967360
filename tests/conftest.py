"""Shared fixtures: one small example, one published run and one demo server per session.

Building them once keeps the suite fast: umap-learn's numba compilation and torch's
import are paid once, and the compiled code is cached in .cache/numba between sessions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

N_PER_DOMAIN = 40


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory) -> Path:
    """A small bundled example: 40 real + 40 synthetic digits, 64×64 PNGs."""
    from lib.inputs.example import build_example

    out = tmp_path_factory.mktemp("example") / "example"
    build_example(out, n_real=N_PER_DOMAIN, n_synthetic=N_PER_DOMAIN, seed=0)
    return out


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def schema1_store(tmp_path_factory) -> Path:
    """A copy of tests/fixtures/schema1 (a run published before metrics had one record
    shape): a demo that opens a run writes beside it (`.serving/`), never into the tree."""
    out = tmp_path_factory.mktemp("schema1") / "schema1"
    shutil.copytree(ROOT / "tests" / "fixtures" / "schema1", out)
    return out


def example_config(example_dir: Path):
    """The session's batch settings. Runs published into the shared results folder use
    them, so whichever is latest, the demo shows every projection."""
    from lib.analysis.reduce import TSNEParams
    from lib.jobs.run import RunConfig

    return RunConfig.of(
        real=example_dir / "real",
        synthetic=example_dir / "synthetic",
        k=8,
        projections=("umap", "pca", "tsne"),
        tsne=TSNEParams(perplexity=15),  # 80 images: t-SNE needs more than 3 × perplexity
    )


@pytest.fixture(scope="session")
def published_run(example_dir, results_dir):
    """The batch job run once on the small example, as `make batch` would."""
    from lib.jobs.run import run
    from lib.store.runs import RunStore

    return run(example_config(example_dir), RunStore(results_dir))


WHATIF_N = 300  # per domain in the constructed case


def _changed_copy(src, dst, how: str, rng):
    """`src` written to `dst` as it is, shifted 1 px, given σ = 2 noise, or resized down
    and back."""
    from PIL import Image

    im = np.asarray(Image.open(src).convert("RGB")).astype(float)
    if how == "shift":
        im = np.roll(im, 1, axis=1)
    if how == "noise":
        im = im + rng.normal(0, 2, im.shape)
    out = Image.fromarray(np.clip(np.rint(im), 0, 255).astype(np.uint8))
    if how == "resize":
        size = out.size
        out = out.resize((size[0] - 6, size[1] - 6), Image.Resampling.BILINEAR).resize(size)
    out.save(dst)


@pytest.fixture(scope="session")
def planted_run(example_dir, tmp_path_factory):
    """The example's 40 + 40 digits with copies planted: 4 real digits into the synthetic
    set (exact, shifted 1 px, σ = 2 noise, resized), a synthetic digit repeated and a real
    digit repeated (resized). (the published run, {planted file: the file it copies})."""
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    root = tmp_path_factory.mktemp("planted")
    for domain in ("real", "synthetic"):
        shutil.copytree(example_dir / domain, root / domain)
    reals = sorted((root / "real").rglob("*.png"))
    fakes = sorted((root / "synthetic").rglob("*.png"))
    rng = np.random.default_rng(0)
    copies = {}
    for i, how in enumerate(("exact", "shift", "noise", "resize")):
        src = reals[5 * i]
        dst = root / "synthetic" / src.parent.name / f"copy_{how}.png"
        _changed_copy(src, dst, how, rng)
        copies[dst.name] = src.name
    for src, how in ((fakes[3], "exact"), (reals[30], "resize")):
        dst = src.parent / f"again_{src.name}"
        _changed_copy(src, dst, how, rng)
        copies[dst.name] = src.name
    config = RunConfig.of(
        real=root / "real",
        synthetic=root / "synthetic",
        projections=("pca",),
        plots=False,
        attribution=0,
        atlas_level="none",
    )
    return run(config, RunStore(root / "results")), copies


def run_embeddings(folder: Path, real: np.ndarray, fake: np.ndarray, **options):
    """Two arrays as given embeddings (a .npy and a CSV of made-up paths per domain) through
    the batch job (PCA only, no plots, and `options`); the published run."""
    import pandas as pd

    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    for name, x in (("real", real), ("synthetic", fake)):
        np.save(folder / f"{name}.npy", np.asarray(x, dtype=np.float32))
        pd.DataFrame({"path": [f"{name[0]}{i}.png" for i in range(len(x))]}).to_csv(
            folder / f"{name}.csv", index=False
        )
    config = RunConfig.of(
        real=folder / "real.npy",
        synthetic=folder / "synthetic.npy",
        projections=("pca",),
        plots=False,
        **options,
    )
    return run(config, RunStore(folder / "results"))


@pytest.fixture(scope="session")
def filter_gap_store(tmp_path_factory):
    """The constructed case with a known answer (lib.inputs.example.build_filter_gap: real
    digits against sharpened, noisier ones), run, then a what-if run of it: blur at two
    strengths and histogram matching, at c2 and c3. Returns its run store."""
    from lib.inputs.example import build_filter_gap
    from lib.jobs.run import RunConfig, run
    from lib.jobs.whatif import WhatIfJob, run_whatif
    from lib.store.runs import RunStore

    root = tmp_path_factory.mktemp("filter_gap")
    build_filter_gap(root / "data", n=WHATIF_N)
    store = RunStore(root / "results")
    data = root / "data"
    config = RunConfig.of(
        real=data / "real",
        synthetic=data / "synthetic",
        projections=("pca",),
        atlas_level="none",
        attribution=0,
        plots=False,
    )
    run(config, store)
    job = WhatIfJob(
        transforms=["blur=0.75,1.5", "histmatch=1"],
        levels=["c2", "c3"],
        synthetic=WHATIF_N,
        real=WHATIF_N,
        resamples=50,
        pairs=3,
    )
    run_whatif(job, store)
    return store


def batch(*args) -> subprocess.CompletedProcess:
    """`python -m batch ARGS` as a user runs it, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "batch", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line a failed batch command printed (no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The message of a raised GapscopeError, checked to be the one line users see."""
    text = str(exc.value)
    assert text and "\n" not in text, repr(text)
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_url(published_run, results_dir):
    """`python -m demo` serving the published run, on a free port."""
    with serve_demo(results_dir) as url:
        yield url


@contextlib.contextmanager
def serve_demo(results_dir: Path, timeout: float = 90, process: bool = False, args=()):
    """`python -m demo` over a results folder (and `args`), on a free port; yields its URL
    once it answers (within `timeout` seconds), with its process when `process`."""
    port = free_port()
    log = open(results_dir / "demo.log", "w")
    command = [sys.executable, "-m", "demo", "--results", str(results_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo exited: {(results_dir / 'demo.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"demo did not start within {timeout:.0f} s")
    try:
        yield (url, proc) if process else url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def served(url: str, path) -> int:
    """The HTTP status the demo at `url` answers for a file path."""
    try:
        with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


OBJECT_SCENES = 45  # per domain: ~160 objects each, every size stratum


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """The object example (digits placed on canvases of mixed sizes, COCO boxes) run
    through `python -m batch run` with a small detectron2 detector (random weights, its
    config's test size 320): (the results folder, the example's folder)."""
    from lib.inputs.example import build_object_example
    from tests.test_detectron2 import Spec, build

    root = tmp_path_factory.mktemp("objects")
    data = build_object_example(root / "data", OBJECT_SCENES).root
    config, ckpt = build(root / "d2", Spec(), INPUT={"MIN_SIZE_TEST": 320, "MAX_SIZE_TEST": 400})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch",
            "run",
            "--real",
            str(data / "real"),
            "--synthetic",
            str(data / "synthetic"),
            "--real-boxes",
            str(data / "real.json"),
            "--synthetic-boxes",
            str(data / "synthetic.json"),
            "--detectron2-config",
            str(config),
            "--checkpoint",
            str(ckpt),
            "--results",
            str(root / "results"),
            "--k",
            "8",
            "--projection",
            "umap",
            "--atlas-level",
            "none",
            "--no-plots",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return root / "results", data


def trained_auc(shift: float, n_train: int, d: int, trainings: int, seed: int) -> float:
    """The truth a cross-validated AUC estimates, for two d-dim standard Gaussians one
    `shift` apart in one dimension: the population AUC (on 10,000 + 10,000 fresh points)
    of the logistic regression trained on `n_train` per domain, averaged over
    `trainings` fits."""
    from sklearn.linear_model import LogisticRegression

    from lib.analysis.gap.classifier import rank_auc

    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(10_000, bool), np.ones(10_000, bool)]
    aucs = []
    for _ in range(trainings):
        x = rng.normal(size=(2 * n_train, d))
        x[n_train:, 0] += shift
        y = np.r_[np.zeros(n_train), np.ones(n_train)]
        clf = LogisticRegression(max_iter=500, class_weight="balanced").fit(x, y)
        t = rng.normal(size=(20_000, d))
        t[10_000:, 0] += shift
        aucs.append(rank_auc(labels, clf.decision_function(t)))
    return float(np.mean(aucs))
