"""Interventions on tiny random HF models: zero ablation changes exactly the head's contribution,
GQA siblings are untouched, knockout masks only the selected heads and pairs, batching is exact."""

from __future__ import annotations

import math

import pytest
import torch

from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.evaluate import Condition, score_prompts
from ihlab.probe.heads import attention_modules, output_projection, repeated_token_batch
from ihlab.probe.interventions import (
    ablation_state,
    knockout_mask,
    knockout_state,
    parse_heads,
    random_heads,
    top_heads,
)
from ihlab.probe.tasks import make_prompts
from tiny_hf import PROTOCOL, tiny


def run(loaded, tokens, state: ProbeState) -> ProbeState:
    state.capture_patterns = state.capture_z = True
    with probing(state):
        loaded.model(input_ids=tokens)
    return state


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_zero_ablation_removes_exactly_the_heads_slice_of_the_output_projection(arch: str) -> None:
    loaded = tiny(arch)
    tokens = repeated_token_batch(loaded, PROTOCOL)
    proj = output_projection(attention_modules(loaded.model)[1])
    seen: list[torch.Tensor] = []
    handle = proj.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    clean = run(loaded, tokens, ProbeState())
    ablated = run(loaded, tokens, ablation_state([(1, 2)], "zero"))
    handle.remove()
    z = clean.z[1].clone()  # (batch, query, head, d_head)
    z[:, :, 2] = 0
    manual = proj(z.flatten(2))  # the output projection with the head's slice zeroed
    torch.testing.assert_close(seen[1], manual)
    assert torch.equal(ablated.z[1][:, :, 2], torch.zeros_like(z[:, :, 2]))
    assert torch.equal(ablated.z[0], clean.z[0])  # earlier layer untouched
    others = [0, 1, 3]
    assert torch.equal(ablated.z[1][:, :, others], clean.z[1][:, :, others])


def test_gqa_ablation_leaves_the_kv_group_sibling_untouched() -> None:
    loaded = tiny("llama")  # 4 query heads, 2 KV heads: heads 0 and 1 share KV head 0
    assert (loaded.n_heads, loaded.n_kv_heads) == (4, 2)
    tokens = repeated_token_batch(loaded, PROTOCOL)
    clean = run(loaded, tokens, ProbeState())
    ablated = run(loaded, tokens, ablation_state([(0, 1)], "zero"))
    assert torch.equal(ablated.z[0][:, :, 0], clean.z[0][:, :, 0])  # the sibling
    assert torch.equal(ablated.patterns[0], clean.patterns[0])
    assert torch.equal(ablated.z[0][:, :, 1], torch.zeros_like(clean.z[0][:, :, 1]))


def test_knockout_masks_only_the_selected_heads_and_pairs() -> None:
    loaded = tiny("qwen2")
    tokens = repeated_token_batch(loaded, PROTOCOL)
    blocked = knockout_mask(tokens)  # (batch, query, key)
    clean = run(loaded, tokens, ProbeState())
    knocked = run(loaded, tokens, knockout_state([(0, 3)], blocked))
    assert torch.all(knocked.patterns[0][:, 3][blocked] == 0)
    assert clean.patterns[0][:, 3][blocked].min() > 0
    assert torch.equal(knocked.patterns[0][:, :3], clean.patterns[0][:, :3])  # other heads
    free_rows = ~blocked.any(dim=-1)  # (batch, query) rows with nothing knocked out
    assert torch.equal(knocked.patterns[0][:, 3][free_rows], clean.patterns[0][:, 3][free_rows])


def test_knockout_mask_blocks_what_followed_earlier_occurrences() -> None:
    keys = torch.tensor([[7, 1, 2, 9, 1, 2]])  # "1 2" repeats: query 4 (1) must not see key 2
    mask = knockout_mask(keys)[0]
    assert mask[4].nonzero().flatten().tolist() == [2]
    assert mask[5].nonzero().flatten().tolist() == [3]  # query "2" -> what followed the earlier 2
    assert not mask[:4].any()


def test_head_selection_top_percent_and_matched_random_control() -> None:
    scores = torch.arange(40, dtype=torch.float32).view(4, 10)  # (layer, head)
    top = top_heads(scores, 3)
    assert len(top) == math.ceil(40 * 3 / 100) == 2 and top == [(3, 9), (3, 8)]
    control = random_heads([(0, 1), (2, 3), (2, 4)], n_heads=10, seed=0)
    assert sorted(layer for layer, _ in control) == [0, 2, 2]
    assert not {(0, 1), (2, 3), (2, 4)} & set(control)
    assert control == random_heads([(0, 1), (2, 3), (2, 4)], n_heads=10, seed=0)
    assert control != random_heads([(0, 1), (2, 3), (2, 4)], n_heads=10, seed=1)
    assert parse_heads(["L1H2", "l3h0"], 4, 10) == [(1, 2), (3, 0)]
    with pytest.raises(ValueError, match="L9H0 does not exist"):
        parse_heads(["L9H0"], 4, 10)


class CharTokenizer:
    """Characters as tokens, for scoring tests on tiny models."""

    bos_token_id, pad_token_id = 1, 0
    all_special_ids = (0, 1)

    def __len__(self) -> int:
        return 292

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [2 + ord(c) % 290 for c in text]}


def test_batched_left_padded_scoring_equals_one_prompt_at_a_time() -> None:
    loaded = tiny("llama")
    loaded.tokenizer = CharTokenizer()
    prompts = make_prompts("wordseq1", 2, n_prompts=6, seed=0) + make_prompts("recursion", 0, 4, 0)
    for condition in (Condition("full"), Condition("ko", "knockout", [(1, 0), (0, 2)])):
        one = score_prompts(loaded, prompts, condition, batch_size=1)
        assert score_prompts(loaded, prompts, condition, batch_size=7) == one


def test_mean_ablation_holds_the_head_at_its_mean_over_reference_prompts() -> None:
    from ihlab.probe.evaluate import encode, head_means

    loaded = tiny("gpt_neox")
    loaded.tokenizer = CharTokenizer()
    reference = make_prompts("wordseq2", 2, n_prompts=3, seed=0)
    means = head_means(loaded, reference)
    zs = []
    for prompt in reference:  # the mean over every position of every reference prompt
        state = ProbeState(capture_z=True)
        with probing(state):
            loaded.model(input_ids=torch.tensor([encode(loaded.tokenizer, prompt)[0]]))
        zs.append(state.z[1][0])  # (query, head, d_head)
    torch.testing.assert_close(means[1], torch.cat(zs).mean(dim=0))
    tokens = repeated_token_batch(loaded, PROTOCOL)
    ablated = run(loaded, tokens, ablation_state([(1, 2)], "mean", means))
    assert torch.equal(ablated.z[1][:, :, 2], means[1][2].expand_as(ablated.z[1][:, :, 2]))
