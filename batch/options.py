"""Command line options built from parameter dataclasses (lib.runtime.params), so every default and
help text is written once, next to the code that uses it.

`options_from(RunConfig)` turns a command `def run(config: RunConfig, ...)` into a Typer
command whose options are the config's `param` fields, nested parameter dataclasses
included (RunConfig.umap's n_neighbors is `--n-neighbors`); the command receives the
built RunConfig.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from typing import Annotated, Any, get_type_hints

import typer


def _option_fields(cls, prefix: str = "") -> list[tuple[str, str, Any, Any, dict]]:
    """(python name, field name, CLI type, default, metadata) for every param field, depth
    first; a nested dataclass's fields are named <field>_<inner field> in Python, and
    their flags are the inner field's (--n-neighbors) unless the field names one."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            out += _option_fields(kind, f"{prefix}{f.name}.")
        elif "help" in f.metadata:
            name = (prefix + f.name).replace(".", "_")
            cli_type = f.metadata.get("cli_type") or kind
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if isinstance(default, tuple):
                default = list(default)  # a tuple field read as a repeatable option
            out.append((name, f.name, cli_type, default, f.metadata))
    return out


def _parameter(name: str, field_name: str, cli_type, default, meta: dict) -> inspect.Parameter:
    from rich.markup import escape

    flag = meta.get("flag") or "--" + field_name.replace("_", "-")
    if cli_type is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    # escaped: "[:CHECKPOINT][@CONFIG]" would read as rich markup and vanish
    option = typer.Option(flag, help=escape(meta["help"]), show_default=default is not MISSING)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if default is MISSING else default,
        annotation=Annotated[cli_type, option],
    )


def build(cls, values: dict[str, Any]):
    """An instance of `cls` from the parsed options (nested dataclasses built too)."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            inner = {
                k[len(f.name) + 1 :]: v for k, v in values.items() if k.startswith(f.name + "_")
            }
            kwargs[f.name] = build(kind, inner)
        elif f.name in values:
            kwargs[f.name] = _parse(f, values[f.name])
    return cls(**kwargs)


def _parse(f, value):
    if f.metadata.get("parse") is not None and value is not None:
        return f.metadata["parse"](value)
    if isinstance(value, list) and f.metadata.get("cli_type") is not None:
        return tuple(dict.fromkeys(value))  # a repeatable option for a tuple field
    return value


def options_from(cls) -> Callable[[Callable], Callable]:
    """Decorator: the command's first parameter (annotated `cls`) becomes cls's options."""

    def wrap(command: Callable) -> Callable:
        sig = inspect.signature(command, eval_str=True)
        own = [  # the command's other options
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in list(sig.parameters.values())[1:]
        ]
        config_name = next(iter(sig.parameters))
        generated = [_parameter(*option) for option in _option_fields(cls)]
        names = {p.name for p in generated}

        @functools.wraps(command)
        def wrapper(**kwargs):
            config = build(cls, {k: v for k, v in kwargs.items() if k in names})
            rest = {k: v for k, v in kwargs.items() if k not in names}
            return command(**{config_name: config}, **rest)

        wrapper.__signature__ = sig.replace(parameters=[*generated, *own])
        wrapper.__annotations__ = {}
        return wrapper

    return wrap
