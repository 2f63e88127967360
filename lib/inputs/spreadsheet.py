"""CSV cells a spreadsheet shows as text, never runs as a formula.

A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets (`=HYPERLINK(...)` in a file name or a label would
run on the user's machine). OWASP's rule, which those programs' users expect: such a cell
is written with a leading `'`, which the spreadsheet shows as text and hides. A plain
number (`-3.5`, `+1e3`) is left as it is. `unescape` undoes it, so gapscope reads its own
corrected metadata.csv back to the values it wrote.
"""

from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def escape(value):
    """`value` as a cell a spreadsheet shows as text (non-strings are left as they are).
    A value that already looks escaped (`'=x`) gets one more `'`, so `unescape` gives it
    back exactly."""
    if not isinstance(value, str):
        return value
    formula = value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value)
    return "'" + value if formula or unescape(value) != value else value


def unescape(text: str) -> str:
    """The value `escape` was given for a cell it wrote."""
    if text.startswith("'") and escape(text[1:]) == text:
        return text[1:]
    return text
