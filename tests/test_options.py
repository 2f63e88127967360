"""The CLI's options come from the parameter dataclasses: one default, one help text."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from batch.cli import app
from lib.analysis.gap import GapParams
from lib.analysis.reduce import TSNEParams, UMAPParams
from lib.jobs.caricature import CaricatureJob
from lib.jobs.run import RunConfig
from lib.runtime.errors import GapscopeError


@pytest.fixture()
def seen(monkeypatch) -> list:
    """What `batch run` / `batch caricature` would compute with, instead of computing it."""
    import lib.jobs.caricature
    import lib.jobs.run

    calls = []

    def capture(config, store, progress=None):
        calls.append(config)
        raise GapscopeError("captured")

    monkeypatch.setattr(lib.jobs.run, "run", capture)
    monkeypatch.setattr(lib.jobs.caricature, "run_caricatures", capture)
    return calls


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_run_without_options_uses_the_dataclass_defaults(seen, tmp_path):
    invoke("run", "--real", "r", "--synthetic", "s", "--results", tmp_path)
    assert seen == [RunConfig.of(real=Path("r"), synthetic=Path("s"))]


def test_run_options_reach_every_nested_parameter(seen, tmp_path):
    invoke(
        "run",
        "--real",
        "r",
        "--synthetic",
        "s",
        "--results",
        tmp_path,
        "--k",
        4,
        "--n-neighbors",
        7,
        "--umap-seed",
        1,
        "--perplexity",
        12,
        "--gap-k",
        3,
        "--resamples",
        50,
        "--folds",
        3,
        "--min-cluster-size",
        9,
        "--kid-subsets",
        10,
        "--projection",
        "pca",
        "--projection",
        "umap",
        "--projection",
        "pca",
        "--no-plots",
        "--backbone",
        "resnet18:m.pth",
        "--precision",
        "fp32",
    )
    assert seen == [
        RunConfig.of(
            real=Path("r"),
            synthetic=Path("s"),
            k=4,
            backbone="resnet18:m.pth",
            precision="fp32",
            projections=("pca", "umap"),
            plots=False,
            umap=UMAPParams(n_neighbors=7, random_state=1),
            tsne=TSNEParams(perplexity=12),
            gap=GapParams(k=3, resamples=50, folds=3, min_cluster_size=9, kid_subsets=10),
        )
    ]


def test_help_shows_the_defaults_of_the_dataclasses():
    text = invoke("run", "--help").output
    for flag in ("--gap-k", "--resamples", "--folds", "--min-cluster-size", "--n-neighbors"):
        assert flag in text
    assert "[default: 200]" in text  # GapParams.resamples
    assert "ARCH[:CHECKPOINT][@CONFIG]" in text  # brackets survive rich's markup


def test_caricature_options_build_the_job(seen, tmp_path):
    invoke(
        "caricature",
        "--results",
        tmp_path,
        "--model",
        "a=resnet18:a.pth",
        "--model",
        "b=efficientnet-lite0",
        "--layer",
        "layer3",
        "--mean",
        "0.5,0.5,0.5",
        "--steps",
        9,
    )
    assert seen == [
        CaricatureJob(
            models=["a=resnet18:a.pth", "b=efficientnet-lite0"],
            layers=["layer3"],
            mean=(0.5, 0.5, 0.5),
            steps=9,
        )
    ]
    bad = invoke("caricature", "--model", "a=resnet18", "--layer", "x", "--std", "1,2")
    assert isinstance(bad.exception, GapscopeError)
    assert "--std takes 3 comma-separated numbers" in str(bad.exception)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resamples", 0], "--resamples must be at least 20, got 0"),
        (["--folds", 1], "--folds must be at least 2, got 1"),
        (["--min-cluster-size", 1], "--min-cluster-size must be at least 2, got 1"),
        (["--kid-subset-size", 1], "--kid-subset-size must be at least 2, got 1"),
        (["--gap-k", 0], "--gap-k must be at least 1, got 0"),
        (["--n-neighbors", 1], "--n-neighbors must be at least 2, got 1"),
        (["--k", 0], "--k must be at least 1, got 0"),
    ],
)
def test_values_that_would_fail_hours_later_fail_before_any_work(seen, tmp_path, args, message):
    result = invoke("run", "--real", "r", "--synthetic", "s", "--results", tmp_path, *args)
    assert isinstance(result.exception, GapscopeError) and not seen
    assert str(result.exception) == message
