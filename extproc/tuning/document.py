"""Reports as a small document model (headings, paragraphs, code, tables, figures) and its
renderings: a terminal table, Markdown and HTML.

The terminal rendering leaves figures out; Markdown references them as SVG files written next to
it; HTML inlines them. `write_report` picks the rendering by file extension.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# document model


@dataclass(frozen=True, slots=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True, slots=True)
class Para:
    text: str


@dataclass(frozen=True, slots=True)
class Code:
    text: str
    lang: str = ""


@dataclass(frozen=True, slots=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True, slots=True)
class Figure:
    name: str  # file stem, unique within a report
    title: str
    svg: str


Block = Heading | Para | Code | Table | Figure

# ---------------------------------------------------------------------------------------------
# renderers


def render_text(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            rule = "=" if block.level == 1 else "-"
            out += ["", block.text, rule * min(len(block.text), 100)]
        elif isinstance(block, Para):
            out += textwrap.wrap(block.text.replace("`", ""), 100, break_on_hyphens=False)
        elif isinstance(block, Code):
            out += ["", *("  " + line for line in block.text.splitlines())]
        elif isinstance(block, Table):
            out += ["  " + line for line in _aligned(block)]
    return "\n".join(out).lstrip("\n") + "\n"


_NUMERIC = re.compile(r"^[-+]?[$]?[\d,.]+( ?%)?$|^—$|^$")


def _numeric_columns(table: Table) -> list[bool]:
    """Columns whose cells are all numbers (right-aligned); the first column never is."""
    return [
        index > 0 and all(_NUMERIC.match(row[index]) for row in table.rows)
        for index in range(len(table.headers))
    ]


def _aligned(table: Table) -> list[str]:
    grid = [list(table.headers), *(list(r) for r in table.rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(table.headers))]
    right = _numeric_columns(table)
    lines = []
    for row in grid:
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_markdown(blocks: Sequence[Block], figure_prefix: str) -> tuple[str, dict[str, str]]:
    """Markdown text and the SVG files it links to (`<prefix>-<figure>.svg` -> content)."""
    out: list[str] = []
    files: dict[str, str] = {}
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            out += [block.text, ""]
        elif isinstance(block, Code):
            out += [f"```{block.lang}", block.text, "```", ""]
        elif isinstance(block, Table):
            marks = ["---:" if right else "---" for right in _numeric_columns(block)]
            out += [_md_row(block.headers), "|" + "|".join(marks) + "|"]
            out += [_md_row(row) for row in block.rows]
            out.append("")
        else:
            name = f"{figure_prefix}-{block.name}.svg"
            files[name] = block.svg
            out += [f"![{block.title}]({name})", ""]
    return "\n".join(out), files


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


_CODE = re.compile(r"`([^`]+)`")

_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{padding:3px 10px;"
    "border-bottom:1px solid #ddd;text-align:left}.num{text-align:right}td:first-child{"
    "white-space:pre}code{background:#f3f3f3;padding:0 3px}pre{background:#f6f6f6;padding:.8em;"
    "overflow-x:auto}figure{margin:1em 0}"
)


def render_html(blocks: Sequence[Block], title: str) -> str:
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Code):
            out.append(f"<pre><code>{escape(block.text)}</code></pre>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{escape(h)}</th>" for h in block.headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            out.append(f"<figure>{block.svg}</figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", escape(text, quote=False))


def write_report(path: Path, blocks: Sequence[Block], title: str) -> list[Path]:
    """Write a report by file extension (.md, .html/.htm); returns every file written."""
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        path.write_text(render_html(blocks, title), encoding="utf-8")
        return [path]
    if suffix in (".md", ".markdown"):
        text, files = render_markdown(blocks, path.stem)
        path.write_text(text, encoding="utf-8")
        written = [path]
        for name, svg in files.items():
            target = path.with_name(name)
            target.write_text(svg + "\n", encoding="utf-8")
            written.append(target)
        return written
    if suffix == ".txt":
        path.write_text(render_text(blocks), encoding="utf-8")
        return [path]
    raise ValueError(f"unknown report format {suffix!r}: use .md, .html or .txt (or --json)")
