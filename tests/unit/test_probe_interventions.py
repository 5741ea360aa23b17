"""Interventions and scoring on tiny random HF models: zero ablation changes exactly the head's
contribution, GQA siblings are untouched, knockout masks only the selected heads and pairs and
differs from ablation where it must, batching and shared lower layers are exact."""

from __future__ import annotations

import math

import pytest
import torch

from ihlab.clamps.engine import ClampSet
from ihlab.clamps.values.knockout import knockout_mask
from ihlab.errors import ConfigError
from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.conditions import Condition, check_heads, head_clamps
from ihlab.probe.evaluate import (
    condition_hooks,
    encode,
    head_means,
    prompt_sequences,
    score_conditions,
)
from ihlab.probe.heads import attention_modules, output_projection, repeated_token_batch
from ihlab.probe.layers import capturing, decoder_layers, starting_at
from ihlab.probe.prompts import make_prompts
from ihlab.probe.selection import parse_head, random_heads, top_heads
from ihlab.sites import SiteHooks
from tiny_hf import ARCHS, PROTOCOL, CharTokenizer, tiny


class Run:
    """Every layer's pattern and z (after the interventions) of one forward."""

    def __init__(self, loaded, tokens, hooks: SiteHooks | None = None) -> None:
        layers = range(loaded.n_layers)
        sites = [f"blocks.{i}.attn.{kind}" for i in layers for kind in ("pattern", "z")]
        hooks = SiteHooks(sites, (hooks or SiteHooks()).interventions)
        with probing(ProbeState(hooks)):
            loaded.model(input_ids=tokens)
        self.patterns = {i: hooks.cache[f"blocks.{i}.attn.pattern"] for i in layers}
        self.z = {i: hooks.cache[f"blocks.{i}.attn.z"] for i in layers}


def run(loaded, tokens, hooks: SiteHooks | None = None) -> Run:
    return Run(loaded, tokens, hooks)


def ablation(loaded, heads, value: str = "zero", means=None) -> SiteHooks:
    """The probe's ablation of `heads`: the lab's clamp value at blocks.{l}.attn.z."""
    clamps = ClampSet(head_clamps(heads, "ablate", value, loaded.n_heads), loaded.n_layers)
    return condition_hooks(clamps, None, means)


def knockout(loaded, heads, keys) -> SiteHooks:
    clamps = ClampSet(head_clamps(heads, "knockout", "knockout", loaded.n_heads), loaded.n_layers)
    return condition_hooks(clamps, keys, None)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_zero_ablation_removes_exactly_the_heads_slice_of_the_output_projection(arch: str) -> None:
    loaded = tiny(arch)
    tokens = repeated_token_batch(loaded, PROTOCOL)
    proj = output_projection(attention_modules(loaded.model)[1])
    seen: list[torch.Tensor] = []
    handle = proj.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    clean = run(loaded, tokens)
    ablated = run(loaded, tokens, ablation(loaded, [(1, 2)]))
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
    clean = run(loaded, tokens)
    ablated = run(loaded, tokens, ablation(loaded, [(0, 1)]))
    assert torch.equal(ablated.z[0][:, :, 0], clean.z[0][:, :, 0])  # the sibling
    assert torch.equal(ablated.patterns[0], clean.patterns[0])
    assert torch.equal(ablated.z[0][:, :, 1], torch.zeros_like(clean.z[0][:, :, 1]))


def test_knockout_masks_only_the_selected_heads_and_pairs() -> None:
    loaded = tiny("qwen2")
    tokens = repeated_token_batch(loaded, PROTOCOL)
    blocked = knockout_mask(tokens)  # (batch, query, key)
    clean = run(loaded, tokens)
    knocked = run(loaded, tokens, knockout(loaded, [(0, 3)], tokens))
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


def test_words_of_one_category_share_a_knockout_key_and_categories_differ() -> None:
    """WordSeq's knockout treats a category's words as one token: the last token of "dog" and of
    "cat" (animal) get one key, of "red" (colour) another; every other token keeps its id."""
    from ihlab.probe.evaluate import encode
    from ihlab.probe.prompts import Piece, Prompt

    pieces = [Piece("ab"), Piece("dog", "animal"), Piece(":"), Piece("cat", "animal")]
    pieces += [Piece("red", "colour"), Piece("dog", "animal")]
    prompt = Prompt("wordseq1", 1, pieces, 0, ("Foo", "Bar"))
    ids, keys = encode(CharTokenizer(), prompt)
    char = [2 + ord(c) % 290 for c in "abdog:catreddog"]  # CharTokenizer's ids, by hand
    assert ids == [0, *char]
    animal, colour = keys[5], keys[12]
    assert animal < 0 and colour < 0 and animal != colour  # never equal to a token id
    expected = [0, *char]
    expected[5] = expected[9] = expected[15] = animal
    expected[12] = colour
    assert keys == expected
    blocked = knockout_mask(torch.tensor([keys]))[0]  # (query, key)
    assert blocked[9].nonzero().flatten().tolist() == [6]  # cat: what followed dog
    assert blocked[15].nonzero().flatten().tolist() == [6, 10]  # dog: what followed dog and cat
    assert blocked[12].nonzero().flatten().tolist() == []  # the first colour
    assert not blocked[:6].any()  # nothing inside the first word: no self-knockout


