"""Task generators: the paper's format, balanced classes, demos never sharing the query's words."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from ihlab.probe.prompts import ABSTRACT, INSTRUCTION, WORD_TASKS, _matches, make_prompts

TASK_NAMES = [*ABSTRACT, *WORD_TASKS]


def demos_and_query(prompt) -> tuple[list[tuple[str, str]], str]:
    """(sequence, label) of every demo, and the query sequence, parsed back from the text."""
    body = prompt.text.removeprefix(INSTRUCTION)
    *demos, query = body.split("\n\n")
    return [tuple(d.rsplit(":", 1)) for d in demos], query.removesuffix(":")


@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("shots", [0, 5, 10])
def test_prompts_are_balanced_and_leak_free(task: str, shots: int) -> None:
    prompts = make_prompts(task, shots, n_prompts=12, seed=3)
    n_classes = len(prompts[0].options)
    assert Counter(p.label for p in prompts) == Counter(
        {c: 12 // n_classes for c in range(n_classes)}
    )
    for prompt in prompts:
        assert prompt.text.startswith(INSTRUCTION) and prompt.text.endswith(":")
        demos, query = demos_and_query(prompt)
        assert len(demos) == shots
        counts = Counter(label for _, label in demos)
        assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1
        assert set(counts) <= set(prompt.options)
        query_words = set(query.split())
        for sequence, _ in demos:
            assert not query_words & set(sequence.split())  # demos never share the query's words


@pytest.mark.parametrize("task", list(ABSTRACT))
def test_foo_follows_the_pattern_and_bar_does_not(task: str) -> None:
    for prompt in make_prompts(task, 10, n_prompts=8, seed=0):
        demos, query = demos_and_query(prompt)
        for sequence, label in [*demos, (query, prompt.options[prompt.label])]:
            assert _matches(sequence.split(), ABSTRACT[task]) == (label == "Foo")


def test_word_sequences_pair_the_classes_categories() -> None:
    from ihlab.probe.prompts import word_categories

    words = word_categories()
    assert all(len(v) == 16 for v in words.values())
    for prompt in make_prompts("wordseq1_4way", 20, n_prompts=4, seed=1):
        assert prompt.options == ("Foo", "Bar", "Mur", "Res")
        demos, _ = demos_and_query(prompt)
        for sequence, label in demos:
            first, second = sequence.split()
            pair = WORD_TASKS["wordseq1_4way"][prompt.options.index(label)]
            assert first in words[pair[0]] and second in words[pair[1]]


@pytest.mark.parametrize("task", list(WORD_TASKS))
def test_every_word_piece_carries_its_own_category_as_its_knockout_key(task: str) -> None:
    """The category knockout blocks attention between words of one category: each word piece's
    key must be the category the word lists put it in (checked against the lists themselves),
    and every other piece (instruction, ':', labels, blank lines) has none."""
    from ihlab.probe.prompts import word_categories

    category_of = {w: cat for cat, ws in word_categories().items() for w in ws}
    seen = set()
    for prompt in make_prompts(task, 10, n_prompts=8, seed=2):
        for piece in prompt.pieces:
            word = piece.text.strip()
            if piece.key is None:
                assert word not in category_of, f"{word!r} has no knockout key"
            else:
                assert piece.key == category_of[word]
                seen.add(piece.key)
    assert seen == {cat for pair in WORD_TASKS[task] for cat in pair}


def test_prompts_are_seeded() -> None:
    a = [p.text for p in make_prompts("wordseq2", 5, 6, seed=0)]
    assert a == [p.text for p in make_prompts("wordseq2", 5, 6, seed=0)]
    assert a != [p.text for p in make_prompts("wordseq2", 5, 6, seed=1)]


def test_nlp_rows_from_a_jsonl_file(tmp_path: Path) -> None:
    from ihlab.probe.prompts import read_nlp_rows

    path = tmp_path / "sst.jsonl"
    rows = [
        {"text": f"review number {i}", "label": "positive" if i % 2 else "negative"}
        for i in range(20)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = read_nlp_rows(path)
    assert data[:2] == [("review number 0", 0), ("review number 1", 1)]  # negative < positive
    prompts = make_prompts("nlp", 6, n_prompts=4, seed=0, nlp_rows=data)
    for prompt in prompts:
        demos, query = demos_and_query(prompt)
        assert all(sequence != query for sequence, _ in demos)
        assert prompt.options == ("Foo", "Bar")
        expected = data[[t for t, _ in data].index(query)][1]
        assert prompt.label == expected


MALFORMED_NLP = [
    ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label"\n', "line 2 is not JSON"),
    ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n', "line 2 lacks a text or a label"),
    ("bad.jsonl", '{"text": "", "label": 0}\n', "line 1 lacks a text or a label"),
    ("bad.jsonl", "[1, 2]\n", "line 1 lacks a text or a label"),
    ("bad.csv", "text,label\na,0\nb,\n", "line 3 lacks a text or a label"),
    ("bad.csv", "sentence,label\na,0\n", "line 2 lacks a text or a label"),
    ("one.csv", "text,label\na,0\nb,0\n", "1 distinct labels"),
    ("five.csv", "text,label\n" + "".join(f"t{i},{i % 5}\n" for i in range(10)), "5 distinct"),
    ("thin.csv", "text,label\na,0\nb,0\nc,1\n", "each label needs 2 rows or more"),
    ("rows.txt", "text,label\na,0\n", "expected a .jsonl or .csv file"),
]


@pytest.mark.parametrize(("name", "content", "message"), MALFORMED_NLP)
def test_malformed_nlp_files_fail_naming_the_file_and_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    from ihlab.errors import ConfigError
    from ihlab.probe.prompts import read_nlp_rows

    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"tasks.nlp_path={path}: .*{message}"):
        read_nlp_rows(path)


BAD_CONFIGS = [
    ({"tasks": {"names": ["sst"]}}, "tasks.names: unknown task 'sst'"),
    ({"tasks": {"names": []}}, "tasks.names is empty"),
    ({"tasks": {"names": ["nlp"]}}, r"nlp_path nor tasks\.nlp_dataset"),
    ({"tasks": {"names": ["nlp"], "nlp_path": "/no/such.jsonl"}}, "does not exist"),
    ({"tasks": {"n_prompts": 0}}, r"tasks\.n_prompts=0: need at least 1 prompt"),
    ({"tasks": {"shots": [-1]}}, r"tasks\.shots=\[-1\]"),
    ({"tasks": {"seeds": []}}, r"tasks\.seeds is empty"),
    ({"select": {"percents": [0.0]}}, r"select\.percents: 0\.0 is not a percentage"),
    ({"select": {"heads": ["18.6"]}}, r"select\.heads: head '18\.6': write heads as"),
    ({"select": {"random_seeds": [1, 1]}}, "repeats a seed"),
    ({"select": {"percents": [], "heads": []}}, "give percents or heads"),
    ({"model": {"dtype": "int8"}}, r"model\.dtype=int8: choose from"),
    ({"batch_size": 0}, "batch_size=0"),
    pytest.param(
        {"model": {"device": "cuda"}},
        r"model\.device=cuda: no CUDA device",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present"),
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_CONFIGS)
def test_probe_config_rejects_bad_values_naming_the_key(override: dict, message: str) -> None:
    from omegaconf import OmegaConf

    from ihlab.errors import ConfigError
    from ihlab.probe.config import ProbeConfig

    with pytest.raises(ConfigError, match=message):
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ProbeConfig), override))


def test_interventions_as_clamp_specs_become_result_columns() -> None:
    from ihlab.clamps.spec import ClampConfig
    from ihlab.errors import ConfigError
    from ihlab.probe.columns import check_heads_exist, columns
    from ihlab.probe.config import ProbeConfig

    specs = {
        "L1H2 zero": ClampConfig(site="blocks.1.attn.z", heads=[2], value="zero"),
        "L0H1 knockout": ClampConfig(site="blocks.0.attn.scores", heads=[1], value="knockout"),
    }
    cfg = ProbeConfig(interventions=specs)
    found = {c.name: c for c in columns(cfg, torch.rand(2, 4))}
    assert found["L1H2 zero"].conditions[0].mode == "ablate"
    assert found["L1H2 zero"].conditions[0].heads == [(1, 2)]
    assert found["L0H1 knockout"].conditions[0].mode == "knockout"
    assert found["1% IH knockout"].control == "1% random"
    assert found["1% IH knockout"].ablated == "1% IH ablated"
    assert len(found["1% random"].conditions) == 3  # one per random seed
    with pytest.raises(ConfigError, match=r"interventions\.bad: the probe supports"):
        ProbeConfig(
            interventions={"bad": ClampConfig(site="blocks.0.attn.z", heads=[0], value="copy")}
        )
    with pytest.raises(ConfigError, match=r"interventions\.far: head L5H0 does not exist"):
        far = {"far": ClampConfig(site="blocks.5.attn.z", heads=[0])}
        check_heads_exist(ProbeConfig(interventions=far), n_layers=2, n_heads=4)
