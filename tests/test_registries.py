"""One interface test over every entry of every registry, as timm runs one forward test
over every registered model: a new backbone, what-if transform, projector or demo tab is
held to its registry's promises the day it is registered."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.analysis.reduce import PROJECTORS, create_projector
from lib.features.backbones import available, create_backbone, lookup
from lib.inputs.transforms import TRANSFORMS, Reference, channel_histogram, tone_curve

SIDE = 64  # px: the smallest image every backbone's coarsest level still sees


# ---- backbones -------------------------------------------------------------------------


def _detectron2(tmp_path: Path):
    from test_detectron2 import write_configs

    return create_backbone("detectron2", random_weights=True, config=write_configs(tmp_path))


def _trained(tmp_path: Path):
    """A `batch train classifier` checkpoint as the training job writes it (best.pt), the
    body random: what is tested is the wrapping, not the training."""
    body = create_backbone("resnet18", random_weights=True)
    best = tmp_path / "models" / "tiny" / "best.pt"
    best.parent.mkdir(parents=True)
    torch.save(
        {
            "kind": "classifier",
            "arch": "resnet18",
            "classes": ["a", "b"],
            "image_size": SIDE,
            "level": "layer4",
            "epoch": 1,
            "val_accuracy": 0.5,
            "body": body.module.state_dict(),
            "head": {},
        },
        best,
    )
    return create_backbone(f"trained:{best.parent}")


def _torchscript(tmp_path: Path):
    import torchvision

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torchvision.models.resnet18().eval()), str(path))
    return create_backbone(f"torchscript:{path}")


BUILDERS = {"detectron2": _detectron2, "trained": _trained, "torchscript": _torchscript}


def test_every_registered_backbone_is_covered_here():
    assert set(available()) >= set(BUILDERS)


@pytest.mark.parametrize("name", available())
def test_every_backbone_returns_its_declared_levels_and_strides_at_64_px(name, tmp_path):
    build = BUILDERS.get(name, lambda _: create_backbone(name, random_weights=True))
    backbone = build(tmp_path)
    assert not backbone.module.training  # every backbone is built in eval mode
    if not backbone.levels:  # caricatures only: says so, and has no levels to test
        assert "caricatures only" in lookup(name).description
        return
    strides = backbone.info["strides"]
    assert len(strides) == len(backbone.levels)
    images = np.random.default_rng(0).integers(0, 256, (2, SIDE, SIDE, 3), dtype=np.uint8)
    with torch.no_grad():
        maps = backbone(images)
    assert tuple(maps) == tuple(backbone.levels)
    for level, stride in zip(backbone.levels, strides, strict=True):
        n, _, h, w = maps[level].shape
        assert (n, h, w) == (2, math.ceil(SIDE / stride), math.ceil(SIDE / stride)), level
        assert torch.isfinite(maps[level]).all(), level


# ---- what-if transforms ----------------------------------------------------------------


def _digits(n: int = 8, seed: int = 3) -> torch.Tensor:
    from lib.inputs.example import real_digits, soft_rgb

    digits, _ = real_digits(n, seed=seed)
    return torch.from_numpy(soft_rgb(digits)).permute(0, 3, 1, 2).contiguous()


def _reference() -> Reference:
    """What histogram matching and FDA take from the real images: other digits, inverted
    (white on black), so that borrowing from them shows."""
    real = 255 - _digits(8, seed=11)
    flat = real.permute(1, 0, 2, 3).reshape(3, -1).long()
    counts = torch.zeros(3, 256).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    curve = tone_curve(channel_histogram(real), channel_histogram(_digits()))
    return Reference(cdf=counts.cumsum(1) / flat.shape[1], style=real, curve=curve)


def _change(name: str, strength: float) -> float:
    """Mean absolute change (grey levels) the transform makes to the digits."""
    batch = _digits()
    out = TRANSFORMS[name].apply(
        batch.clone(), strength, torch.Generator().manual_seed(0), _reference()
    )
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    return float((out.float() - batch.float()).abs().mean())


def _gentlest(t) -> float:
    """The valid strength nearest the identity: the identity itself where the range admits
    it, else just inside the range."""
    if t.identity == math.inf:
        return t.high
    if t.identity > t.low or (t.closed and t.identity == t.low):
        return t.identity
    return t.low + 1e-3 * (t.high - t.low)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_transform_changes_nothing_at_its_identity_and_more_the_stronger_it_is(name):
    t = TRANSFORMS[name]
    for s in t.defaults:
        t.check(s)  # the defaults are valid strengths
    if t.identity is None:  # FDA: its smallest window still swaps the mean colour
        sides = [sorted(t.defaults)]
        assert _change(name, min(t.defaults)) > 1
    else:
        gentlest = _gentlest(t)
        assert _change(name, gentlest) < 0.5, "visible at the identity"
        distance = (lambda s: 1 / s) if t.identity == math.inf else (lambda s: abs(s - t.identity))
        sides = [
            [gentlest, *sorted((s for s in t.defaults if s < t.identity), key=distance)],
            [gentlest, *sorted((s for s in t.defaults if s > t.identity), key=distance)],
        ]
    for side in sides:
        changes = [_change(name, s) for s in side]
        grows = all(a < b for a, b in itertools.pairwise(changes))
        assert grows, dict(zip(side, changes, strict=True))


# ---- projectors ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROJECTORS))
def test_every_projector_fits_one_domain_and_places_the_other(name):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 10)).astype(np.float32)
    synthetic = (rng.normal(size=(80, 10)) + 1).astype(np.float32)
    projector = create_projector(name)
    if projector.joint:  # embedded together: both domains are the fit
        projector.check(200, 200)
        fitted = projector.fit(np.concatenate([real, synthetic])).embedding_
        assert fitted.shape == (200, projector.dimensions)
        placed = None
    else:
        projector.check(len(real), 200)
        fitted = projector.fit(real).embedding_
        placed = projector.transform(synthetic)
        assert fitted.shape == (120, projector.dimensions)
        assert placed.shape == (80, projector.dimensions)
    for points in (fitted, placed):
        if points is not None:
            assert points.dtype == np.float32 and np.isfinite(points).all()


# ---- demo tabs -------------------------------------------------------------------------


def _stores(results_dir, schema1_store):
    from lib.store.runs import RunStore

    return {"current": RunStore(results_dir), "schema 1": RunStore(schema1_store)}


@pytest.mark.slow
def test_every_demo_tab_builds_and_fills_for_the_current_run_and_a_schema_1_run(
    published_run, results_dir, schema1_store
):
    from demo.app import TABS
    from demo.curation import Editing
    from demo.runs import open_id

    for kind, store in _stores(results_dir, schema1_store).items():
        run = open_id(store, store.run_ids()[0])
        for name, build in TABS.items():
            tab = build(store, run, [], Editing(False))
            values = tab.on_run(store, run.id, *(c.value for c in tab.inputs))
            assert len(values) == len(tab.outputs), (kind, name)
            assert values[0] == run.id, (kind, name)  # the tab shows the run it was given
