"""`batch train classifier` (lib.jobs.training) and its models as backbones
(lib.features.backbones.trained): tiny CPU runs on the session's example."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from lib.jobs.training import Schedule, TrainJob, train_classifier
from lib.runtime.errors import GapscopeError
from tests.conftest import ROOT, one_line

pytestmark = pytest.mark.slow

SMALL = {"epochs": 4, "batch_size": 16, "image_size": 32, "warmup_epochs": 1}


def job(example_dir, **kwargs) -> TrainJob:
    return TrainJob(
        name="digits",
        data=[example_dir / "real", example_dir / "synthetic"],
        schedule=Schedule(**{**SMALL, **kwargs}),
    )


def rows(folder) -> list[dict]:
    with open(folder / "training.csv") as f:
        return list(csv.DictReader(f))


def train_command(example_dir, results) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batch",
        "train",
        "classifier",
        "--name",
        "digits",
        "--data",
        str(example_dir / "real"),
        "--data",
        str(example_dir / "synthetic"),
        "--results",
        str(results),
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--image-size",
        "32",
        "--warmup-epochs",
        "1",
    ]


@pytest.fixture(scope="module")
def trained(example_dir, tmp_path_factory):
    """Four epochs on the example's 80 digits, uninterrupted, in a process of its own (as
    the resumed one is: a long-lived test process's torch state may round otherwise)."""
    results = tmp_path_factory.mktemp("train") / "results"
    subprocess.run(
        train_command(example_dir, results), cwd=ROOT, check=True, capture_output=True, timeout=300
    )
    return results / "models" / "digits"


def test_training_lowers_the_loss_and_keeps_the_best_epoch(trained):
    history = rows(trained)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in history]
    assert losses[-1] < 0.7 * losses[0]
    best = torch.load(trained / "best.pt", weights_only=True)
    accuracies = [float(r["val_accuracy"]) for r in history]
    assert best["epoch"] == 1 + int(np.argmax(accuracies))  # the first best epoch
    assert best["classes"] == [str(d) for d in range(10)]
    lrs = [float(r["lr"]) for r in history]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0, abs=1e-9)  # cosine


def test_a_killed_training_resumes_to_the_same_model(example_dir, trained, tmp_path):
    results = tmp_path / "results"
    cmd = train_command(example_dir, results)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = results / "models" / "digits"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "training.csv").is_file() and len(rows(out)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(rows(out))
    assert 2 <= done < 4
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    resumed, whole = (torch.load(d / "last.pt", weights_only=True) for d in (out, trained))
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(out)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in rows(trained)]


def test_a_trained_model_is_a_backbone_whose_extraction_leaves_batchnorm_alone(trained):
    from lib.features.backbones import create_backbone
    from lib.inputs.example import real_digits, to_rgb

    backbone = create_backbone(f"trained:{trained}")
    assert backbone.levels == ("c1", "c2", "c3", "c4", "c5")
    assert "trained digits from efficientnet-lite0" in backbone.weights
    stats = {k: v.clone() for k, v in backbone.module.state_dict().items() if "running" in k}
    assert stats and not backbone.module.training
    images = to_rgb(real_digits(8)[0], 32)
    alone = backbone(images[:1])["c3"]
    together = backbone(images)["c3"][:1]  # another batch: train-mode BN would differ
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    after = backbone.module.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stats.items())


def test_training_errors_are_one_line(example_dir, trained, tmp_path):
    with pytest.raises(GapscopeError) as exc:  # the same name, other settings
        train_classifier(job(example_dir, lr=0.01), trained.parent.parent)
    assert "trained with other settings" in one_line(exc)
    with pytest.raises(GapscopeError) as exc:
        Schedule(val_share=1.5)
    assert "--val-share 1.5" in one_line(exc)
    from lib.features.backbones import create_backbone

    with pytest.raises(GapscopeError) as exc:
        create_backbone(f"trained:{tmp_path / 'nothing'}")
    assert "no trained model at" in one_line(exc)


