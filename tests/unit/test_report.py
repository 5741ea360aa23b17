"""report.html's parts: the Markdown that compare_tables.py writes, as HTML, and PNGs embedded
byte for byte. (The page ihlab-compare writes from real runs: tests/integration/test_compare.py.)"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from ihlab.compare.report import markdown_to_html, write_report

MARKDOWN = """# Comparison grouped by `condition`

Baseline: `baseline`. Intervals <95%> & more.

| condition | note |
|---|---|
| baseline | a \\| b |
| match+copy | `x` |
"""


def test_markdown_becomes_headings_paragraphs_and_tables() -> None:
    assert markdown_to_html(MARKDOWN) == "\n".join(
        [
            "<h1>Comparison grouped by <code>condition</code></h1>",
            "<p>Baseline: <code>baseline</code>. Intervals &lt;95%&gt; &amp; more.</p>",
            "<table><tr><th>condition</th><th>note</th></tr>"
            "<tr><td>baseline</td><td>a | b</td></tr>"
            "<tr><td>match+copy</td><td><code>x</code></td></tr></table>",
        ]
    )


def test_the_page_embeds_every_plot_in_order(tmp_path: Path) -> None:
    (tmp_path / "comparison.md").write_text(MARKDOWN)
    plots = {name: tmp_path / f"{name}.png" for name in ("curves", "heads")}
    for i, path in enumerate(plots.values()):
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 50)
    write_report(tmp_path / "report.html", tmp_path / "comparison.md", plots)
    page = (tmp_path / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [p.read_bytes() for p in plots.values()]
    assert re.findall(r"<figcaption>(\w+)</figcaption>", page) == ["curves", "heads"]
    assert page.startswith("<!DOCTYPE html>") and markdown_to_html(MARKDOWN) in page