def test_head_selection_top_percent_and_matched_random_control() -> None:
    scores = torch.arange(40, dtype=torch.float32).view(4, 10)  # (layer, head)
    top = top_heads(scores, 3)
    assert len(top) == math.ceil(40 * 3 / 100) == 2 and top == [(3, 9), (3, 8)]
    control = random_heads([(0, 1), (2, 3), (2, 4)], n_heads=10, seed=0)
    assert sorted(layer for layer, _ in control) == [0, 2, 2]
    assert not {(0, 1), (2, 3), (2, 4)} & set(control)
    assert control == random_heads([(0, 1), (2, 3), (2, 4)], n_heads=10, seed=0)
    assert control != random_heads([(0, 1), (2, 3), (2, 4)], n_heads=10, seed=1)
    assert [parse_head("L1H2"), parse_head("l3h0")] == [(1, 2), (3, 0)]
    with pytest.raises(ConfigError, match=r"select\.heads: head 'H2L1': write heads as L<layer>"):
        parse_head("H2L1")
    with pytest.raises(ConfigError, match=r"x: head L9H0 does not exist: the model has 4 layers"):
        check_heads([(1, 2), (9, 0)], 4, 10, "x")
    # 40 x 2.6% = 1.04 heads: rounded up to 2 (a selection never falls short of its percent)
    assert top_heads(scores, 2.6) == [(3, 9), (3, 8)]
    check_heads([(3, 9), (0, 0)], 4, 10, "x")  # the last layer and head exist
    for head in [(4, 0), (0, 10)]:  # one past either
        with pytest.raises(ConfigError, match="does not exist"):
            check_heads([head], 4, 10, "x")


def test_mean_ablation_without_head_means_fails_instead_of_running_unablated() -> None:
    clamps = ClampSet(head_clamps([(1, 2)], "ablate", "mean", n_heads=4), n_layers=2)
    with pytest.raises(ValueError, match=r"value mean at blocks\.1\.attn\.z needs a reference"):
        condition_hooks(clamps, None, None)
    means = {"blocks.0.attn.z": torch.zeros(1, 1, 4, 8)}  # no means for layer 1
    with pytest.raises(ValueError, match="no reference mean of it was computed"):
        condition_hooks(clamps, None, means)


def scored_prompts() -> list:
    """Wordseq1 (2-way) and wordseq1_4way prompts of different lengths."""
    return make_prompts("wordseq1", 1, n_prompts=4, seed=0) + make_prompts(
        "wordseq1_4way", 1, n_prompts=2, seed=0
    )


def test_batched_left_padded_scoring_equals_one_prompt_at_a_time() -> None:
    loaded = tiny("llama")
    loaded.tokenizer = CharTokenizer()
    prompts = scored_prompts()
    conditions = [Condition("full"), Condition("ko", "knockout", [(1, 0), (0, 2)])]
    one = score_conditions(loaded, prompts, conditions, batch_size=1)
    four = score_conditions(loaded, prompts, conditions, batch_size=4)
    for condition in conditions:
        torch.testing.assert_close(four[condition.name], one[condition.name])


class LabelTokenizer(CharTokenizer):
    """Characters, but labels as SmolLM2-like token pieces: Foo and Res share a first token, Bar
    is one token, Mur has a first token of its own."""

    LABELS = {"Foo": [5, 6], "Bar": [7], "Mur": [8, 9], "Res": [5, 9]}  # noqa: RUF012

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.LABELS.get(text) or super().__call__(text)["input_ids"]}


def test_options_are_read_from_one_sequence_per_prefix_no_other_extends() -> None:
    prompts = make_prompts("wordseq1_4way", 1, n_prompts=2, seed=0)  # Foo Bar Mur Res
    rows = prompt_sequences(LabelTokenizer(), prompts)
    # prompt + "5" gives Foo, Bar (read at the prompt's end) and Res; prompt + "8" gives Mur
    assert [(r.prompt, r.ids[-1], [o for o, _ in r.reads]) for r in rows] == [
        (0, 5, [0, 1, 3]),
        (0, 8, [2]),
        (1, 5, [0, 1, 3]),
        (1, 8, [2]),
    ]
    binary = prompt_sequences(LabelTokenizer(), make_prompts("wordseq1", 1, n_prompts=1, seed=0))
    assert [(r.branch, [o for o, _ in r.reads]) for r in binary] == [(1, [0, 1])]  # Foo, Bar


