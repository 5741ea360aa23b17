"""In-context classification prompts in Crosbie & Shutova's format, generated and seeded.

    Below is a list of various sequences. Your task is to classify each sequence. Use the examples
    provided to understand how to classify each sequence correctly.

    V H V H:Foo

    Q K T B:Bar

    X R X R:

Abstract tasks over letters (Foo = the pattern, Bar = random letters): repetition `a b a b`,
recursion `a b b b`, centre-embedding `a b c b a`. Word-sequence tasks over categories of 16 words
(package data `data/words.json`): each class is a pair of categories and a sequence is one word of
each, e.g. WordSeq1 fruit-animal (Foo) vs furniture-profession (Bar); the 4-way versions add Mur
and Res pairings. NLP tasks read `text,label` rows and relabel them Foo/Bar (semantically unrelated
labels). Demos are class-balanced, never share a word (or letter) with the query, and the query
labels are balanced over prompts.

A prompt is a list of pieces, each a text and a knockout key: pieces of one category share a key,
so attention knockout can block "same-category word" pairs; other pieces (letters, ':', labels,
newlines) are matched by token identity.
"""

from __future__ import annotations

import csv
import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ihlab.errors import ConfigError

INSTRUCTION = (
    "Below is a list of various sequences. Your task is to classify each sequence. Use the "
    "examples provided to understand how to classify each sequence correctly.\n\n"
)
LABELS = ("Foo", "Bar", "Mur", "Res")
ABSTRACT = {"repetition": "abab", "recursion": "abbb", "centre_embedding": "abcba"}
WORD_TASKS = {
    "wordseq1": [("fruit", "animal"), ("furniture", "profession")],
    "wordseq2": [("vegetable", "vehicle"), ("body part", "instrument")],
    "wordseq1_4way": [
        ("fruit", "animal"),
        ("furniture", "profession"),
        ("color", "clothing"),
        ("country", "sport"),
    ],
    "wordseq2_4way": [
        ("vegetable", "vehicle"),
        ("body part", "instrument"),
        ("tool", "drink"),
        ("color", "country"),
    ],
}
PROMPT_TASKS = (*ABSTRACT, *WORD_TASKS, "nlp")


@dataclass(frozen=True)
class Piece:
    text: str
    key: str | None = None  # a category: pieces with the same key count as the same token


@dataclass
class Prompt:
    task: str
    shots: int
    pieces: list[Piece]
    label: int  # index of the correct option
    options: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)


@dataclass
class Item:
    """One sequence to classify: its pieces (without the label), its class and its words."""

    pieces: list[Piece]
    label: int
    words: frozenset[str]


def word_categories() -> dict[str, list[str]]:
    """The shipped categories of 16 words each."""
    return json.loads(resources.files("ihlab.probe").joinpath("data/words.json").read_text())


def abstract_item(kind: str, label: int, rng: random.Random, banned: set[str]) -> Item:
    """Foo (label 0): the pattern over distinct letters; Bar (1): random letters not matching it."""
    pattern = ABSTRACT[kind]
    letters = [c for c in string.ascii_uppercase if c not in banned]
    if label == 0:
        chosen = dict(
            zip(sorted(set(pattern)), rng.sample(letters, len(set(pattern))), strict=True)
        )
        seq = [chosen[c] for c in pattern]
    else:
        while True:
            seq = [rng.choice(letters) for _ in pattern]
            if not _matches(seq, pattern):
                break
    pieces = [Piece(("" if i == 0 else " ") + c) for i, c in enumerate(seq)]
    return Item(pieces, label, frozenset(seq))


def _matches(seq: Sequence[str], pattern: str) -> bool:
    """Whether seq follows the letter pattern (same letters where the pattern repeats, distinct
    letters where it differs)."""
    mapping: dict[str, str] = {}
    for p, s in zip(pattern, seq, strict=True):
        if mapping.setdefault(p, s) != s:
            return False
    return len(set(mapping.values())) == len(mapping)


def word_item(
    pairs: Sequence[tuple[str, str]],
    label: int,
    rng: random.Random,
    banned: set[str],
    words: dict[str, list[str]],
) -> Item:
    chosen = [rng.choice([w for w in words[cat] if w not in banned]) for cat in pairs[label]]
    pieces = [
        Piece(("" if i == 0 else " ") + w, key=cat)
        for i, (w, cat) in enumerate(zip(chosen, pairs[label], strict=True))
    ]
    return Item(pieces, label, frozenset(chosen))


NLP_FIX = "Fix: one row per example with a non-empty `text` and a `label` (2 to 4 labels)."


