"""`batch train detector` (#28): a torchvision detector on a registered backbone learns the
object example's scenes, resumes after a kill to the same weights, and refuses bad sets
in one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, batch, one_error_line

SCENES = 14


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from lib.inputs.example import build_object_example

    return build_object_example(tmp_path_factory.mktemp("scenes") / "data", SCENES).root


def command(data, results, name: str, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "batch", "train", "detector", "--name", name,
        "--train", str(data / "real"), "--train-boxes", str(data / "real.json"),
        "--test", str(data / "real"), "--test-boxes", str(data / "real.json"),
        "--epochs", str(epochs), "--batch-size", "4", "--lr", "0.003", "--warmup-epochs", "1",
        "--image-size", "128", "--val-share", "0.25", "--patience", "100",
        "--results", str(results), *extra,
    ]  # fmt: skip


def rows(folder) -> list[dict]:
    with open(folder / "training.csv") as f:
        return list(csv.DictReader(f))


def test_a_detectors_loss_falls_and_its_map_on_its_training_scenes_rises(scenes, tmp_path):
    """One epoch, then resumed to ten (in this process: the CLI is the kill test's): the
    training loss falls and the COCO AP50 on the scenes it trained on (test.json, by
    pycocotools) rises."""
    from lib.jobs.detector import DetectorJob, train_detector
    from lib.jobs.training import Schedule

    def job(epochs: int) -> DetectorJob:
        schedule = Schedule(
            epochs=epochs, batch_size=4, lr=0.003, warmup_epochs=1, image_size=128,
            val_share=0.25, patience=100,
        )  # fmt: skip
        real, boxes = scenes / "real", scenes / "real.json"
        return DetectorJob("digits", [real], [boxes], real, boxes, schedule=schedule)

    folder = train_detector(job(1), tmp_path)
    early = json.loads((folder / "test.json").read_text())["summary"]
    train_detector(job(10), tmp_path)
    history = rows(folder)
    assert [int(r["epoch"]) for r in history] == list(range(1, 11))  # resumed after 1
    losses = [float(r["train_loss"]) for r in history]
    assert losses[-1] < 0.8 * losses[0]
    late = json.loads((folder / "test.json").read_text())
    assert late["summary"]["AP50"] > early["AP50"] + 0.05
    assert late["test_images"] == SCENES and set(late["ci95"]) >= {"AP", "AP50"}


def test_a_killed_detector_training_resumes_to_the_same_weights(scenes, tmp_path):
    import torch

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(scenes, whole, "d", 3), cwd=ROOT, check=True, capture_output=True)
    cmd = command(scenes, killed, "d", 3)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = killed / "models" / "d"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "training.csv").is_file() and len(rows(out)) >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= len(rows(out)) < 3
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "on 14 test images AP" in resumed.stdout
    a, b = (torch.load(d / "models" / "d" / "last.pt", weights_only=True) for d in (whole, killed))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(out)]
    assert strip == [
        {k: v for k, v in r.items() if k != "seconds"} for r in rows(whole / "models" / "d")
    ]


def test_bad_training_sets_are_one_line_errors(scenes, tmp_path):
    empty = tmp_path / "none.json"
    coco = json.loads((scenes / "real.json").read_text())
    empty.write_text(json.dumps({**coco, "annotations": []}))
    base = ["--name", "x", "--results", str(tmp_path / "r"), "--test", str(scenes / "real")]
    train = ["--train", str(scenes / "real"), "--train-boxes"]
    cases = [
        ([*train, str(empty), "--test-boxes", str(scenes / "real.json")], "has no usable boxes"),
        ([*train, str(scenes / "real.json"), "--test-boxes", str(empty)], "has no usable boxes"),
        (
            [*train, str(scenes / "real.json"), "--test-boxes", str(scenes / "real.json"),
             "--head", "yolo"],
            "--head yolo: choose one of fcos, retinanet",
        ),
        (
            ["--train", str(scenes / "real"), "--train", str(scenes / "synthetic"),
             "--train-boxes", str(scenes / "real.json"), "--test-boxes", str(scenes / "real.json")],
            "give one boxes file per folder",
        ),
        (
            [*train, str(scenes / "real.json"), "--test-boxes", str(scenes / "real.json"),
             "--train-share", "0.5", "--train-share", "0.5"],
            "give one share per --train folder",
        ),
        (
            [*train, str(scenes / "real.json"), "--test-boxes", str(scenes / "real.json"),
             "--train-share", "1.5"],
            "each share is above 0 and at most 1",
        ),
    ]  # fmt: skip
    for args, words in cases:
        result = batch("train", "detector", *base, *args)
        assert result.returncode != 0 and words in one_error_line(result), args


def test_real_and_synthetic_at_a_stated_ratio(scenes):
    """--train-share: a seeded share of each folder's images with boxes (the same one
    every time), e.g. all the synthetic scenes and half the real ones."""
    from lib.jobs.detector import read_scenes

    folders = [scenes / "real", scenes / "synthetic"]
    boxes = [scenes / "real.json", scenes / "synthetic.json"]
    whole, _ = read_scenes(folders, boxes, "train")
    mixed, classes = read_scenes(folders, boxes, "train", shares=[0.5, 1.0], seed=3)
    again, _ = read_scenes(folders, boxes, "train", shares=[0.5, 1.0], seed=3)
    real = [p for p in mixed.paths if "/real/" in p]
    assert len(real) == SCENES // 2 and len(mixed.paths) == SCENES // 2 + SCENES
    assert again.paths == mixed.paths and len(whole.paths) == 2 * SCENES
    assert classes == sorted(classes) and all(len(b) for b in mixed.boxes)