def test_option_log_likelihoods_sum_the_option_tokens_after_the_prompt() -> None:
    """Recomputed by hand: one unpadded forward per prompt and option, its full logits (the
    prompt tokenized piece by piece, so demo labels are label tokens)."""
    loaded = tiny("gpt2")
    loaded.tokenizer = tok = LabelTokenizer()
    prompts = scored_prompts()
    scores = score_conditions(loaded, prompts, [Condition("full")], batch_size=4)["full"]
    for p, prompt in enumerate(prompts):
        ids = [0] + [i for piece in prompt.pieces for i in tok(piece.text)["input_ids"]]
        for o, option in enumerate(prompt.options):
            tokens = tok(option)["input_ids"]
            logits = loaded.model(input_ids=torch.tensor([ids + tokens])).logits[0]
            logp = logits.log_softmax(-1)[len(ids) - 1 : -1]  # positions predicting the option
            expected = logp.gather(1, torch.tensor(tokens)[:, None]).sum()
            torch.testing.assert_close(scores[p, o], expected, rtol=1e-5, atol=1e-5)
        assert torch.isinf(scores[p, len(prompt.options) :]).all()  # 2-way rows: 2 options


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_lower_layers_give_the_logits_of_recomputing_every_layer(arch: str) -> None:
    """float32: running each condition from its first layer on the clean model's residual
    equals running it from scratch."""
    loaded = tiny(arch)
    loaded.tokenizer = CharTokenizer()
    prompts = scored_prompts()
    conditions = [
        Condition("full"),
        Condition("ablate L1", "ablate", [(1, 0), (1, 3)]),
        Condition("knockout L1", "knockout", [(1, 2)]),
        Condition("ablate L0", "ablate", [(0, 1)]),
    ]
    shared = score_conditions(loaded, prompts, conditions, batch_size=3, share_prefix=True)
    scratch = score_conditions(loaded, prompts, conditions, batch_size=3, share_prefix=False)
    for condition in conditions:
        torch.testing.assert_close(
            shared[condition.name], scratch[condition.name], rtol=0, atol=1e-5
        )
    assert not torch.equal(shared["ablate L1"], shared["full"])  # the conditions did something


def test_starting_at_a_layer_skips_the_layers_below_and_restores_them() -> None:
    loaded = tiny("qwen2")
    tokens = repeated_token_batch(loaded, PROTOCOL)
    layers = decoder_layers(loaded.model)
    with capturing(layers, [1]) as residual:
        clean = loaded.model(input_ids=tokens).logits
    calls: list[int] = []
    handle = layers[0].register_forward_hook(lambda *_: calls.append(0))
    with starting_at(layers, 1, residual[1]):
        resumed = loaded.model(input_ids=tokens).logits
    assert calls == [0]  # layer 0's hooks still ran (its forward was a pass-through)
    torch.testing.assert_close(resumed, clean, rtol=0, atol=0)
    wrong = torch.zeros_like(residual[1])
    with starting_at(layers, 1, wrong):
        assert not torch.equal(loaded.model(input_ids=tokens).logits, clean)
    assert "forward" not in vars(layers[0])  # restored
    handle.remove()


def test_knockout_and_zero_ablation_differ_where_they_must() -> None:
    """Before any token repeats, knockout blocks nothing, so it must leave every logit as the
    full model's while zero ablation changes them; once tokens repeat it must change them too,
    and differently from ablation (the head still attends elsewhere)."""
    loaded = tiny("llama")
    tokens = repeated_token_batch(loaded, PROTOCOL)  # BOS + 10 tokens, repeated 4 times
    head = [(1, 2)]
    clean = loaded.model(input_ids=tokens).logits
    with probing(ProbeState(knockout(loaded, head, tokens))):
        knocked = loaded.model(input_ids=tokens).logits
    with probing(ProbeState(ablation(loaded, head))):
        ablated = loaded.model(input_ids=tokens).logits
    first, later = slice(0, 11), slice(11, None)  # position 11 repeats position 1
    assert torch.equal(knocked[:, first], clean[:, first])
    assert (ablated[:, first] - clean[:, first]).abs().amax(dim=-1).min() > 1e-4
    assert (knocked[:, later] - clean[:, later]).abs().amax(dim=-1).min() > 1e-4
    assert (knocked[:, later] - ablated[:, later]).abs().amax(dim=-1).min() > 1e-4


def test_mean_ablation_holds_the_head_at_its_mean_over_reference_prompts() -> None:
    loaded = tiny("gpt_neox")
    loaded.tokenizer = CharTokenizer()
    reference = make_prompts("wordseq2", 2, n_prompts=3, seed=0)
    means = head_means(loaded, reference)
    zs = []
    for prompt in reference:  # the mean over every position of every reference prompt
        ids = torch.tensor([encode(loaded.tokenizer, prompt)[0]])
        zs.append(run(loaded, ids).z[1][0])  # (query, head, d_head)
    mean = means["blocks.1.attn.z"][0, 0]  # (head, d_head)
    torch.testing.assert_close(mean, torch.cat(zs).mean(dim=0))
    tokens = repeated_token_batch(loaded, PROTOCOL)
    ablated = run(loaded, tokens, ablation(loaded, [(1, 2)], "mean", means))
    assert torch.equal(ablated.z[1][:, :, 2], mean[2].expand_as(ablated.z[1][:, :, 2]))
