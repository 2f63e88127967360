"""Values from data shown as text, never as markup.

Tags, labels, categories, file names, hotspot names, folder and model names come from the
user's files and from visitors. The page renders Markdown (gr.Markdown: links, images,
inline HTML), plotly's labels (`<a href>`, `<b>`, `<br>` in legends and tooltips) and
Gradio's error toasts (HTML) — so a tag `![p](http://host/pixel.png)` would load a
picture from that host, and `<a href=…>` would be a live link. Every value from data goes
through one of these on its way to the page:

- `text`: for Markdown. Markdown's punctuation is backslash-escaped and `< > &` become
  entities, so the value reads exactly as it is and nothing in it is markup.
- `code`: the same in a monospace span (for file names: a backtick in one cannot end a
  Markdown code span, because there is none).
- `label`: for plotly (trace names, tooltips, titles): entities for `< > &`, which plotly
  shows as the characters.
- `error`: a gr.Error whose message is shown as text.
"""

from __future__ import annotations

import html
import re

import gradio as gr

# what Markdown acts on inside a line: emphasis, code, links and images, tables,
# strikethrough, maths; ':' and '@' end autolinks (http://…, a@b.c) and "www." below
_MARKDOWN = frozenset("\\`*_[]()!|~:$@")


def text(value) -> str:
    """`value` as Markdown that renders as exactly its characters, on one line."""
    out = []
    for c in str(value):
        if c in "<>&":
            out.append(html.escape(c))
        elif c in _MARKDOWN:
            out.append("\\" + c)
        elif c < " " or c == "\x7f":  # a newline would start a new block
            out.append(" ")
        else:
            out.append(c)
    return re.sub(r"(?i)(www)\.", r"\1\\.", "".join(out))  # www.host would be a link


def code(value) -> str:
    """`value` as text in a monospace span."""
    return f"<code>{text(value)}</code>"


def label(value) -> str:
    """`value` for a plotly label: its characters, no tags."""
    return html.escape(str(value), quote=False)


def error(message) -> gr.Error:
    """A gr.Error showing `message` (often a refused value) as text."""
    return gr.Error(html.escape(str(message), quote=False))
