"""Names that come from data or from a user and become file names in the run store: level
names (a Parquet column, an .npy file's stem) and model names (`--name`). Each is checked
once, where it enters, and again where the store makes a path of it, so that no name can
reach outside its folder (`../../x`, `a/b`, an empty name).

`shown` is how any such text appears in an error: quoted and cut short, so that a refused
10 kB value is not echoed back in full.
"""

from __future__ import annotations

import re

from lib.runtime.errors import GapscopeError

LONGEST = 100
# ASCII letters and digits, then also . _ - +; never a leading dot (no "..", no hidden file)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
SHOWN = 60  # characters of a refused value an error repeats


def shown(text: object, limit: int = SHOWN) -> str:
    """`text` as an error shows it: repr'd (control characters escaped), cut at `limit`."""
    text = str(text)
    cut = text[:limit]
    return repr(cut) + (f"… ({len(text):,} characters)" if len(text) > limit else "")


def is_file_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= LONGEST
        and _NAME.fullmatch(name) is not None
        and ".." not in name
    )


def checked_name(name: object, what: str) -> str:
    """`name` if it can name a file in the store, else a GapscopeError saying why."""
    if not is_file_name(name):
        raise GapscopeError(
            f"{what} {shown(name)} cannot name a file: use ASCII letters, digits and . _ - + "
            f"(at most {LONGEST}, not starting with a dot, no '..')"
        )
    return name
