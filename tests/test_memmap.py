"""Reading a memory-mapped array a block at a time keeps the process's memory flat."""

from __future__ import annotations

import numpy as np

from lib.runtime.memmap import release


def _rss_file_kib() -> int:
    """Resident file-backed memory of this process (Linux), in KiB."""
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return 0


def test_released_pages_leave_the_process_and_the_data_stays(tmp_path):
    data = np.random.default_rng(0).normal(size=(32_768, 1024)).astype(np.float32)  # 128 MiB
    np.save(tmp_path / "x.npy", data)
    del data
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    before = _rss_file_kib()
    total = float(np.asarray(x, dtype=np.float64).sum())  # every page read
    grown = _rss_file_kib() - before
    assert grown > 100_000  # the 128 MiB are resident now
    release(x[10:20])  # a view lets go of its whole map
    assert _rss_file_kib() - before < grown / 10
    assert float(np.asarray(x, dtype=np.float64).sum()) == total  # read again from the cache


def test_release_of_written_pages_keeps_what_was_written(tmp_path):
    out = np.lib.format.open_memmap(tmp_path / "y.npy", "w+", np.float32, (4096, 256))
    out[:] = 7.0
    release(out)
    assert float(np.load(tmp_path / "y.npy")[-1, -1]) == 7.0
    release(np.zeros(3))  # arrays in memory: nothing to do


def test_file_rows_finds_the_file_and_first_row_of_a_view_and_nothing_else(tmp_path):
    from lib.runtime.memmap import file_rows

    np.save(tmp_path / "x.npy", np.zeros((10, 4), np.float32))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    path = str(tmp_path / "x.npy")
    assert file_rows(x) == (path, 0)
    assert file_rows(x[3:7]) == (path, 3) and file_rows(x[3:7][1:]) == (path, 4)
    for other in (x[::2], x[:, :2], np.array(x[3:7]), np.zeros((3, 4))):
        assert file_rows(other) is None  # every other row, some columns, copies
