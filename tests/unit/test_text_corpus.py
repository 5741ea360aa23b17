"""The text family's corpus, tokenizer and token cache, against expectations built here: verses
read through pythonbible's own API, token files compared with a fresh tokenization, files
corrupted by hand."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pythonbible

from ihlab.data.text.cache import HEADER, CorruptCache, prepare, read_token_file
from ihlab.data.text.corpus import (
    VALIDATION_BOOKS,
    Document,
    bible_documents,
    file_documents,
    held_out,
    hf_documents,
)
from ihlab.data.text.tokenizer import END_OF_TEXT, train_bpe
from ihlab.errors import ConfigError

TRANSLATIONS = ["kjv", "asv", "web", "ylt", "dar", "bbe"]


@pytest.fixture(scope="module")
def bible() -> list[Document]:
    return bible_documents(TRANSLATIONS)


def verse(book: int, chapter: int, number: int) -> str:
    """A KJV verse through pythonbible's own reader, its supplied-word brackets dropped."""
    text = pythonbible.get_verse_text(
        book * 1_000_000 + chapter * 1000 + number, version=pythonbible.Version.KING_JAMES
    )
    return text.replace("[", "").replace("]", "")


def test_every_book_of_every_translation_once_split_by_book(bible: list[Document]) -> None:
    assert len(bible) == 66 * len(TRANSLATIONS)
    for doc in bible:
        book = int(doc.name.split("/")[1])
        assert doc.validation == (book in VALIDATION_BOOKS)
    for doc in bible:
        assert not any(mark in doc.text for mark in "[]`\\"), doc.name


@pytest.mark.parametrize(
    ("book", "chapter", "number"),
    [(32, 1, 1), (32, 4, 11), (41, 16, 8), (43, 11, 35), (8, 1, 16), (60, 5, 14)],
)
def test_a_validation_verse_is_in_validation_and_in_no_training_document(
    bible: list[Document], book: int, chapter: int, number: int
) -> None:
    text = verse(book, chapter, number)
    kjv = {d.name: d for d in bible if d.name.startswith("kjv/")}
    assert text in kjv[f"kjv/{book:02d}"].text
    assert not any(text in d.text for d in bible if not d.validation)


@pytest.mark.parametrize(("book", "chapter", "number"), [(1, 1, 1), (19, 23, 1), (66, 22, 21)])
def test_a_training_verse_is_in_its_book(
    bible: list[Document], book: int, chapter: int, number: int
) -> None:
    text = verse(book, chapter, number)
    (doc,) = [d for d in bible if d.name == f"kjv/{book:02d}"]
    assert text in doc.text and not doc.validation


def test_the_bbe_books_cut_from_the_undecoded_literal_start_and_end_where_the_book_does(
    bible: list[Document],
) -> None:
    """BBE's literal holds backslash escapes, so offsets into the decoded string drift; cut from
    the literal, each book starts with its first verse and ends with its last."""
    (genesis,) = [d for d in bible if d.name == "bbe/01"]
    (revelation,) = [d for d in bible if d.name == "bbe/66"]
    assert genesis.text.startswith("At the first God made the heaven and the earth.")
    assert revelation.text.endswith("be with the saints. So be it.")


def test_held_out_is_a_stable_share() -> None:
    names = [f"doc{i}" for i in range(4000)]
    share = sum(held_out(n, 0.1) for n in names) / len(names)
    assert abs(share - 0.1) < 0.015  # binomial s.d. 0.0047
    assert [held_out(n, 0.1) for n in names] == [held_out(n, 0.1) for n in names]
    assert not any(held_out(n, 0.0) for n in names)


def test_files_folders_globs_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second")
    rows = [{"text": "row one"}, {"text": "row two"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = file_documents([str(tmp_path)], "text", 0.0)
    assert [d.text for d in docs] == ["first document", "row one", "row two", "second"]
    assert [d.text for d in file_documents([str(tmp_path / "*.txt")], "text", 0.0)] == [
        "first document"
    ]


def test_bad_files_fail_in_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ConfigError, match=r"latin1.txt is not UTF-8 \(byte offset 3"):
        file_documents([str(bad)], "text", 0.0)
    with pytest.raises(ConfigError, match="no file, folder or glob"):
        file_documents([str(tmp_path / "missing.txt")], "text", 0.0)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "x"}\n')
    with pytest.raises(ConfigError, match=r"rows.jsonl line 1 .* 'text' field"):
        file_documents([str(rows)], "text", 0.0)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\t")
    with pytest.raises(ConfigError, match=r"data\.paths: .*empty\.txt is empty"):
        file_documents([str(empty)], "text", 0.0)


