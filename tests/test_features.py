"""Feature extraction: pooling, row order, and the on-disk feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lib import extract_images as extract
from lib.features.backbones import create_backbone
from lib.features.cache import FeatureCache, cache_key
from lib.features.pooling import POOLINGS, pool
from lib.inputs.images import Prepare, open_array, open_folder
from lib.runtime.errors import GapscopeError
from lib.runtime.executor import Executor
from tests.conftest import one_line

N_IMAGES = 5


class Counted:
    """A progress reporter that keeps every count it is given."""

    def __init__(self, seen: list):
        self.seen = seen

    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, n: int = 1) -> None:
        self.seen.append(n)


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("resnet18", random_weights=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five distinct 32×32 PNGs and a .npy array whose row 1 is the PNG 3's pixels."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)
    for i, rgb in enumerate(pixels):
        Image.fromarray(rgb).save(root / f"img{i}.png")
    array = np.stack([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), pixels[3]])
    np.save(root / "synthetic.npy", array)
    real = open_folder(root, "real", Prepare())
    synthetic = open_array(root / "synthetic.npy", "synthetic", Prepare())
    return real, synthetic


def items_of(image_set):
    return [(image_set, record) for record in image_set.records]


# ---- pooling --------------------------------------------------------------------------


def known_maps() -> torch.Tensor:
    """(N=2, C=3, H=2, W=3) with every value distinct."""
    return torch.arange(2 * 3 * 2 * 3, dtype=torch.float64).view(2, 3, 2, 3)


def test_gap_averages_each_channel_over_space():
    fmap = known_maps()
    out = pool(fmap, "gap")
    assert out.shape == (2, 3) and out.dtype == torch.float32
    # channel c of image n holds 18n + 6c + 0..5, whose mean is 18n + 6c + 2.5
    expected = [[18 * n + 6 * c + 2.5 for c in range(3)] for n in range(2)]
    assert out.tolist() == expected


def test_channel_sum_flattens_space_row_major():
    fmap = known_maps()
    out = pool(fmap, "channel-sum")
    assert out.shape == (2, 2 * 3) and out.dtype == torch.float32
    for n in range(2):
        for y in range(2):
            for x in range(3):
                want = sum(fmap[n, c, y, x].item() for c in range(3))
                assert out[n, y * 3 + x].item() == want
    # image 0: position (y, x) sums 6c + 3y + x over c = 3·(3y + x) + 18
    assert out[0].tolist() == [18.0, 21.0, 24.0, 27.0, 30.0, 33.0]


def test_channel_mean_is_channel_sum_over_channels():
    fmap = known_maps()
    torch.testing.assert_close(pool(fmap, "channel-mean"), pool(fmap, "channel-sum") / 3)
    assert pool(fmap, "channel-mean")[0].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]


def test_unknown_pooling_is_rejected_listing_the_choices():
    with pytest.raises(GapscopeError) as exc:
        pool(known_maps(), "max")
    text = one_line(exc)
    assert "max" in text and all(name in text for name in POOLINGS)


def test_unknown_pooling_fails_before_any_work(backbone, images, tmp_path):
    cache = FeatureCache(tmp_path / "cache", "k")
    with pytest.raises(GapscopeError):
        extract(backbone, items_of(images[0]), Prepare(), pooling="max", cache=cache)
    assert not [p for p in cache.dir.rglob("*") if p.is_file()]


def test_channel_sum_of_p2_for_a_512_input_has_16384_values(tmp_path):
    """The original tool's vectors: p2 of a 512×512 image is 128×128."""
    rgb = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    image_set = open_folder(tmp_path, "real", Prepare())
    fpn = create_backbone("resnet50-fpn", random_weights=True)
    out = extract(fpn, items_of(image_set), Prepare(), pooling="channel-sum", batch_size=1)
    assert out.vectors["p2"].shape == (1, 16_384)
    assert out.vectors["p6"].shape == (1, 8 * 8)  # stride 64
    assert np.isfinite(out.vectors["p2"]).all()


# ---- extraction order -------------------------------------------------------------------


