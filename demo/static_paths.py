"""The folders the demo serves files from, declared to Gradio, with Gradio's per-file check
made cheap.

Every file an event returns (a click returns 17 images) is checked by Gradio against
every static folder (`gradio.utils.is_static_file`), resolving both paths in pure Python
each time (`Path.resolve`, Python 3.11's `realpath`): about two thirds of a click's
server time and the first limit on how many clicks a second the demo answers. A
published run never changes, so the answer for a path is kept (`functools.lru_cache`);
the folders themselves are fixed when the app starts. Pinned to gradio 6.31
(requirements.txt); `install` fails loudly if a later Gradio moves the function.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import gradio as gr
import gradio.utils
from gradio.data_classes import FileData

_uncached = gradio.utils.is_static_file


def set_static_paths(roots: list[str]) -> None:
    """Gradio serves the files under `roots` in place (nothing is copied to its cache)."""
    gr.set_static_paths(roots)
    _static.cache_clear()
    install()


def install() -> None:
    """Put the cached check where Gradio's processing looks it up (idempotent)."""
    if not callable(getattr(gradio.utils, "is_static_file", None)):
        raise RuntimeError("gradio.utils.is_static_file is gone: review demo/static_paths.py")
    gradio.utils.is_static_file = is_static_file


def is_static_file(file_path) -> bool:
    """Gradio's `is_static_file`, answered once per path."""
    if isinstance(file_path, FileData):
        file_path = file_path.path
    if isinstance(file_path, Path):
        file_path = str(file_path)
    if not isinstance(file_path, str):
        return False
    return _static(file_path)


@lru_cache(maxsize=1 << 16)
def _static(path: str) -> bool:
    return _uncached(path)
