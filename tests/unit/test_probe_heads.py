"""The probe's attention function and head scores on tiny random Hugging Face models of every
supported architecture (no download: configs built here)."""

from __future__ import annotations

import pytest
import torch

from ihlab.clamps import induction_pattern
from ihlab.probe.attention import NAME, ProbeState, probing, register
from ihlab.probe.heads import PrefixProtocol, head_scores, repeated_token_batch
from ihlab.probe.models import LoadedModel, wrap

transformers = pytest.importorskip("transformers")

VOCAB = 300


class TinyTokenizer:
    """What the probe needs from a tokenizer, for models with random weights."""

    bos_token_id, eos_token_id = 0, 1
    all_special_ids = (0, 1)

    def __len__(self) -> int:
        return VOCAB


def tiny(arch: str) -> LoadedModel:
    """A 2-layer random model of `arch`; Llama and Qwen2 with grouped-query attention."""
    register()
    common = {"vocab_size": VOCAB, "num_hidden_layers": 2, "num_attention_heads": 4}
    configs = {
        "llama": transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common
        ),
        "qwen2": transformers.Qwen2Config(
            hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common
        ),
        "gpt2": transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256
        ),
        "gpt_neox": transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=64, **common),
    }
    torch.manual_seed(0)
    config = configs[arch]
    config._attn_implementation = NAME
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=NAME)
    return wrap(model, TinyTokenizer(), arch)


ARCHS = ["llama", "qwen2", "gpt2", "gpt_neox"]
PROTOCOL = PrefixProtocol(n_tokens=10, n_repeats=4, n_sequences=3)


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