def test_vectors_are_float32_rows_in_input_order(backbone, images):
    real, _ = images
    items = items_of(real)
    out = extract(backbone, items, Prepare(), batch_size=2)
    assert out.cached == 0
    assert {lv: v.shape for lv, v in out.vectors.items()} == {
        "layer1": (N_IMAGES, 64),
        "layer2": (N_IMAGES, 128),
        "layer3": (N_IMAGES, 256),
        "layer4": (N_IMAGES, 512),
    }
    for v in out.vectors.values():
        assert v.dtype == np.float32 and v.flags["C_CONTIGUOUS"]
    # each row is that image's own vector, whatever batch it was computed in
    for i, item in enumerate(items):
        alone = extract(backbone, [item], Prepare(), batch_size=1)
        for lv in backbone.levels:
            np.testing.assert_allclose(out.vectors[lv][i], alone.vectors[lv][0], atol=1e-5)


def test_permuting_items_permutes_rows(backbone, images):
    real, _ = images
    items = items_of(real)
    order = [3, 0, 4, 1, 2]
    base = extract(backbone, items, Prepare(), batch_size=2)
    permuted = extract(backbone, [items[i] for i in order], Prepare(), batch_size=2)
    for lv in backbone.levels:
        np.testing.assert_allclose(permuted.vectors[lv], base.vectors[lv][order], atol=1e-5)
        assert not np.allclose(permuted.vectors[lv], base.vectors[lv])


def test_the_same_image_gives_identical_rows(backbone, images):
    real, synthetic = images
    items = [(real, real.records[3]), (synthetic, synthetic.records[0]), (real, real.records[3])]
    items.append((synthetic, synthetic.records[1]))  # the same pixels, from the .npy array
    out = extract(backbone, items, Prepare(), batch_size=4)
    for lv in backbone.levels:
        v = out.vectors[lv]
        np.testing.assert_array_equal(v[0], v[2])
        np.testing.assert_allclose(v[0], v[3], atol=1e-6)
        assert not np.allclose(v[0], v[1])


# ---- the feature cache ------------------------------------------------------------------


def test_second_extraction_comes_from_the_cache(backbone, images, tmp_path):
    real, _ = images
    items = items_of(real)
    cache = FeatureCache(tmp_path / "cache", cache_key(backbone, "gap", Prepare()))
    seen: list[int] = []
    counted = Executor.on(progress=Counted(seen))
    first = extract(backbone, items, Prepare(), counted, cache, batch_size=2)
    assert first.cached == 0 and sum(seen) == N_IMAGES
    seen.clear()
    second = extract(backbone, items, Prepare(), counted, cache, batch_size=2)
    assert second.cached == N_IMAGES and sum(seen) == N_IMAGES
    for lv in backbone.levels:
        np.testing.assert_array_equal(second.vectors[lv], first.vectors[lv])
        assert second.vectors[lv].dtype == np.float32


def test_cache_key_names_backbone_pooling_and_preparation(backbone):
    key = cache_key(backbone, "gap", Prepare())
    assert key == cache_key(backbone, "gap", Prepare())
    others = {
        cache_key(backbone, "channel-sum", Prepare()),
        cache_key(backbone, "gap", Prepare(crop=16)),
        cache_key(backbone, "gap", Prepare(resize=16)),
    }
    assert len(others) == 3 and key not in others
    assert key.startswith("resnet18-gap-")


def _cached_shard(backbone, images, tmp_path):
    """Five images cached in shards of two; returns the shard holding image 2."""
    real, _ = images
    items = items_of(real)
    cache = FeatureCache(tmp_path / "cache", "key", shard=2)
    first = extract(backbone, items, Prepare(), batch_size=2, cache=cache)
    assert len(cache.shards()) == 3
    return items, first, cache.index()[real.records[2].hash][0]


