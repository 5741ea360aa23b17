"""Head names and metric keys: built and parsed in one place (sites.py), round trips exact."""

from __future__ import annotations

import re

import pytest

from ihlab.sites import head_key, head_key_regex, head_name, parse_head_key, parse_head_name


@pytest.mark.parametrize(("layer", "head"), [(0, 0), (1, 7), (18, 6), (29, 11)])
def test_names_and_keys_round_trip(layer: int, head: int) -> None:
    assert head_name(layer, head) == f"L{layer}H{head}"
    assert parse_head_name(head_name(layer, head)) == (layer, head)
    key = head_key("prefix_matching", layer, head)
    assert key == f"heads/prefix_matching/L{layer}H{head}"
    assert parse_head_key(key) == ("prefix_matching", layer, head)
    assert re.match(head_key_regex("prefix_matching"), key)
    assert not re.match(head_key_regex("previous_token"), key)


@pytest.mark.parametrize(
    "key",
    [
        "heads/heatmap",
        "unclamped/heads/copying/L0H1",
        "heads/copying/L0",
        "heads/copying/LxH1",
        "eval/loss",
        "heads/a/b/L0H1",
    ],
)
def test_other_keys_are_not_head_keys(key: str) -> None:
    assert parse_head_key(key) is None


def test_head_names_are_read_case_blind_and_bad_ones_refused() -> None:
    assert parse_head_name("l18h6") == (18, 6) and parse_head_name(" L2H3 ") == (2, 3)
    for bad in ("18.6", "L18", "H6", "L-1H2", "LaHb"):
        assert parse_head_name(bad) is None
