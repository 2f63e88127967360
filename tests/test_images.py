"""Image sets: decoding every common file kind, discovery, categories, crops, arrays."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.inputs.images import (
    Prepare,
    center_crop,
    check_common_size,
    decode_rgb,
    open_array,
    open_folder,
    open_images,
    resize_crop,
    sample_indices,
)
from lib.runtime.errors import GapscopeError
from tests.conftest import one_line


def noise(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---- decoding -------------------------------------------------------------------------


def test_rgb_png_decodes_exactly(tmp_path):
    rgb = noise(0, 20, 30)
    out = decode_rgb(save_rgb(tmp_path / "a.png", rgb))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_is_repeated_to_three_channels(tmp_path):
    gray = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) % 256
    Image.fromarray(gray.astype(np.uint8), mode="L").save(tmp_path / "g.png")
    out = decode_rgb(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: white
    rgba[1, 1] = (10, 20, 30, 255)  # opaque: itself
    rgba[2, 2] = (0, 0, 0, 128)  # half transparent black: mid grey
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = decode_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (10, 20, 30)
    assert all(abs(int(v) - 127) <= 1 for v in out[2, 2])


def test_grayscale_with_alpha_is_composited_on_white(tmp_path):
    la = np.zeros((3, 3, 2), dtype=np.uint8)
    la[0, 0] = (40, 0)
    la[1, 1] = (40, 255)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = decode_rgb(tmp_path / "la.png")
    assert out.shape == (3, 3, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (40, 40, 40)


def test_palette_image_uses_its_palette(tmp_path):
    img = Image.new("P", (5, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putpixel((1, 2), 1)  # (x, y)
    img.putpixel((4, 3), 2)
    img.save(tmp_path / "p.png")
    out = decode_rgb(tmp_path / "p.png")
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[2, 1]) == (0, 255, 0)
    assert tuple(out[3, 4]) == (0, 0, 255)


def test_palette_transparency_becomes_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putpixel((2, 2), 1)
    img.info["transparency"] = 1
    img.save(tmp_path / "pt.png", transparency=1)
    out = decode_rgb(tmp_path / "pt.png")
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[2, 2]) == (255, 255, 255)


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    a = np.zeros((4, 5), dtype=np.uint16)
    a[0, 0] = 65535
    a[1, 1] = 257 * 10
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = decode_rgb(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (10, 10, 10)
    assert tuple(out[3, 4]) == (0, 0, 0)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = decode_rgb(tmp_path / "c.jpg")
    assert out.dtype == np.uint8 and out.shape == (8, 16, 3)
    r, g, b = (int(v) for v in out[4, 8])
    assert r >= 250 and g <= 5 and b <= 5  # cyan 0, magenta+yellow full: red


def test_undecodable_file_raises_naming_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\n")
    with pytest.raises(GapscopeError) as exc:
        decode_rgb(bad)
    assert str(bad) in one_line(exc)


# ---- open_folder: skipping, errors ---------------------------------------------------


def test_bad_files_are_skipped_with_reasons_and_good_ones_kept(tmp_path):
    folder = tmp_path / "real"
    save_rgb(folder / "a_good.png", noise(1))
    save_rgb(folder / "b_good.jpg", noise(2))
    truncate(save_rgb(folder / "c_truncated.png", noise(3)))
    jpg = folder / "d_truncated.jpg"
    Image.fromarray(noise(4, 48, 48)).save(jpg, quality=90)
    truncate(jpg)
    (folder / "e_text.png").write_text("hello, not a picture\n")

    image_set = open_folder(folder, "real", Prepare())
    assert [r.relpath for r in image_set.records] == ["a_good.png", "b_good.jpg"]
    skipped = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert set(skipped) == {"c_truncated.png", "d_truncated.jpg", "e_text.png"}
    for reason in skipped.values():
        assert "cannot decode image" in reason and "\n" not in reason


def test_folder_of_only_bad_files_raises_one_line_error(tmp_path):
    folder = tmp_path / "synthetic"
    folder.mkdir()
    (folder / "x.png").write_text("not an image")
    truncate(save_rgb(folder / "y.png", noise(5)))
    with pytest.raises(GapscopeError) as exc:
        open_folder(folder, "synthetic", Prepare())
    text = one_line(exc)
    assert "synthetic" in text and "2" in text


def test_missing_folder_raises(tmp_path):
    with pytest.raises(GapscopeError) as exc:
        open_folder(tmp_path / "nope", "real", Prepare())
    assert "does not exist" in one_line(exc)


def test_folder_without_images_raises(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "readme.txt").write_text("no pictures here")
    (folder / "a.png.bak").write_bytes(save_rgb(tmp_path / "a.png", noise(0)).read_bytes())
    with pytest.raises(GapscopeError) as exc:
        open_folder(folder, "real", Prepare())
    assert "holds no images" in one_line(exc)


def test_file_passed_as_folder_raises(tmp_path):
    path = save_rgb(tmp_path / "one.png", noise(0))
    with pytest.raises(GapscopeError) as exc:
        open_folder(path, "real", Prepare())
    assert str(path) in one_line(exc)


# ---- discovery and categories ---------------------------------------------------------


def test_discovery_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    folder = tmp_path / "real"
    for i, rel in enumerate(["b/z.png", "a.png", "b/a.JPG", "c/d/e.bmp", "A.png"]):
        save_rgb(folder / rel, noise(i))
    save_rgb(folder / ".cache" / "hidden.png", noise(10))
    save_rgb(folder / "b" / ".thumbs" / "hidden.png", noise(11))
    save_rgb(folder / ".hidden.png", noise(12))
    (folder / "notes.txt").write_text("x")
    Image.fromarray(noise(13)).save(folder / "anim.gif")  # read (#27: was ignored unlisted)

    image_set = open_folder(folder, "real", Prepare())
    assert [r.relpath for r in image_set.records] == [
        "A.png",
        "a.png",
        "anim.gif",
        "b/a.JPG",
        "b/z.png",
        "c/d/e.bmp",
    ]
    assert image_set.skipped == []
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in image_set.records)


def test_folder_inside_a_hidden_directory_still_works(tmp_path):
    folder = tmp_path / ".datasets" / "real"
    save_rgb(folder / "a.png", noise(0))
    assert [r.relpath for r in open_folder(folder, "real", Prepare()).records] == ["a.png"]


def test_categories_default_to_first_subfolder(tmp_path):
    folder = tmp_path / "real"
    save_rgb(folder / "cats" / "deep" / "a.png", noise(0))
    save_rgb(folder / "dogs" / "b.png", noise(1))
    save_rgb(folder / "top.png", noise(2))
    cats = {r.relpath: r.category for r in open_folder(folder, "real", Prepare()).records}
    assert cats == {"cats/deep/a.png": "cats", "dogs/b.png": "dogs", "top.png": ""}


def test_categories_from_metadata_csv_in_the_folder(tmp_path):
    folder = tmp_path / "real"
    save_rgb(folder / "x" / "a.png", noise(0))
    save_rgb(folder / "x" / "b.png", noise(1))
    save_rgb(folder / "y" / "c.png", noise(2))  # not listed: falls back to its subfolder
    (folder / "metadata.csv").write_text("filename,category\nx/a.png,scratch\nx/b.png,dent\n")
    cats = {r.relpath: r.category for r in open_folder(folder, "real", Prepare()).records}
    assert cats == {"x/a.png": "scratch", "x/b.png": "dent", "y/c.png": "y"}


def test_categories_from_metadata_csv_in_the_parent(tmp_path):
    save_rgb(tmp_path / "real" / "a.png", noise(0))
    save_rgb(tmp_path / "synthetic" / "a.png", noise(1))
    (tmp_path / "metadata.csv").write_text(
        "filename,category\nreal/a.png,crack\nsynthetic/a.png,hole\n"
    )
    real = open_folder(tmp_path / "real", "real", Prepare())
    synthetic = open_folder(tmp_path / "synthetic", "synthetic", Prepare())
    assert [r.category for r in real.records] == ["crack"]
    assert [r.category for r in synthetic.records] == ["hole"]


def test_metadata_csv_without_filename_column_raises(tmp_path):
    save_rgb(tmp_path / "real" / "a.png", noise(0))
    (tmp_path / "real" / "metadata.csv").write_text("file,category\na.png,x\n")
    with pytest.raises(GapscopeError) as exc:
        open_folder(tmp_path / "real", "real", Prepare())
    assert "filename" in one_line(exc)


# ---- crop, resize, Prepare -----------------------------------------------------------


def test_center_crop_pads_small_images_with_black_and_centres_them():
    img = np.arange(1, 3 * 5 * 3 + 1, dtype=np.uint8).reshape(3, 5, 3)
    out = center_crop(img, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    # 5 rows of padding: 2 above, 3 below; 3 columns: 1 left, 2 right
    np.testing.assert_array_equal(out[2:5, 1:6], img)
    mask = np.ones((8, 8), dtype=bool)
    mask[2:5, 1:6] = False
    assert not out[mask].any()


def test_center_crop_pads_one_side_and_crops_the_other():
    img = np.arange(10 * 6 * 3, dtype=np.uint16).reshape(10, 6, 3).astype(np.uint8)
    img[..., 0] = 200  # no zero pixels inside the image
    out = center_crop(img, 8)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[:, 1:7], img[1:9])
    assert not out[:, 0].any() and not out[:, 7].any()


def test_center_crop_of_a_larger_image_takes_the_centre():
    img = noise(0, 12, 14)
    np.testing.assert_array_equal(center_crop(img, 8), img[2:10, 3:11])


def test_resize_crop_gives_a_square_of_the_asked_size():
    assert resize_crop(noise(0, 40, 64), 32).shape == (32, 32, 3)
    assert resize_crop(noise(1, 20, 12), 32).shape == (32, 32, 3)  # upscaled
    flat = np.full((40, 64, 3), (10, 120, 250), dtype=np.uint8)
    out = resize_crop(flat, 16)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.full((16, 16, 3), (10, 120, 250), dtype=np.uint8))


def test_prepare_rejects_crop_and_resize_together():
    with pytest.raises(GapscopeError) as exc:
        Prepare(crop=32, resize=32)
    text = one_line(exc)
    assert "--crop" in text and "--resize" in text


def test_prepare_rejects_a_tiny_size():
    with pytest.raises(GapscopeError):
        Prepare(crop=4)


def test_prepare_crop_marks_padded_images_and_loads_prepared_pixels(tmp_path):
    folder = tmp_path / "real"
    save_rgb(folder / "big.png", noise(0, 40, 40))
    small = save_rgb(folder / "small.png", noise(1, 20, 24))
    prepare = Prepare(crop=32)
    image_set = open_folder(folder, "real", prepare)
    padded = {r.relpath: r.padded for r in image_set.records}
    assert padded == {"big.png": False, "small.png": True}
    rec = image_set.records[1]
    assert (rec.width, rec.height) == (24, 20)  # the original size
    np.testing.assert_array_equal(image_set.load(rec, prepare), center_crop(decode_rgb(small), 32))


def test_check_common_size(tmp_path):
    save_rgb(tmp_path / "real" / "a.png", noise(0, 32, 32))
    save_rgb(tmp_path / "synthetic" / "a.png", noise(1, 32, 48))
    save_rgb(tmp_path / "synthetic2" / "a.png", noise(2, 32, 32))
    real = open_folder(tmp_path / "real", "real", Prepare())
    synthetic = open_folder(tmp_path / "synthetic", "synthetic", Prepare())
    same = open_folder(tmp_path / "synthetic2", "synthetic", Prepare())
    with pytest.raises(GapscopeError) as exc:
        check_common_size([real, synthetic], Prepare())
    text = one_line(exc)
    assert "--crop" in text and "--resize" in text
    assert check_common_size([real, same], Prepare()) == (32, 32)
    assert check_common_size([real, synthetic], Prepare(crop=16)) == (16, 16)
    assert check_common_size([real, synthetic], Prepare(resize=24)) == (24, 24)


# ---- hashes, thumbnails, sampling -----------------------------------------------------


def test_same_bytes_give_the_same_hash(tmp_path):
    folder = tmp_path / "real"
    a = save_rgb(folder / "one" / "a.png", noise(0))
    (folder / "two").mkdir()
    (folder / "two" / "copy.png").write_bytes(a.read_bytes())
    save_rgb(folder / "three" / "other.png", noise(1))
    records = {r.relpath: r.hash for r in open_folder(folder, "real", Prepare()).records}
    assert records["one/a.png"] == records["two/copy.png"]
    assert records["one/a.png"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert records["three/other.png"] != records["one/a.png"]


def thumbs_in(folder):
    """Thumbnails into a folder, named by content hash (the run store names them in runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    return lambda record: folder / f"{record.hash}.png"


def test_thumbnails_are_written_for_every_usable_image(tmp_path):
    folder = tmp_path / "real"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, colour in enumerate(colours):
        save_rgb(folder / f"{i}.png", np.full((32, 32, 3), colour, dtype=np.uint8))
    (folder / "broken.png").write_text("nope")
    thumbs = tmp_path / "thumbs"
    image_set = open_folder(folder, "real", Prepare(), thumbs=thumbs_in(thumbs))
    assert len(image_set.records) == 3
    names = sorted(p.name for p in thumbs.iterdir())
    assert names == sorted(f"{r.hash}.png" for r in image_set.records)
    for record, colour in zip(image_set.records, colours, strict=True):
        with Image.open(thumbs / f"{record.hash}.png") as thumb:
            pixels = np.asarray(thumb.convert("RGB"))
        assert tuple(pixels[pixels.shape[0] // 2, pixels.shape[1] // 2]) == colour


def test_sample_indices_are_seeded_sorted_and_unique():
    a = sample_indices(100, 10, seed=1)
    assert list(a) == list(sample_indices(100, 10, seed=1))
    assert list(a) != list(sample_indices(100, 10, seed=2))
    assert len(a) == 10 and len(set(a.tolist())) == 10
    assert list(a) == sorted(a) and a.min() >= 0 and a.max() < 100
    assert list(sample_indices(5, None, seed=0)) == [0, 1, 2, 3, 4]
    assert list(sample_indices(5, 50, seed=0)) == [0, 1, 2, 3, 4]
    with pytest.raises(GapscopeError):
        sample_indices(5, 0, seed=0)


def test_sample_picks_a_seeded_subset_of_a_folder(tmp_path):
    folder = tmp_path / "real"
    for i in range(8):
        save_rgb(folder / f"{i:02d}.png", noise(i, 8, 8))
    first = [r.relpath for r in open_folder(folder, "real", Prepare(), sample=3, seed=7).records]
    again = [r.relpath for r in open_folder(folder, "real", Prepare(), sample=3, seed=7).records]
    assert first == again and len(first) == 3 and first == sorted(first)


# ---- .npy arrays ----------------------------------------------------------------------


def test_uint8_array_rows_are_images(tmp_path):
    arr = np.stack([noise(i, 16, 12) for i in range(3)])
    np.save(tmp_path / "real.npy", arr)
    image_set = open_images(tmp_path / "real.npy", "real", Prepare())
    assert [r.relpath for r in image_set.records] == ["row 0", "row 1", "row 2"]
    assert all((r.width, r.height) == (12, 16) for r in image_set.records)
    for i, record in enumerate(image_set.records):
        np.testing.assert_array_equal(image_set.load(record, Prepare()), arr[i])
    assert len({r.hash for r in image_set.records}) == 3


def test_float_array_in_unit_range_is_scaled(tmp_path):
    arr = np.zeros((2, 8, 8, 3), dtype=np.float32)
    arr[0, 0, 0] = (1.0, 0.5, 0.0)
    arr[1] = 0.25
    np.save(tmp_path / "x.npy", arr)
    image_set = open_array(tmp_path / "x.npy", "synthetic", Prepare())
    first = image_set.load(image_set.records[0], Prepare())
    assert first.dtype == np.uint8 and first.shape == (8, 8, 3)
    assert tuple(first[0, 0]) == (255, 128, 0)
    assert tuple(image_set.load(image_set.records[1], Prepare())[3, 3]) == (64, 64, 64)


def test_array_sample_and_thumbnails(tmp_path):
    np.save(tmp_path / "x.npy", np.stack([noise(i, 8, 8) for i in range(6)]))
    thumbs = tmp_path / "thumbs"
    image_set = open_array(
        tmp_path / "x.npy", "real", Prepare(), thumbs=thumbs_in(thumbs), sample=4, seed=3
    )
    rows = [r.row for r in image_set.records]
    assert rows == sorted(rows) and len(set(rows)) == 4
    assert sorted(p.name for p in thumbs.iterdir()) == sorted(
        f"{r.hash}.png" for r in image_set.records
    )


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 8, 8, 4), (8, 8, 3), (0, 8, 8, 3)])
def test_array_of_wrong_shape_is_rejected(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(GapscopeError) as exc:
        open_array(tmp_path / "bad.npy", "real", Prepare())
    assert "(N, H, W, 3)" in one_line(exc)


def test_text_file_named_npy_is_rejected_on_one_line(tmp_path):
    path = tmp_path / "x.npy"
    path.write_text("id,value\n1,2\n")
    with pytest.raises(GapscopeError) as exc:
        open_array(path, "real", Prepare())
    assert str(path) in one_line(exc)


def test_missing_array_raises(tmp_path):
    with pytest.raises(GapscopeError) as exc:
        open_images(tmp_path / "gone.npy", "real", Prepare())
    one_line(exc)


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _npz_named_npy(path: Path) -> None:
    np.savez(path.with_suffix(".npz"), a=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    path.with_suffix(".npz").rename(path)


@pytest.mark.parametrize("make", [_empty_file, _npz_named_npy], ids=["empty", "npz"])
def test_non_npy_files_named_npy_are_rejected_on_one_line(tmp_path, make):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(GapscopeError) as exc:
        open_array(path, "real", Prepare())
    assert str(path) in one_line(exc)


def test_float_array_scale_is_decided_for_the_whole_array(tmp_path):
    arr = np.full((2, 8, 8, 3), 200.0, dtype=np.float32)  # a [0, 255] array...
    arr[1] = 1.0  # ...with one nearly black image
    np.save(tmp_path / "x.npy", arr)
    image_set = open_array(tmp_path / "x.npy", "real", Prepare())
    assert tuple(image_set.load(image_set.records[0], Prepare())[0, 0]) == (200, 200, 200)
    assert tuple(image_set.load(image_set.records[1], Prepare())[0, 0]) == (1, 1, 1)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG file that declares a huge size (PIL refuses it as a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_oversized_image_is_skipped_not_fatal(tmp_path):
    folder = tmp_path / "real"
    save_rgb(folder / "ok.png", noise(0, 8, 8))
    _png_header_only(folder / "huge.png", 20000, 20000)
    image_set = open_folder(folder, "real", Prepare())
    assert [r.relpath for r in image_set.records] == ["ok.png"]
    assert [Path(s.path).name for s in image_set.skipped] == ["huge.png"]
