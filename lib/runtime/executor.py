"""Where a run's heavy work runs: an `Executor` carries the backend (device, precision,
decoding workers), the progress reporter and the ways work is spread, so that stages
take one object instead of `device`, `blocks`, `progress`, `search` and a Dask client.

- `Executor`: here. Extraction runs `lib.features.engine.batches` in this process (with
  DataLoader decoding processes), stages over every row go through
  `lib.runtime.memmap.map_blocks`, the scan decodes in threads.
- `lib.runtime.dask.DaskExecutor`: the same calls on a Dask cluster's workers, the same
  results.

`open_executor(address, progress)` gives the one a run asked for (`--dask`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lib.features.cache import FeatureCache, Shard
from lib.features.engine import batches
from lib.runtime.backend import Backend, cpu_backend
from lib.runtime.memmap import map_blocks
from lib.runtime.progress import Progress, Silent

if TYPE_CHECKING:
    from lib.features.engine import Output, Source


class Executor:
    """Work done in this process (and its decoding processes)."""

    def __init__(self, backend: Backend | None = None, progress: Progress | None = None):
        self.backend = backend or cpu_backend()
        self.progress = progress or Silent()
        # `fn(rows, X[rows])` per block of rows, in order: a stage's pass over every row
        self.blocks: Callable = map_blocks
        # an ordered map for the scan's per-image work (None: the scan's own threads)
        self.scan_map: Callable | None = None

    @classmethod
    def on(cls, device: str = "cpu", progress: Progress | None = None, **backend) -> Executor:
        """Here, on `device`, with Backend's other fields as given (precision, workers):
        for library calls outside a run."""
        return cls(Backend("cpu", device, "asked for", **backend), progress)

    def settle(self, backend: Backend) -> None:
        """The backend the run chose once it knew its size (after the scan)."""
        self.backend = backend

    def precision(self, asked: str) -> str:
        """The precision `auto` means where extraction runs (decided by the backend here)."""
        return asked

    def search(self, folder) -> Callable | None:
        """How an approximate search's queries run elsewhere (None: here)."""
        return None

    def exact_search(self) -> Callable | None:
        """How a GPU's exact search runs elsewhere (None: here)."""
        return None

    def extract(
        self,
        source: Source,
        backbone,
        units: Sequence[int],
        out: Output,
        cache: FeatureCache | None,
        advance: Callable[[int], None],
    ) -> None:
        """`units` of `source` through `backbone`, their rows into `out` and the cache (a
        shard written as each fills), `advance(rows)` after each batch."""
        b, keys = self.backend, source.keys
        shard = Shard(cache)
        for part, pooled in batches(source, backbone, units, b.device, b.precision, b.workers):
            rows = source.rows(part)
            out.put_rows(rows, pooled)
            shard.add([keys[r] for r in rows], pooled)
            advance(len(rows))
        shard.flush()

    def where(self) -> str:
        """Where the work runs, for a stage's log line ("" here)."""
        return ""

    def describe(self) -> dict | None:
        """What the manifest records of where the work ran beyond the backend."""
        return None


@contextmanager
def open_executor(address: str | None, progress: Progress | None = None) -> Iterator[Executor]:
    """Here (`address` None) or on the Dask cluster at `address` (tcp://host:8786 or
    local:N), closed afterwards."""
    if not address:
        yield Executor(progress=progress)
        return
    # imported here: lib.runtime.dask builds on this module (and dask is needed only here)
    from lib.runtime.dask import DaskExecutor, connect

    with connect(address) as client:
        yield DaskExecutor(client, progress)
