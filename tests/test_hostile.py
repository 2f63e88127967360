"""Hostile and odd inputs: each is used, or skipped with its reason; never a crash, never a
traceback, never a file outside the input folder unless asked. A bounded fuzz of the
decoding path, the metadata.csv reader and the click-payload parser."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lib.inputs.images import (
    DecodeError,
    Prepare,
    decode_rgb,
    discover,
    open_folder,
    read_categories,
)
from lib.runtime.errors import GapscopeError

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _png(path: Path, size=(8, 8), color=(10, 200, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _names(image_set) -> list[str]:
    return [r.relpath for r in image_set.records]


def test_animated_gif_and_multipage_tiff_use_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    tiff = decode_rgb(tmp_path / "pages.tif")
    assert tiff.shape == (8, 8, 3) and tuple(tiff[0, 0]) == (255, 0, 0)
    gif = decode_rgb(tmp_path / "anim.gif")  # a palette: red comes back nearly exact
    assert gif.shape == (8, 8, 3) and gif[0, 0, 0] > 200 and gif[0, 0, 2] < 50


def test_broken_exif_keeps_the_image(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (90, 90, 90)).save(buf, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff")
    (tmp_path / "broken_exif.jpg").write_bytes(buf.getvalue())
    assert decode_rgb(tmp_path / "broken_exif.jpg").shape == (8, 16, 3)


def test_huge_dimensions_in_a_tiny_file_are_skipped_with_a_reason(tmp_path):
    from test_images import _png_header_only

    folder = tmp_path / "real"
    _png(folder / "ok.png")
    _png_header_only(folder / "bomb.png", 60000, 60000)  # 3.6 gigapixels in a few bytes
    image_set = open_folder(folder, "real", Prepare())
    assert _names(image_set) == ["ok.png"]
    (skip,) = image_set.skipped
    assert skip.path.endswith("bomb.png") and "too large to decode safely" in skip.reason


def test_odd_file_names_are_ordinary_images(tmp_path):
    folder = tmp_path / "real"
    names = ["with space.png", "ünïcødé 图.png", "new\nline.png", "quote'\".png"]
    for name in names:
        _png(folder / name)
    assert sorted(_names(open_folder(folder, "real", Prepare()))) == sorted(names)


def test_symlinks_outside_the_folder_are_skipped_unless_asked(tmp_path):
    folder, outside = tmp_path / "real", tmp_path / "elsewhere"
    _png(folder / "inside.png")
    _png(outside / "secret.png")
    _png(outside / "deep" / "more.png")
    os.symlink(outside / "secret.png", folder / "link.png")
    os.symlink(outside / "deep", folder / "linked_dir")
    os.symlink(folder / "inside.png", folder / "internal.png")  # inside: fine
    os.symlink(tmp_path / "missing.png", folder / "dangling.png")
    image_set = open_folder(folder, "real", Prepare())
    assert _names(image_set) == ["inside.png", "internal.png"]
    reasons = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert "outside the input folder" in reasons["link.png"]
    assert "outside the input folder" in reasons["linked_dir"]
    assert reasons["dangling.png"] == "broken symlink"
    followed = open_folder(folder, "real", Prepare(), follow_symlinks=True)
    assert _names(followed) == ["inside.png", "internal.png", "link.png", "linked_dir/more.png"]


def test_a_symlink_loop_ends(tmp_path):
    folder = tmp_path / "real"
    _png(folder / "a" / "x.png")
    os.symlink(folder, folder / "a" / "loop")  # real/a/loop -> real
    os.symlink(folder / "a", folder / "a" / "self")  # real/a/self -> real/a
    files = discover(folder, follow_symlinks=True)
    assert [p.relative_to(folder).as_posix() for p in files] == ["a/x.png"]


def test_metadata_csv_edge_cases(tmp_path):
    folder = tmp_path / "real"
    _png(folder / "a.png")
    _png(folder / "b.png")
    # a BOM, a missing category column value, a duplicated row (the last one wins), and a
    # path escaping the folder (ignored: categories only ever label scanned files)
    (folder / "metadata.csv").write_text(
        "\ufefffilename,category\na.png,cat\nb.png,\na.png,dog\n../../etc/passwd,evil\n",
        encoding="utf-8",
    )
    categories = read_categories(folder)
    assert categories[(folder / "a.png").resolve()] == "dog"
    assert categories[(folder / "b.png").resolve()] == ""
    image_set = open_folder(folder, "real", Prepare())
    assert [r.category for r in image_set.records] == ["dog", ""]
    (folder / "metadata.csv").write_text("name,category\na.png,cat\n")
    with pytest.raises(GapscopeError, match="needs a 'filename' column"):
        read_categories(folder)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    from lib.inputs.images import open_array

    marker = tmp_path / "pwned"
    np.save(tmp_path / "x.npy", np.array([_Boom(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(GapscopeError, match="not a readable .npy array"):
        open_array(tmp_path / "x.npy", "real", Prepare())
    assert not marker.exists()  # nothing from the pickle ran


class _Boom:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---- bounded fuzzing ------------------------------------------------------------------


HEADERS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"BM", b"RIFF", b""]


@FUZZ
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=600))
def test_fuzz_decoding_only_ever_decodes_or_says_why(tmp_path_factory, header, body):
    path = tmp_path_factory.mktemp("fuzz") / "f.png"
    path.write_bytes(header + body)
    try:
        rgb = decode_rgb(path)
    except DecodeError as exc:
        assert exc.reason and "\n" not in str(exc)
    else:
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


@FUZZ
@given(text=st.text(max_size=400))
def test_fuzz_metadata_csv_reads_or_says_why(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("meta")
    (folder / "metadata.csv").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        categories = read_categories(folder)
    except GapscopeError as exc:
        assert "\n" not in str(exc)
    except UnicodeError:
        pytest.skip("not UTF-8")
    else:
        assert all(isinstance(c, str) for c in categories.values())


@FUZZ
@given(
    payload=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda v: __import__("json").dumps(v),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["id", "t", "x"]), inner, max_size=3)
                ),
                max_leaves=8,
            ),
        ),
    )
)
def test_fuzz_click_payloads_give_a_row_or_nothing(payload):
    from demo.overlap import parse_click

    row = parse_click(payload)
    assert row is None or isinstance(row, int)
