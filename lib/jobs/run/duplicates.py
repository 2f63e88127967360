"""The duplicates stage: near-copies of real images among the synthetic ones (leaks) and
repeats within each domain (lib.analysis.duplicates), from the thumbnails the scan wrote
and the features at one level; published as duplicates.parquet, counted in metrics.json."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lib.analysis.duplicates import MADS, Search, Table, candidates, confirm, summary, tiny_images
from lib.jobs.run.config import DuplicateParams, chosen_level
from lib.jobs.run.context import Context

THREADS = 4  # thumbnail decoding (PIL lets go of the GIL while it decodes)


def find_duplicates(params: DuplicateParams, vectors: dict, rows: dict, table, ctx: Context):
    """The duplicates' summary for metrics.json (None when skipped); writes the pairs."""
    level = chosen_level(params.duplicates_level, list(vectors), "duplicates-level")
    if level is None:
        return None
    real, synthetic = rows["real"], rows["synthetic"]
    with ctx.stages("duplicates", f"near-copies and leaks at {level} and in the pixels"):
        thumbs = table["thumb"].to_numpy()
        folder = ctx.writer.dir / "thumbs"
        cache: dict[int, object] = {}

        def picture(row: int):
            if row not in cache:
                cache[row] = _open(folder / thumbs[row]) if thumbs[row] else None
            return cache[row]

        indices, distances = ctx.writer.written_neighbours(level)
        searches = [Table.of("features", indices, distances, real, MADS)]
        pixels = None
        if len(thumbs) and all(thumbs):
            with ThreadPoolExecutor(THREADS) as pool:
                pictures = list(pool.map(lambda n: _open(folder / n), thumbs))
            pixels = tiny_images(pictures)
            cache.update(enumerate(pictures))
            searches.insert(0, Search.of("pixels", pixels, real, MADS))
        records = confirm(candidates(searches, real, synthetic), picture, pixels)
        ctx.writer.duplicates(records)
        return summary(records, searches, level)


def _open(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")
