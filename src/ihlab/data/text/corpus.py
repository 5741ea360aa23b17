"""Where a text run's words come from: documents, each with the group the training / validation
split is made by, so that no passage is on both sides of it.

Three sources:
- `bible`: public-domain English translations of the Bible installed by pip name (the
  `pythonbible-<code>` wheels: one translation each, as a string literal in a module, with every
  verse's start and end offset into that literal). A document is one book of one translation; the
  split is by book across all translations (`VALIDATION_BOOKS`), so no passage is in both splits
  in any wording. Square brackets (words a translation supplied) are dropped, backticks (one
  translation's apostrophes) become apostrophes.
- `files`: the user's paths, folders or globs of UTF-8 text (`.txt` and anything else: one
  document per file) or JSON lines (`.jsonl`: one document per line's `text_field`). Split by
  document: a document is in validation when a hash of its name falls in `val_share` of the range
  (stable when files are added).
- `hf`: a Hugging Face `datasets` dataset, by name and split (needs the hub) or saved with
  `save_to_disk` (a folder); one document per row's `text_field`, split as `files`.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ihlab.errors import ConfigError

# Books held out for validation, by number (1 Genesis ... 66 Revelation): narrative, wisdom,
# prophecy, gospels and letters, both testaments; 9.7% of the six default translations' text.
VALIDATION_BOOKS = frozenset({6, 8, 17, 21, 32, 41, 43, 48, 59, 60})  # Joshua, Ruth, Esther,
# Ecclesiastes, Jonah, Mark, John, Galatians, James, 1 Peter
BIBLE_MODULE = "plain_text_readers_bible.py"  # the text without verse numbers
VERSE_BOOK = 1_000_000  # verse id = book * 1e6 + chapter * 1e3 + verse
VERSE_MARKER = re.compile(r"\\+\d+:\d+\\+")
VERSE_ENTRY = re.compile(r"(\d+): (\d+)")  # "1001001: 55," in the modules' offset dicts


@dataclass(frozen=True)
class Document:
    """A document's `name` (where it came from), its `text`, and whether it is `validation`."""

    name: str
    text: str
    validation: bool


def held_out(name: str, val_share: float) -> bool:
    """Whether a document of this name is in validation: its hash in the first `val_share`."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_share


# ---- the Bible translations


def bible_file(code: str) -> Path:
    """The installed text module of translation `code` (package `pythonbible-<code>`)."""
    spec = importlib.util.find_spec(f"pythonbible_{code}")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"data.translations: no translation {code!r} installed (the package "
            f"pythonbible-{code}). Fix: pip install pythonbible-{code}, or use one of the "
            "installed ones (the default list)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / BIBLE_MODULE


def _unescape(raw: str) -> str:
    r"""A slice of a Python string literal's source as the string it denotes (the modules hold
    only \\, \', \" and \n escapes)."""
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], raw)


def _clean(text: str) -> str:
    """Supplied-word brackets dropped, backtick apostrophes made apostrophes, and one
    translation's in-text verse markers (a backslash-fenced "43:1") made spaces."""
    text = VERSE_MARKER.sub(" ", text).replace("\\", "")
    return text.replace("[", "").replace("]", "").replace("`", "'")


def bible_books(code: str) -> Iterator[tuple[int, str]]:
    """(book number, text) of every book of translation `code`. The module's verse offsets index
    the literal's source (before its escapes are decoded), so each book is cut from the source
    and then decoded."""
    source = bible_file(code).read_text(encoding="utf-8")
    start = source.index('"""') + 3
    end = source.index('"""', start)
    literal = source[start:end]
    dicts = re.findall(r"\{[^{}]*\}", source[end:])
    starts, ends = ({int(k): int(v) for k, v in VERSE_ENTRY.findall(d)} for d in dicts[:2])
    bounds: dict[int, list[int]] = {}
    for verse, offset in starts.items():
        book = verse // VERSE_BOOK
        low, high = bounds.setdefault(book, [offset, ends[verse]])
        bounds[book] = [min(low, offset), max(high, ends[verse])]
    for book, (low, high) in sorted(bounds.items()):
        yield book, _clean(_unescape(literal[low:high])).strip()


def bible_documents(translations: Sequence[str]) -> list[Document]:
    """Every book of every translation, split by book (`VALIDATION_BOOKS`)."""
    return [
        Document(f"{code}/{book:02d}", text, book in VALIDATION_BOOKS)
        for code in translations
        for book, text in bible_books(code)
    ]


# ---- the user's files


def _expand(paths: Sequence[str], key: str) -> list[tuple[Path, str]]:
    """(file, name) of the files named by paths, folders (every file below, named by its path
    inside the folder) and globs (named by file name), sorted by name. Names, not absolute paths,
    decide the split, so moving a corpus does not change it."""
    found: dict[str, Path] = {}
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            found |= {str(p.relative_to(path)): p for p in path.rglob("*") if p.is_file()}
        elif path.is_file():
            found[path.name] = path
        else:
            matches = [Path(p) for p in glob.glob(str(path), recursive=True)]
            if not matches:
                raise ConfigError(
                    f"{key}.paths: {entry!r} is no file, folder or glob that matches a file. Fix: "
                    "give existing UTF-8 text or JSONL files."
                )
            found |= {p.name: p for p in matches if p.is_file()}
    return [(found[name], name) for name in sorted(found)]


def _read_utf8(path: Path, key: str) -> str:
    """The file's text; an empty file (or one of whitespace only) is refused, not skipped: a
    corpus that silently lost a file would train on less than the user meant."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{key}.paths: {path} is not UTF-8 (byte offset {err.start}: "
            f"{data[err.start : err.start + 4]!r}). Fix: convert it to UTF-8 "
            "(e.g. iconv -t UTF-8) or leave it out."
        ) from None
    if not text.strip():
        raise ConfigError(f"{key}.paths: {path} is empty. Fix: leave it out or give it text.")
    return text


def file_documents(
    paths: Sequence[str], text_field: str, val_share: float, key: str = "data"
) -> list[Document]:
    """One document per text file, or per line of a `.jsonl` file (its `text_field`); errors
    name `key`'s fields (`data.paths` for a training run)."""
    documents = []
    for path, name in _expand(paths, key):
        text = _read_utf8(path, key)
        if path.suffix != ".jsonl":
            documents.append(Document(name, text, held_out(name, val_share)))
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                value = row[text_field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(
                    f"{key}.paths: {path} line {number} is not a JSON object with a "
                    f"{text_field!r} field. Fix: set {key}.text_field to the field holding the "
                    "text."
                ) from None
            line_name = f"{name}:{number}"
            documents.append(Document(line_name, str(value), held_out(line_name, val_share)))
    return documents


# ---- Hugging Face datasets


def hf_documents(name: str, split: str, text_field: str, val_share: float) -> list[Document]:
    """One document per row of a `datasets` dataset: a folder saved with `save_to_disk`, or a
    hub name with its `split`."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "data.source=hf needs the datasets package. Fix: pip install datasets."
        ) from None
    folder = Path(name).expanduser()
    if folder.is_dir():  # named by the folder's name: moving it keeps the split
        label = folder.name
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[split]
    else:
        label = name
        loaded = datasets.load_dataset(name, split=split)
    if text_field not in loaded.column_names:
        raise ConfigError(
            f"data.text_field={text_field!r}: the dataset's columns are {loaded.column_names}. "
            "Fix: name the column holding the text."
        )
    return [
        Document(f"{label}/{split}/{i}", str(text), held_out(f"{label}/{split}/{i}", val_share))
        for i, text in enumerate(loaded[text_field])
    ]