def read_nlp_rows(path: str | Path) -> list[tuple[str, int]]:
    """(text, label) rows of a JSONL or CSV file with fields `text` and `label` (labels are mapped
    to 0, 1, ... in sorted order); a malformed file raises a ConfigError naming the line."""
    path = Path(path)
    key = f"tasks.nlp_path={path}"
    if path.suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"{key}: expected a .jsonl or .csv file. {NLP_FIX}")
    records: list[tuple[int, object]] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{key}: line {number} is not JSON ({err.msg}).") from None
    else:
        with path.open(newline="") as f:
            records = [(number, r) for number, r in enumerate(csv.DictReader(f), start=2)]
    rows = []
    for number, record in records:
        text = record.get("text") if isinstance(record, dict) else None
        label = record.get("label") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip() or label in (None, ""):
            raise ConfigError(f"{key}: line {number} lacks a text or a label. {NLP_FIX}")
        rows.append((text, str(label)))
    return numbered_labels(rows, key)


def numbered_labels(rows: Sequence[tuple[str, str]], key: str) -> list[tuple[str, int]]:
    """Rows with labels mapped to 0, 1, ... in sorted order, checked for the prompt format: 2 to 4
    labels (Foo, Bar, Mur, Res), each with 2 rows or more (a query and a different demo)."""
    names = sorted({label for _, label in rows})
    counts = {name: sum(label == name for _, label in rows) for name in names}
    if not 2 <= len(names) <= len(LABELS):
        raise ConfigError(f"{key}: {len(names)} distinct labels {names[:10]}. {NLP_FIX}")
    if min(counts.values()) < 2:
        raise ConfigError(f"{key}: each label needs 2 rows or more, got {counts}. {NLP_FIX}")
    return [(text, names.index(label)) for text, label in rows]


def load_hf_rows(
    name: str, split: str = "validation", text: str = "sentence", label: str = "label"
) -> list[tuple[str, int]]:
    """(text, label) rows of a Hugging Face `datasets` dataset (needs `pip install datasets` and
    the network or a local datasets cache), labels mapped to 0, 1, ... in sorted order."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "tasks.nlp_dataset needs the datasets package. Fix: pip install datasets"
        ) from None
    key = f"tasks.nlp_dataset={name}"
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub, the cache and the split each raise their own type
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(f"{key} (split {split}): cannot load it ({reason}).") from None
    missing = [f for f in (text, label) if f not in data.column_names]
    if missing:
        raise ConfigError(
            f"{key}: no field {missing}. Fix: set tasks.nlp_fields=[text, label] from "
            f"{data.column_names}."
        )
    rows = [(str(t), str(v)) for t, v in zip(data[text], data[label], strict=True)]
    return numbered_labels(rows, key)


def make_prompts(
    task: str,
    shots: int,
    n_prompts: int,
    seed: int,
    nlp_rows: Sequence[tuple[str, int]] | None = None,
) -> list[Prompt]:
    """`n_prompts` prompts of one task with `shots` demos each; query labels balanced."""
    rng = random.Random(f"{task}/{shots}/{seed}")
    words = word_categories()
    if task in ABSTRACT:
        n_classes = 2

        def item(label: int, banned: set[str]) -> Item:
            return abstract_item(task, label, rng, banned)

    elif task in WORD_TASKS:
        pairs = WORD_TASKS[task]
        n_classes = len(pairs)

        def item(label: int, banned: set[str]) -> Item:
            return word_item(pairs, label, rng, banned, words)

    elif task == "nlp":
        if not nlp_rows:
            raise ValueError("task nlp needs rows: set tasks.nlp_path to a JSONL/CSV file.")
        by_label: dict[int, list[int]] = {}
        for i, (_, label) in enumerate(nlp_rows):
            by_label.setdefault(label, []).append(i)
        n_classes = len(by_label)

        def item(label: int, banned: set[str]) -> Item:
            index = rng.choice([i for i in by_label[label] if str(i) not in banned])
            return Item([Piece(nlp_rows[index][0])], label, frozenset({str(index)}))

    else:
        raise ValueError(f"unknown task {task!r}; choose from {PROMPT_TASKS}.")
    options = LABELS[:n_classes]
    prompts = []
    for p in range(n_prompts):
        query = item(p % n_classes, set())
        demo_labels = [i % n_classes for i in range(shots)]
        rng.shuffle(demo_labels)
        pieces = [Piece(INSTRUCTION)]
        for label in demo_labels:
            demo = item(label, set(query.words))
            pieces += [*demo.pieces, Piece(":"), Piece(options[label]), Piece("\n\n")]
        pieces += [*query.pieces, Piece(":")]
        prompts.append(Prompt(task, shots, pieces, query.label, options))
    return prompts