def _recomputed(backbone, items, first, tmp_path, damaged_images: int = 2):
    cache = FeatureCache(tmp_path / "cache", "key", shard=2)  # a new run: reads from disk
    again = extract(backbone, items, Prepare(), batch_size=2, cache=cache)
    assert again.cached == N_IMAGES - damaged_images
    for lv in backbone.levels:
        np.testing.assert_allclose(again.vectors[lv], first.vectors[lv], atol=1e-5)
    fresh = FeatureCache(tmp_path / "cache", "key", shard=2)
    assert extract(backbone, items, Prepare(), cache=fresh).cached == N_IMAGES  # rewritten


def test_a_corrupt_cache_shard_is_recomputed(backbone, images, tmp_path):
    items, first, shard = _cached_shard(backbone, images, tmp_path)
    (shard / "layer3.npy").write_bytes(b"this is not an npy file at all")
    _recomputed(backbone, items, first, tmp_path)
    assert not shard.exists()  # removed, never used again


def test_an_empty_hash_list_is_recomputed(backbone, images, tmp_path):
    items, first, shard = _cached_shard(backbone, images, tmp_path)
    (shard / "hashes.npy").write_bytes(b"")
    _recomputed(backbone, items, first, tmp_path)


def test_a_truncated_cache_shard_is_recomputed(backbone, images, tmp_path):
    items, first, shard = _cached_shard(backbone, images, tmp_path)
    data = (shard / "layer1.npy").read_bytes()
    (shard / "layer1.npy").write_bytes(data[: len(data) // 2])
    _recomputed(backbone, items, first, tmp_path)


def test_a_shard_left_half_written_is_never_read(backbone, images, tmp_path):
    """What a kill mid-shard leaves: a temporary folder, ignored and never indexed."""
    items, first, shard = _cached_shard(backbone, images, tmp_path)
    shard.rename(shard.parent / f".tmp-{shard.name}")
    _recomputed(backbone, items, first, tmp_path)


def test_extraction_fills_the_arrays_it_is_given(backbone, images, tmp_path):
    real, _ = images
    made = {}

    def allocate(level, shape):
        made[level] = np.lib.format.open_memmap(tmp_path / f"{level}.npy", "w+", np.float32, shape)
        return made[level]

    out = extract(backbone, items_of(real), Prepare(), batch_size=2, allocate=allocate)
    assert set(made) == set(backbone.levels)
    for lv in backbone.levels:
        assert out.vectors[lv] is made[lv]
        alone = extract(backbone, items_of(real), Prepare(), batch_size=5)
        np.testing.assert_allclose(np.load(tmp_path / f"{lv}.npy"), alone.vectors[lv], atol=1e-5)


def test_decoding_workers_and_bf16_autocast(tmp_path):
    """Worker processes change nothing; bf16 vectors stay within a few % of fp32 ones."""
    from lib.features.backbones import create_backbone
    from lib.inputs.example import real_digits, to_rgb
    from lib.inputs.images import Prepare, open_folder

    for i, rgb in enumerate(to_rgb(real_digits(40)[0])):  # real images, as a user's
        Image.fromarray(rgb).save(tmp_path / f"{i:02d}.png")
    image_set = open_folder(tmp_path, "real", Prepare())
    items = [(image_set, r) for r in image_set.records]
    backbone = create_backbone()
    plain = extract(
        backbone, items, Prepare(), batch_size=16, executor=Executor.on(workers=0)
    ).vectors
    parallel = extract(
        backbone, items, Prepare(), batch_size=16, executor=Executor.on(workers=1)
    ).vectors
    bf16 = extract(
        backbone, items, Prepare(), batch_size=16, executor=Executor.on(precision="bf16")
    ).vectors
    for level in backbone.levels:
        np.testing.assert_array_equal(plain[level], parallel[level])
        a, b = plain[level], bf16[level]
        rel = np.linalg.norm(b - a) / np.linalg.norm(a)  # measured 2.8–4.5 % on digits
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert 0 < rel < 0.08 and cos.min() > 0.995, (level, rel, cos.min())


def test_decoding_workers_follow_the_device(monkeypatch):
    from lib.runtime.backend import default_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers("cpu") == 4  # the model needs the other cores
    assert default_workers("cuda") == 14  # decoding is what a GPU waits for
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers("cpu") == 1 and default_workers("cuda:0") == 1