def test_a_dataset_saved_to_disk_gives_one_document_per_row_split_by_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [f"story number {i} about a cat" for i in range(40)]
    folder = tmp_path / "stories"
    table = datasets.Dataset.from_dict({"story": rows, "id": list(range(40))})
    datasets.DatasetDict({"train": table}).save_to_disk(str(folder))
    docs = hf_documents(str(folder), "train", "story", 0.25)
    assert [d.text for d in docs] == rows
    names = [f"stories/train/{i}" for i in range(40)]  # by folder name: moving it keeps the split
    assert [d.validation for d in docs] == [held_out(n, 0.25) for n in names]
    assert 0 < sum(d.validation for d in docs) < 40
    with pytest.raises(ConfigError, match=r"data.text_field='text': the dataset's columns are"):
        hf_documents(str(folder), "train", "text", 0.25)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="needs the datasets package"):
        hf_documents(str(folder), "train", "story", 0.25)


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Ünïcödé — and emoji 🦊 too.\n"] * 20


def test_the_bpe_round_trips_any_text_and_has_its_size() -> None:
    tokenizer = train_bpe(TEXTS, vocab_size=300)
    assert tokenizer.get_vocab_size() <= 300 and tokenizer.token_to_id(END_OF_TEXT) == 0
    for text in [*TEXTS[:2], "never seen: ξ 字 \t\x00 end"]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_the_token_file_is_a_fresh_tokenization_and_survives_damage(tmp_path: Path) -> None:
    tokenizer = train_bpe(TEXTS, vocab_size=300)
    docs = [Document("v", "validation text", True), Document("t1", TEXTS[0], False)]
    docs.append(Document("t2", TEXTS[1], False))
    end = tokenizer.token_to_id(END_OF_TEXT)
    expected_train = [*tokenizer.encode(TEXTS[0]).ids, end, *tokenizer.encode(TEXTS[1]).ids, end]
    expected = [*expected_train, *tokenizer.encode("validation text").ids, end]
    made = prepare(docs, tokenizer, tmp_path, progress=False)
    assert made.tokens.tolist() == expected and made.n_train == len(expected_train)
    assert made.train.tolist() == expected_train
    again = prepare(docs, tokenizer, tmp_path, progress=False)
    assert again.key == made.key and again.path.stat().st_mtime_ns == made.path.stat().st_mtime_ns

    data = made.path.read_bytes()
    made.path.write_bytes(data[:-2])  # truncated: a killed write, a full disk
    with pytest.raises(CorruptCache, match="header says otherwise"):
        read_token_file(made.path, made.key)
    assert prepare(docs, tokenizer, tmp_path, progress=False).tokens.tolist() == expected
    flipped = bytearray(made.path.read_bytes())
    flipped[HEADER.size] ^= 1  # one token changed
    made.path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptCache, match="checksum"):
        read_token_file(made.path, made.key)
    assert prepare(docs, tokenizer, tmp_path, progress=False).tokens.tolist() == expected
    assert np.asarray(made.tokens).dtype == np.uint16


@pytest.mark.slow  # reads the 98 MB GGUF file's metadata (~7 s)
def test_the_smollm2_tokenizer_rebuilt_from_the_gguf_round_trips_and_uses_its_tokens() -> None:
    """Decoding inverts encoding, and the ids name the GGUF file's own token strings (read here
    with the gguf package: byte-level BPE writes a space as "Ġ")."""
    from gguf import GGUFReader

    from ihlab.assets import smollm2_gguf
    from ihlab.data.text.tokenizer import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    assert tokenizer.get_vocab_size() == 49152
    for text in ["In the beginning God created the heaven and the earth.", "naïve 字 🦊\n\tend"]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    field = GGUFReader(smollm2_gguf("test", "install it")).fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    ids = tokenizer.encode("Hello world, hello worlds").ids
    assert "".join(tokens[i] for i in ids) == "HelloĠworld,ĠhelloĠworlds"


def _prepare_in_child(folder: str, queue: Any) -> None:
    tokenizer = train_bpe(TEXTS, vocab_size=300)
    docs = [Document("t", " ".join(TEXTS) * 50, False), Document("v", TEXTS[1], True)]
    queue.put(prepare(docs, tokenizer, Path(folder), progress=False).tokens.tolist())


def test_two_processes_preparing_the_same_corpus_at_once_leave_one_whole_file(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [
        context.Process(target=_prepare_in_child, args=(str(tmp_path), queue)) for _ in "ab"
    ]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    tokenizer = train_bpe(TEXTS, vocab_size=300)
    end = tokenizer.token_to_id(END_OF_TEXT)
    text = " ".join(TEXTS) * 50
    expected = [*tokenizer.encode(text).ids, end, *tokenizer.encode(TEXTS[1]).ids, end]
    assert results == [expected, expected]
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        f"{Path(p).name}" for p in tmp_path.glob("*.tokens")
    ]
    (file,) = tmp_path.glob("*.tokens")
    assert read_token_file(file, file.stem).tokens.tolist() == expected
