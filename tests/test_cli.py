"""`python -m batch`: real runs on messy inputs, and one-line errors that publish nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import batch, one_error_line

pytestmark = pytest.mark.slow


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    error = one_error_line(result)
    for word in words:
        assert word in error, error


@pytest.fixture(scope="module")
def messy(example_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Real images plus every kind of awkward file a user's folder holds."""
    root = tmp_path_factory.mktemp("messy")
    real, synthetic = root / "real", root / "synthetic"
    shutil.copytree(example_dir / "real", real)
    shutil.copytree(example_dir / "synthetic", synthetic)
    good = np.asarray(Image.open(next((example_dir / "real").rglob("*.png"))))
    odd = real / "odd"
    odd.mkdir()
    Image.fromarray(good[..., 0]).save(odd / "gray.png")
    Image.fromarray(np.dstack([good, np.full(good.shape[:2], 200, np.uint8)])).save(
        odd / "rgba.png"
    )
    Image.fromarray(good).convert("P").save(odd / "palette.png")
    Image.fromarray(good[..., 0].astype(np.uint16) * 257).save(odd / "sixteen.png")
    Image.fromarray(good).save(odd / "image.jpg", quality=90)
    data = (odd / "gray.png").read_bytes()
    (real / "truncated.png").write_bytes(data[: len(data) // 2])
    (real / "notes.jpg").write_text("not an image at all")
    (real / "README.txt").write_text("ignored: not an image extension")
    return real, synthetic


def test_messy_folders_under_cron_publish_a_run_listing_skipped_files(messy, tmp_path):
    """Every awkward file a folder holds, and stdout a pipe, as under cron: plain lines
    saying when each stage starts and ends, no progress bars."""
    real, synthetic = messy
    result = batch(
        "run",
        "--real",
        real,
        "--synthetic",
        synthetic,
        "--results",
        tmp_path,
        "--k",
        5,
        "--no-plots",
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unusable files" in result.stdout
    run_dir = (tmp_path / "latest").resolve()
    m = json.loads((run_dir / "manifest.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {"truncated.png", "notes.jpg"}
    assert all(skipped.values())
    assert m["counts"]["real"] == 40 + 5  # the grey, RGBA, palette, 16-bit and JPEG images
    assert m["inputs"][0]["skipped"] == 2
    lines = [line.split(" ", 2)[2] for line in result.stdout.splitlines() if line[:2] == "20"]
    stages = [
        "scan",
        "model",
        "extract",
        "project",
        "atlas",
        "neighbors",
        "gap",
        "duplicates",
        "modes",
        "attribution",
    ]
    starts = [line.split(":")[0] for line in lines if ": started" in line]
    ends = [line.split(":")[0] for line in lines if ": done in " in line]
    assert starts == ends == stages
    assert "extract: started (85 images)" in lines
    assert any(
        re.fullmatch(
            r"extract: done in [\d.]+ s \(85 images, \d+ from the feature "
            r"cache\)",
            line,
        )
        for line in lines
    ), lines
    assert next(line for line in lines if line.startswith("scan: done")).endswith(
        "(45 real, 40 synthetic)"
    )
    assert "━" not in result.stdout + result.stderr  # no rich bars in a log


def test_long_work_reports_progress_between_stage_lines():
    import io

    from batch.progress import LineProgress

    now = [0.0]
    out = io.StringIO()
    progress = LineProgress(out, every=30, clock=lambda: now[0])
    progress.start("extract", 1000)
    for _ in range(10):
        now[0] += 10
        progress.advance("extract", 50)
    lines = [line.split(" ", 2)[2] for line in out.getvalue().splitlines()]
    # one line per 30 s of work, with counts and the rate
    assert lines == [
        "extracting features: 150/1000 (15 %), 5.0/s",
        "extracting features: 300/1000 (30 %), 5.0/s",
        "extracting features: 450/1000 (45 %), 5.0/s",
    ]


def test_arrays_with_sample_crop_and_random_weights(example_dir, tmp_path):
    from demo.runs import banner
    from lib.inputs.example import real_digits, to_rgb
    from lib.store.runs import RunStore

    digits, _ = real_digits(60, seed=1)
    np.save(tmp_path / "real.npy", to_rgb(digits, size=40))
    result = batch(
        "run",
        "--real",
        tmp_path / "real.npy",
        "--synthetic",
        example_dir / "synthetic",
        "--results",
        tmp_path / "results",
        "--sample",
        30,
        "--crop",
        48,
        "--k",
        4,
        "--no-plots",
        "--backbone",
        "resnet18",
        "--random-weights",
    )
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stderr  # said loudly in the log...
    assert "smaller than --crop 48 and were padded" in result.stdout
    run = RunStore(tmp_path / "results").open()
    m = run.manifest
    assert m["backbone"]["random_weights"] is True  # ...in the manifest...
    assert m["backbone"]["levels"] == ["layer1", "layer2", "layer3", "layer4"]
    assert "RANDOM WEIGHTS" in banner(run).splitlines()[0]  # ...and first in the demo
    assert m["counts"] == {"real": 30, "synthetic": 30}
    assert m["inputs"][0]["kind"] == "array"
    assert m["image_size"] == [48, 48]
    assert m["padded"] == 30
    assert not (run.dir / "plots").exists()
    # arrays have no files to serve: the demo shows the thumbnails written into the run
    assert run.image_file(0) == run.thumb(0) and run.thumb(0).is_file()


@pytest.fixture()
def store_with_run(published_run, tmp_path) -> Path:
    """A results folder whose latest run must survive every failed run below."""
    results = tmp_path / "results"
    shutil.copytree(published_run.dir.parent.parent, results, symlinks=True)
    return results


def _nothing_published(results: Path, before: str) -> None:
    assert os.readlink(results / "latest") == before
    assert not [p for p in (results / "runs").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["does not exist"]),
        ("empty", ["holds no images"]),
        ("few", ["n_neighbors", "--n-neighbors"]),
        ("bad-npy", ["(N, H, W, 3)"]),
        ("both-sizes", ["--crop", "--resize"]),
        ("mismatch", ["does not match", "keys"]),
        ("truncated-checkpoint", ["cannot be read"]),
        ("sizes", ["different sizes", "--crop"]),
        ("d2-retinanet", ["MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone"]),
        ("projection", ["isomap", "umap, pca, tsne"]),
        ("perplexity", ["80 images", "--perplexity"]),
        ("backend", ["unknown backend 'gpu'", "auto, cuml, cpu"]),
        ("precision", ["unknown precision 'fp16'", "auto, fp32, bf16"]),
        ("checkpoint-twice", ["give the checkpoint once"]),
        ("unwritable-results", ["cannot create the run store", "--results"]),
    ],
)
def test_bad_input_is_one_line_and_publishes_nothing(
    case, words, store_with_run, example_dir, tmp_path
):
    import torch
    import torchvision

    real, synthetic = example_dir / "real", example_dir / "synthetic"
    extra: list = []
    if case == "missing":
        real = tmp_path / "nowhere"
    elif case == "empty":
        real = tmp_path / "empty"
        real.mkdir()
    elif case == "few":
        real = tmp_path / "few"
        real.mkdir()
        for p in sorted((example_dir / "real").rglob("*.png"))[:10]:
            shutil.copy(p, real / p.name)
    elif case == "bad-npy":
        real = tmp_path / "bad.npy"
        np.save(real, np.zeros((10, 32, 32), np.uint8))
    elif case == "both-sizes":
        extra = ["--crop", 32, "--resize", 32]
    elif case == "mismatch":
        ckpt = tmp_path / "resnet18.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
        extra = ["--checkpoint", ckpt]
    elif case == "truncated-checkpoint":
        ckpt = tmp_path / "cut.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
        extra = ["--checkpoint", ckpt, "--backbone", "resnet18"]
    elif case == "sizes":
        real = tmp_path / "sizes"
        shutil.copytree(example_dir / "real", real)
        Image.new("RGB", (50, 70), "white").save(real / "odd_size.png")
    elif case == "d2-retinanet":
        from tests.test_detectron2 import write_configs

        model = {"BACKBONE": {"NAME": "build_retinanet_resnet_fpn_backbone"}}
        extra = ["--detectron2-config", write_configs(tmp_path / "cfg", model), "--random-weights"]
    elif case == "projection":
        extra = ["--projection", "umap", "--projection", "isomap"]
    elif case == "perplexity":
        extra = ["--projection", "tsne", "--perplexity", 50]
    elif case == "backend":
        extra = ["--backend", "gpu"]
    elif case == "precision":
        extra = ["--precision", "fp16"]
    elif case == "checkpoint-twice":
        extra = ["--backbone", "resnet18:a.pth", "--checkpoint", "b.pth"]
    results = store_with_run
    if case == "unwritable-results":
        (tmp_path / "a-file").write_text("")
        results = tmp_path / "a-file" / "results"
    before = os.readlink(store_with_run / "latest")
    result = batch("run", "--real", real, "--synthetic", synthetic, "--results", results, *extra)
    assert_one_line_error(result, *words)
    _nothing_published(store_with_run, before)


def test_help_lists_commands():
    result = batch("--help")
    assert result.returncode == 0
    for command in ("run", "example", "runs", "backbones"):
        assert command in result.stdout


def test_a_detectron2_detector_runs_through_batch_and_demo(example_dir, tmp_path):
    """A detectron2 checkpoint + `_BASE_` config, no detectron2 installed: p2..p6 end to end."""
    from demo import overlap as views
    from demo.runs import banner
    from lib.store.runs import RunStore
    from tests.test_detectron2 import Spec, d2_state, save_pth, write_configs

    spec = Spec()
    config = write_configs(tmp_path / "configs", spec.model_yaml())
    ckpt = save_pth(tmp_path / "model_final.pth", d2_state(spec))
    result = batch(
        "run",
        "--real",
        example_dir / "real",
        "--synthetic",
        example_dir / "synthetic",
        "--results",
        tmp_path / "results",
        "--detectron2-config",
        config,
        "--checkpoint",
        ckpt,
        "--k",
        4,
        "--no-plots",
    )
    assert result.returncode == 0, result.stderr
    run = RunStore(tmp_path / "results").open()
    b = run.manifest["backbone"]
    assert b["name"] == "detectron2" and b["levels"] == ["p2", "p3", "p4", "p5", "p6"]
    assert b["input_format"] == "BGR" and b["size_divisibility"] == 32
    assert str(ckpt) in b["weights"] and not b["random_weights"]
    assert run.features("p2").shape == (80, spec.fpn_out)
    assert set(run.metrics["levels"]) == set(b["levels"])
    fig = views.overlap_figure(run, "p4", "synthetic", "domain")
    assert sum(len(t.customdata) for t in fig.data) == 80
    assert len(views.neighbour_gallery(run, "p6", 0)) == 4
    assert "detectron2" in banner(run)


def test_a_failing_stage_says_so_in_the_log():
    import io

    from batch.progress import LineProgress
    from lib.runtime.progress import Stages

    out = io.StringIO()
    stages = Stages(LineProgress(out))
    with pytest.raises(RuntimeError), stages("gap", "5 levels"):
        raise RuntimeError("disk full\nmore")
    lines = [line.split(" ", 2)[2] for line in out.getvalue().splitlines()]
    assert lines[0] == "gap: started (5 levels)"
    assert re.fullmatch(r"gap: failed after [\d.]+ s \(disk full\)", lines[1]), lines
    assert "gap" not in stages  # no time recorded for a stage that did not finish
