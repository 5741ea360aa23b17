"""The probe's attention function and head scores on tiny random Hugging Face models of every
supported architecture (no download: configs built here)."""

from __future__ import annotations

import pytest
import torch

from ihlab.clamps import induction_pattern
from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.heads import PrefixProtocol, head_scores, repeated_token_batch
from tiny_hf import ARCHS, PROTOCOL, VOCAB, tiny


@pytest.mark.parametrize("arch", ARCHS)
def test_ihlab_attention_reproduces_the_models_own_attention(arch: str) -> None:
    loaded = tiny(arch)
    tokens = repeated_token_batch(loaded, PROTOCOL)
    ours = loaded.model(input_ids=tokens).logits
    loaded.model.set_attn_implementation("eager")
    eager = loaded.model(input_ids=tokens).logits
    torch.testing.assert_close(ours, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_constructed_induction_head_scores_about_1_and_the_others_about_0(arch: str) -> None:
    loaded = tiny(arch)
    tokens = repeated_token_batch(loaded, PROTOCOL)
    ideal = induction_pattern(tokens, torch.zeros(()))[:, 0]  # (batch, query, key)
    state = ProbeState(pattern_override={1: {2: ideal}})
    scores = head_scores(loaded, PROTOCOL, state)
    prefix = scores["prefix_matching"]  # (layer, head)
    assert prefix.shape == (2, 4)
    assert prefix[1, 2] == pytest.approx(1.0, abs=1e-5)
    others = torch.cat([prefix[0], prefix[1, :2], prefix[1, 3:]])
    assert others.max() < 0.3  # random heads spread attention over ~40 keys
    assert scores["previous_token"].shape == scores["copying"].shape == (2, 4)
    assert ((scores["copying"] >= -1) & (scores["copying"] <= 1)).all()


def test_the_prefix_protocol_draws_distinct_mid_vocabulary_tokens() -> None:
    loaded = tiny("llama")
    tokens = repeated_token_batch(loaded, PrefixProtocol())
    assert tokens.shape == (5, 201)
    assert (tokens[:, 0] == 0).all()  # BOS
    for row in tokens:
        first = row[1:51]
        assert len(set(first.tolist())) == 50
        assert torch.equal(row[1:].view(4, 50), first.expand(4, 50))
        assert first.min() >= int(0.04 * VOCAB) and first.max() < int(0.96 * VOCAB)
    assert not torch.equal(tokens[0], tokens[1])


def test_probing_state_captures_patterns_of_query_heads_under_gqa() -> None:
    loaded = tiny("llama")
    tokens = repeated_token_batch(loaded, PROTOCOL)
    with probing(ProbeState(capture_patterns=True)) as state:
        loaded.model(input_ids=tokens)
    assert set(state.patterns) == {0, 1}
    pattern = state.patterns[0]
    assert pattern.shape == (3, 4, tokens.shape[1], tokens.shape[1])  # 4 query heads, 2 KV heads
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
    assert torch.all(pattern.triu(1) == 0)  # causal
