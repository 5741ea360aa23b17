"""The probe's attention function and head scores on tiny random Hugging Face models of every
supported architecture (no download: configs built here)."""

from __future__ import annotations

import pytest
import torch

from ihlab.clamps.values.patterns import induction_pattern
from ihlab.errors import ConfigError
from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.heads import (
    PrefixProtocol,
    direct_copying_scores,
    pretrained_head_scores,
    repeated_token_batch,
)
from ihlab.sites import SiteHooks
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
    held = {"blocks.1.attn.pattern": lambda p: torch.cat([p[:, :2], ideal[:, None], p[:, 3:]], 1)}
    scores = pretrained_head_scores(loaded, PROTOCOL, held)
    prefix = scores["prefix_matching"]  # (layer, head)
    assert prefix.shape == (2, 4)
    assert prefix[1, 2] == pytest.approx(1.0, abs=1e-5)
    others = torch.cat([prefix[0], prefix[1, :2], prefix[1, 3:]])
    assert others.max() < 0.3  # random heads spread attention over ~40 keys
    assert scores["previous_token"].shape == scores["direct_copying"].shape == (2, 4)
    assert ((scores["direct_copying"] >= -1) & (scores["direct_copying"] <= 1)).all()


def copy_setup(sign: float) -> tuple[torch.Tensor, ...]:
    """A tiny Llama whose heads' outputs reach the logits of 8 context tokens one-to-one, and each
    head's z at the second repeat: +-(one-hot of the token it attends to).

    o_proj is the identity, so head h writes residual dimensions 8h..8h+7; the unembedding of the
    i-th context token is 1 on dimension i of every head's block, so z = e_i raises that token's
    logit only (the final RMSNorm scales it by a positive number)."""
    loaded = tiny("llama")
    model = loaded.model
    tokens = torch.tensor([[0, *range(10, 18), *range(10, 18)]])  # BOS, 8 tokens, repeated
    n, first = tokens.shape[1], 9
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.copy_(torch.eye(32))
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[10:18] = torch.eye(8).repeat(1, 4)
    z, patterns = {}, {}
    for layer in range(2):
        pattern = torch.zeros(1, 4, n, n)
        z[layer] = torch.zeros(1, n, 4, 8)
        for q in range(first, n):
            for h in range(4):
                key = 1 + (q - first + h) % 8  # each head attends to some token of the first repeat
                pattern[0, h, q, key] = 1.0
                z[layer][0, q, h, key - 1] = sign
        patterns[layer] = pattern
    return direct_copying_scores(loaded, z, tokens, patterns, first)


def test_copying_reads_1_for_a_copier_and_0_at_chance() -> None:
    torch.testing.assert_close(copy_setup(1.0), torch.ones(2, 4))
    # Lowering the attended token gives the raise to the 7 others: share 0, (0 - 1/8) / (7/8).
    torch.testing.assert_close(copy_setup(-1.0), torch.full((2, 4), -1 / 7))
    # Random heads: the attended token is one of 10 exchangeable tokens, share 1/10 on average.
    scores = torch.cat(
        [pretrained_head_scores(tiny(arch), PROTOCOL)["direct_copying"] for arch in ARCHS]
    )
    assert abs(scores.mean().item()) < 0.05


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
    hooks = SiteHooks(["blocks.0.attn.pattern", "blocks.1.attn.pattern"])
    with probing(ProbeState(hooks)):
        loaded.model(input_ids=tokens)
    assert set(hooks.cache) == {"blocks.0.attn.pattern", "blocks.1.attn.pattern"}
    pattern = hooks.cache["blocks.0.attn.pattern"]
    assert pattern.shape == (3, 4, tokens.shape[1], tokens.shape[1])  # 4 query heads, 2 KV heads
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
    assert torch.all(pattern.triu(1) == 0)  # causal


def test_gguf_cache_is_named_by_the_file_and_written_whole(tmp_path, monkeypatch) -> None:
    """A changed GGUF file gets a new cache folder; a cache is complete or absent: the tensors,
    config and tokenizer reload to the same model, and a failed write leaves nothing behind."""
    from transformers import AutoModelForCausalLM

    from ihlab.probe.models import gguf_cache, save_cache

    monkeypatch.setenv("IHLAB_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"0" * 10)
    first = gguf_cache(gguf)
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("m-10-")
    gguf.write_bytes(b"0" * 11)
    assert gguf_cache(gguf) != first

    loaded = tiny("gpt2")

    class Tokenizer:
        def save_pretrained(self, folder) -> None:
            (folder / "tokenizer.json").write_text("{}")

    save_cache(loaded.model, Tokenizer(), first)
    assert {p.name for p in first.iterdir()} >= {"model.safetensors", "config.json", "complete"}
    again = AutoModelForCausalLM.from_pretrained(first, config=loaded.model.config)
    ours, theirs = loaded.model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    class Broken(Tokenizer):
        def save_pretrained(self, folder) -> None:
            raise OSError("disk full")

    save_cache(loaded.model, Broken(), tmp_path / "cache" / "gguf" / "other")
    assert sorted(p.name for p in (tmp_path / "cache" / "gguf").iterdir()) == [first.name]


def test_a_complete_gguf_cache_also_serves_the_config(tmp_path, monkeypatch) -> None:
    """model_config reads a cached GGUF's config from its cache folder (the file itself is not
    parsed: here it is not even a GGUF), and fails naming the source while there is no cache."""
    import transformers

    from ihlab.probe.models import gguf_cache, model_config

    monkeypatch.setenv("IHLAB_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not a gguf")
    with pytest.raises(ConfigError, match=f"model.source={gguf}: cannot read its config"):
        model_config(str(gguf))
    folder = gguf_cache(gguf)
    config = transformers.LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6)
    config.save_pretrained(folder)
    with pytest.raises(ConfigError):  # an incomplete cache is not read
        model_config(str(gguf))
    (folder / "complete").touch()
    config = model_config(str(gguf))
    assert (config.num_hidden_layers, config.num_attention_heads) == (3, 6)
