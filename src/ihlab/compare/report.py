"""report.html for `ihlab-compare`: the comparison's tables and plots in one self-contained page.

The page is comparison.md rendered to HTML (headings, paragraphs, tables, inline code) followed by
every plot as a PNG embedded in base64, so it opens in any browser from a laptop, a cluster's file
share or an e-mail, with no server, no W&B account and no other file beside it.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 0.2em; }
figure { margin: 2em 0; }
img { max-width: 100%; }
"""


def inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def table_cells(line: str) -> list[str]:
    """The cells of a Markdown table row (`\\|` is a literal bar)."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_to_html(text: str) -> str:
    """The Markdown that tables.py writes (headings, paragraphs, pipe tables) as HTML."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(table_cells(lines[i]))
                i += 1
            head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
            body = [
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>"
                for row in rows[2:]  # rows[1] is the |---| rule
            ]
            out.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def write_report(path: Path, markdown: Path, plots: Mapping[str, Path]) -> None:
    """report.html: the tables of `markdown`, then each plot (name -> PNG file) embedded."""
    figures = [
        f'<figure><figcaption>{html.escape(name)}</figcaption><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"></figure>'
        for name, png in plots.items()
    ]
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>ihlab comparison</title>',
        f"<style>{STYLE}</style></head><body>",
        markdown_to_html(markdown.read_text()),
        "<h2>Plots</h2>",
        *figures,
        "</body></html>",
    ]
    path.write_text("\n".join(page) + "\n")
