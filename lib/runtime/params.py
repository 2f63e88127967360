"""Parameters documented where they are defined.

A dataclass field made with `param` carries its default, its help text and its command
line flag; `batch.options` builds the CLI's options from such fields, so a default changed
in a parameter dataclass changes `--help`, the CLI and the library at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

from lib.runtime.errors import GapscopeError

REQUIRED: Any = MISSING  # param(REQUIRED, "...") for a field without a default


def param(
    default: Any,
    help: str,
    flag: str | None = None,
    cli_type: Any = None,
    parse: Callable[[Any], Any] | None = None,
    minimum: float | None = None,
) -> Any:
    """A dataclass field that is also a command line option.

    flag: the option's name (default: --field-name). cli_type: the type the CLI parses
    when it differs from the field's (a list for a tuple field: a repeatable option).
    parse: turns the parsed option into the field's value (default: a list becomes a
    tuple without repeats). minimum: the smallest value `check_minimums` accepts.
    """
    meta = {"help": help, "flag": flag, "cli_type": cli_type, "parse": parse, "minimum": minimum}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def comma_floats(flag: str, n: int = 3) -> Callable[[str], tuple[float, ...]]:
    """A parser for '0.5,0.5,0.5'-style options."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != n:
            example = ",".join(["0.5"] * n)
            raise GapscopeError(f"{flag} takes {n} comma-separated numbers, e.g. {example}")
        return values

    return parse


def check_minimums(obj) -> None:
    """A one-line error for a field below its `minimum` (call from __post_init__), so a
    value that would fail hours into a run fails before any work."""
    from dataclasses import fields

    for f in fields(obj):
        low, value = f.metadata.get("minimum"), getattr(obj, f.name)
        if low is not None and value is not None and value < low:
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            raise GapscopeError(f"{flag} must be at least {low:g}, got {value:g}")
