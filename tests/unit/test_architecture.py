"""The architecture holds (docs/architecture.md): the import contracts in pyproject.toml, no
import hidden inside a function to dodge a cycle, a training process that starts its W&B writer
before torch, and a documentation site that builds strictly with every page and link in place."""

from __future__ import annotations

import ast
import html.parser
import subprocess
import sys
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "ihlab"
BIN = Path(sys.executable).parent

# Imports that may sit inside a function, and why: optional dependencies (installed with an extra,
# imported only where used) and the one start-up ordering (the W&B writer before torch).
DEFERRED = {
    ("ihlab.apps.launch", "ihlab.apps.train"): "the W&B writer starts before torch is imported",
    ("ihlab.tracking.wandb_writer", "wandb"): "imported in the writer process, not in training",
    ("ihlab.tracking.wandb_writer", "wandb.sdk.launch"): "imported in the writer process",
    ("ihlab.tracking.wandb_writer", "pandas"): "imported in the writer process",
    ("ihlab.tracking.dashboard", "wandb_workspaces.reports.v2"): "the dashboard extra",
    ("ihlab.tracking.dashboard", "wandb_workspaces.workspaces"): "the dashboard extra",
    ("ihlab.tracking.dashboard", "wandb_workspaces"): "the dashboard extra",
    ("ihlab.probe.prompts", "datasets"): "optional: only for tasks.nlp_dataset",
    ("ihlab.probe.models", "transformers"): "the probe extra",
    ("ihlab.probe.models", "huggingface_hub.utils"): "the probe extra",
    ("ihlab.probe.models", "safetensors.torch"): "the probe extra",
    ("ihlab.probe.attention", "transformers"): "the probe extra",
    ("ihlab.export.lens", "transformer_lens"): "the lens extra",
    ("ihlab.export.lens", "safetensors.torch"): "the lens extra (safetensors comes with it)",
    ("ihlab.export.lens", "tokenizers"): "with the lens extra: a tokenizer for TransformerLens",
    ("ihlab.export.lens", "transformers"): "the lens extra",
    ("ihlab.apps.export", "ihlab.export.lens"): "argument errors print before torch loads",
    ("ihlab.probe.attention", "transformers.masking_utils"): "the probe extra",
    ("ihlab.data.image_features", "torchvision"): "optional: only the ResNet extractor",
    ("ihlab.data.text.corpus", "datasets"): "optional: only for data.source=hf",
    ("ihlab.data.text.tokenizer", "transformers"): "the probe extra: the SmolLM2 tokenizer",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_inside_functions(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import statement inside a function of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(alias.name, inner.lineno) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.module:
                    found.append((inner.module, inner.lineno))
    return found


def test_the_import_contracts_hold() -> None:
    """The layers (apps > train | compare | probe > clamps | data | tracking > metrics | stats |
    runs > model > sites | assets > errors | seeding | choices), the leaf clamp spec, and no
    cycle in any package."""
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_is_deferred_into_a_function_except_the_listed_ones() -> None:
    found = {
        (module_name(path), imported): line
        for path in sorted(SRC.rglob("*.py"))
        for imported, line in imports_inside_functions(path)
    }
    unexplained = [
        f"{m} line {line}: import {i}" for (m, i), line in found.items() if (m, i) not in DEFERRED
    ]
    assert not unexplained, "imports inside functions: " + "; ".join(unexplained)
    assert set(DEFERRED) <= set(found), set(DEFERRED) - set(found)  # the list stays exact


def test_the_training_entry_point_starts_the_wandb_writer_before_importing_torch() -> None:
    heavy = "{'torch', 'lightning', 'wandb'}"
    code = f"import sys, ihlab.apps.launch; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


class Links(html.parser.HTMLParser):
    """Every href and src of a page, and every id it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.targets.append(value)
            if name == "id" and value:
                self.ids.add(value)


def test_the_docs_site_builds_strictly_and_every_internal_link_resolves(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    pages = sorted(ROOT.glob("docs/**/*.md"))
    assert len(pages) >= 20
    parsed: dict[Path, Links] = {}
    for md in pages:
        rel = md.relative_to(ROOT / "docs").with_suffix("")
        page = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert page.is_file(), f"{md} did not render"
        parsed[page] = Links()
        parsed[page].feed(page.read_text())
        assert "<h1" in page.read_text(), f"{md} rendered without a title"
    for page, links in parsed.items():
        for target in links.targets:
            url = urlparse(target)
            if url.scheme or target.startswith(("mailto:", "data:", "#")):
                continue
            path, fragment = urldefrag(target)
            resolved = (page.parent / path).resolve()
            if resolved.is_dir():
                resolved = resolved / "index.html"
            assert resolved.is_file(), f"{page.relative_to(site)} links to missing {target}"
            if fragment and resolved in parsed:
                assert fragment in parsed[resolved].ids, f"{page}: no #{fragment} in {target}"


@pytest.mark.parametrize("page", ["README.md"])
def test_the_readme_is_short_and_keeps_the_two_setup_commands(page: str) -> None:
    text = (ROOT / page).read_text()
    assert len(text.splitlines()) <= 250
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line.strip() for line in text.splitlines() if "-m pytest" in line)
    assert test_command in ci  # CI runs exactly the README's test command
    assert text.count("pip install torch==2.13.0") == 2