def test_the_protocol_tests_three_models_on_the_same_held_out_real_images(example_dir, tmp_path):
    import json

    from lib.jobs.training import ProtocolJob, run_protocol

    small = Schedule(epochs=2, warmup_epochs=1, batch_size=16, image_size=32)
    job = ProtocolJob(
        real=example_dir / "real", synthetic=example_dir / "synthetic", schedule=small
    )
    out = run_protocol(job, tmp_path)
    assert out["test"] == 12  # 30 % of the 40 real digits, the same for every model
    trained_on = {v: m["trained_on"] for v, m in out["models"].items()}
    assert trained_on == {"synthetic": 40, "real": 28, "both": 68}
    for m in out["models"].values():
        acc = m["test_accuracy"]
        assert acc["n"] == 12 and acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
        assert (tmp_path / "models" / m["model"].rsplit("/", 1)[-1] / "best.pt").is_file()
    both, real = (out["models"][v]["test_accuracy"]["value"] for v in ("both", "real"))
    assert out["tested_on"] == "real" and out["synthetic_buys"] == pytest.approx(both - real)
    saved = json.loads((tmp_path / "models" / "sim2real-protocol.json").read_text())
    assert saved["models"].keys() == out["models"].keys()
    # the reverse: every model tested on the same held-out synthetic digits
    reverse = run_protocol(replace(job, test_on="synthetic"), tmp_path)
    assert reverse["tested_on"] == "synthetic" and reverse["test"] == 12
    assert {v: m["trained_on"] for v, m in reverse["models"].items()} == {
        "synthetic": 28,
        "real": 40,
        "both": 68,
    }
    both, synthetic = (
        reverse["models"][v]["test_accuracy"]["value"] for v in ("both", "synthetic")
    )
    assert reverse["real_buys"] == pytest.approx(both - synthetic)
    assert (tmp_path / "models" / "sim2real-on-synthetic-protocol.json").is_file()
    with pytest.raises(GapscopeError, match="--test-on elsewhere"):
        replace(job, test_on="elsewhere")


def test_a_run_with_the_trained_model_shows_its_training_curves(example_dir, trained):
    from demo import retrieval as view
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    store = RunStore(trained.parent.parent)  # the results folder the model was trained in
    config = RunConfig.of(
        real=example_dir / "real",
        synthetic=example_dir / "synthetic",
        backbone="trained:digits",
        projections=("pca",),
        atlas_level="none",
        attribution=0,
        plots=False,
    )
    published = run(config, store)
    assert published.manifest["backbone"]["name"] == "trained:digits"
    assert published.manifest["feature_dims"]["c5"] == 320
    figure = view.training_figure(published)
    assert [t.name for t in figure.data] == ["training", "validation", "accuracy"]
    assert list(figure.data[0].x) == [1, 2, 3, 4]
    assert view.on_run(store, published.id, "failed")[-1].data[0].name == "training"


def test_metric_learning_brings_a_class_together(example_dir, tmp_path):
    from lib.jobs.training import MetricJob, train_metric

    job = MetricJob(
        name="metric",
        data=[example_dir / "real", example_dir / "synthetic"],
        schedule=Schedule(**SMALL),
        embedding=32,
    )
    out = train_metric(job, tmp_path)
    history = rows(out)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in history]
    assert losses[-1] < losses[0]  # mined triplets get easier as it learns
    # a triplet loss on unit vectors is at most margin + 2 (cross-entropy over 32 outputs
    # starts near log 32 = 3.5: a loop that ignored the objective would show it)
    assert all(0 <= v <= job.margin + 2 for v in losses)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["kind"] == "metric" and best["head"]["weight"].shape[0] == 32
    precision = [float(r["val_accuracy"]) for r in history]
    assert best["val_accuracy"] == max(precision) and 0 <= max(precision) <= 1
    one_epoch = Schedule(**{**SMALL, "epochs": 1, "warmup_epochs": 0})
    online = train_metric(
        replace(job, name="online", mining="online", schedule=one_epoch), tmp_path
    )
    assert all(0 <= float(r["train_loss"]) <= job.margin + 2 for r in rows(online))
    with pytest.raises(GapscopeError, match="--mining sometimes"):
        replace(job, mining="sometimes")


def test_offline_mining_draws_a_positive_and_a_negative_nearer_than_it():
    from lib.jobs.training import mine_triplets

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    e = rng.normal(size=(24, 8)) + labels[:, None] * 0.3  # classes overlap: hard ones exist
    a, p, n = mine_triplets(e, labels, np.random.default_rng(1), tries=10)
    assert a.tolist() == list(range(24))  # every anchor has another of its label
    assert (labels[p] == labels[a]).all() and (p != a).all() and (labels[n] != labels[a]).all()
    d = lambda i, j: ((e[i] - e[j]) ** 2).sum(1)  # noqa: E731
    hard = d(a, n) < d(a, p)
    assert hard.mean() > 0.8  # found within 10 tries for most anchors
    # with one try the negative is whatever was drawn; a lone label has no positive
    a1, _, _ = mine_triplets(e[:13], labels[:13], np.random.default_rng(1), tries=1)
    assert 12 not in a1.tolist() and len(a1) == 12
