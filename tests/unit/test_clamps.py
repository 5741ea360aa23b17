"""Clamps: every value kind holds its site at the target in every step of a short training run,
leaves the rest alone, follows its windows and passes gradient only where its value was computed
from parameters; bad clamps fail before training, naming the clamp."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ihlab.clamps.checks import check_clamps
from ihlab.clamps.context import ClampContext
from ihlab.clamps.engine import ClampSet, build_clamp_set
from ihlab.clamps.spec import ClampConfig, HeadSelect, Window
from ihlab.clamps.values import VALUES
from ihlab.clamps.values.mean import ReferenceInputs
from ihlab.clamps.values.prev_token_input import previous_token_input
from ihlab.data.fewshot import FewShotConfig
from ihlab.data.repeated import RepeatedTokensConfig
from ihlab.errors import ConfigError
from ihlab.model import ModelConfig, ModelIO, Positional, Transformer, shape_state
from ihlab.sites import SiteHooks

N_LABELS, D_FEATURES, N_HEADS = 7, 6, 4  # labels != positions (5), so no axis mix-up passes
FEWSHOT_IO = ModelIO(n_ctx=5, d_features=D_FEATURES, n_labels=N_LABELS, d_vocab_out=N_LABELS)
TOKENS_IO = ModelIO(n_ctx=24, d_vocab=9, d_vocab_out=9)
MODEL = ModelConfig(
    n_layers=2, n_heads=N_HEADS, d_model=16, positional=Positional.rope, init_std=0.3
)


def fewshot_batch(step: int, batch: int = 8) -> dict[str, Tensor]:
    """x1 l1 x2 l2 xq with two distinct labels; the target is one of them."""
    g = torch.Generator().manual_seed(step)
    pair = torch.stack([torch.randperm(N_LABELS, generator=g)[:2] for _ in range(batch)])  # (b, 2)
    labels = torch.full((batch, 5), -1)
    labels[:, 1::2] = pair
    features = torch.randn(batch, 5, D_FEATURES, generator=g) * (labels < 0)[..., None]
    target = pair.gather(1, torch.randint(2, (batch, 1), generator=g))[:, 0]
    return {"features": features, "labels": labels, "target": target}


def token_batch(step: int, batch: int = 6) -> dict[str, Tensor]:
    """Random tokens with a repeated half, so induction targets exist."""
    g = torch.Generator().manual_seed(100 + step)
    half = torch.randint(9, (batch, 12), generator=g)
    return {"tokens": torch.cat([half, half], dim=1)}


def fewshot_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(MODEL, FEWSHOT_IO)


def inputs_of(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in batch.items() if k != "target"}


def loss_of(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    if "target" in batch:
        return F.cross_entropy(logits[:, -1], batch["target"])
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["tokens"][:, 1:].flatten())


Check = Callable[[Transformer, dict[str, Tensor], dict[str, Tensor]], None]


def context(batch: dict[str, Tensor], step: int, reference: dict | None = None) -> ClampContext:
    """A forward's clamp context; `reference`: the mean clamps' reference batch."""
    mean_over = ReferenceInputs(inputs_of(reference)) if reference is not None else None
    return ClampContext(inputs_of(batch), batch.get("target"), step, mean_over)


def train_and_check(
    clamps: ClampSet,
    sites: list[str],
    check: Check,
    steps: int = 4,
    tokens: bool = False,
    reference: dict[str, Tensor] | None = None,
) -> Transformer:
    """A short Adam run through the clamped forward; `check(model, batch, cache)` runs at every
    step on the cache of the very forward that is then trained on (parameters before the update)."""
    torch.manual_seed(0)
    model = Transformer(MODEL, TOKENS_IO if tokens else FEWSHOT_IO)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = token_batch(step) if tokens else fewshot_batch(step)
        hooks = clamps.hooks(context(batch, step, reference), sites, model)
        logits = model(inputs_of(batch), hooks)
        with torch.no_grad():
            check(model, batch, hooks.cache)
        optimizer.zero_grad()
        loss_of(logits, batch).backward()
        optimizer.step()
    return model


def clamp_set(**clamps: ClampConfig) -> ClampSet:
    return build_clamp_set(clamps, MODEL, FEWSHOT_IO)


def clean(model: Transformer, batch: dict[str, Tensor], sites: list[str]) -> dict[str, Tensor]:
    return model.run_with_cache(inputs_of(batch), sites)[1]


# Every value kind holds its target.


def test_zero_holds_the_selected_heads_at_zero_and_leaves_the_others() -> None:
    site = "blocks.0.attn.z"

    def check(model, batch, cache):
        z, free = cache[site], clean(model, batch, [site])[site]
        assert torch.equal(z[:, :, [1, 3]], torch.zeros_like(z[:, :, [1, 3]]))
        assert torch.equal(z[:, :, [0, 2]], free[:, :, [0, 2]])

    train_and_check(clamp_set(z=ClampConfig(site=site, heads=[1, 3])), [site], check)


def test_constant_holds_the_selected_positions() -> None:
    site = "blocks.1.resid_pre"

    def check(model, batch, cache):
        x, free = cache[site], clean(model, batch, [site])[site]
        assert torch.equal(x[:, [0, 4]], torch.full_like(x[:, [0, 4]], 0.5))
        assert torch.equal(x[:, 1:4], free[:, 1:4])

    cfg = ClampConfig(site=site, value="constant", constant=0.5, positions=[0, -1])
    train_and_check(clamp_set(c=cfg), [site], check)


def test_mean_is_the_reference_batch_mean_under_the_current_parameters() -> None:
    site = "blocks.0.attn.v"
    clamps = clamp_set(m=ClampConfig(site=site, value="mean", heads=[2]))
    reference = fewshot_batch(99, batch=16)

    def check(model, batch, cache):
        mean = clean(model, reference, [site])[site].mean(dim=0)  # (pos, head, d_head)
        v = cache[site]
        torch.testing.assert_close(v[:, :, 2], mean[:, 2].expand_as(v[:, :, 2]), rtol=0, atol=0)
        assert torch.equal(v[:, :, :2], clean(model, batch, [site])[site][:, :, :2])

    train_and_check(clamps, [site], check, reference=reference)


def test_previous_token_pattern() -> None:
    site = "blocks.0.attn.pattern"

    def check(model, batch, cache):
        p = cache[site]  # (batch, head, query, key)
        ideal = torch.zeros(5, 5)
        for q in range(5):
            ideal[q, max(q - 1, 0)] = 1.0
        assert torch.equal(p[:, 0], ideal.expand_as(p[:, 0]))
        assert torch.equal(p[:, 1:], clean(model, batch, [site])[site][:, 1:])

    cfg = ClampConfig(site=site, value="previous_token", heads=[0])
    train_and_check(clamp_set(prev=cfg), [site], check)


def test_match_sets_the_query_row_and_nothing_else() -> None:
    site = "blocks.1.attn.pattern"

    def check(model, batch, cache):
        p, free = cache[site], clean(model, batch, [site])[site]
        for b in range(p.shape[0]):
            correct = 1 if batch["labels"][b, 1] == batch["target"][b] else 3
            row = torch.zeros(5)
            row[correct], row[4 - correct] = 0.8, 0.2
            assert torch.equal(p[b, :, 4], row.expand(N_HEADS, 5))
        assert torch.equal(p[:, :, :4], free[:, :, :4])

    cfg = ClampConfig(site=site, value="match", strength=0.8)
    train_and_check(clamp_set(match=cfg), [site], check)


def test_induction_pattern_on_repeated_tokens() -> None:
    site = "blocks.1.attn.pattern"

    def check(model, batch, cache):
        tokens = batch["tokens"]
        for b in range(tokens.shape[0]):
            for q in range(tokens.shape[1]):
                hits = [k + 1 for k in range(q) if tokens[b, k] == tokens[b, q]]
                row = torch.zeros(tokens.shape[1])
                row[hits or [0]] = 1.0 / max(len(hits), 1)
                assert torch.equal(cache[site][b, 1, q], row)

    cfg = ClampConfig(site=site, value="induction", heads=[1])
    clamps = build_clamp_set({"ind": cfg}, MODEL, TOKENS_IO)
    train_and_check(clamps, [site], check, tokens=True)


def test_perfect_copy_gives_the_heads_scores_to_the_context_labels() -> None:
    scores = "blocks.1.attn.scores"

    def check(model, batch, cache):
        logits, s = cache["logits"], cache[scores]
        for b in range(logits.shape[0]):
            expected = torch.full((N_LABELS,), -1e9)
            for pos in (1, 3):
                expected[batch["labels"][b, pos]] = s[b, [0, 2], 4, pos].mean()
            torch.testing.assert_close(logits[b, 4], expected, rtol=0, atol=1e-6)
        free = clean(model, batch, ["logits", scores])["logits"]  # same attention path
        assert torch.equal(logits[:, :4], free[:, :4])

    cfg = ClampConfig(site="logits", value="copy", source=scores, heads=[0, 2])
    train_and_check(clamp_set(copy=cfg), ["logits", scores], check)


def test_previous_token_input_reads_the_previous_position_but_at_the_ends() -> None:
    x = torch.arange(15.0).view(1, 5, 3)  # position i holds 3i, 3i + 1, 3i + 2
    expected = torch.tensor([[[0.0, 1, 2], [0, 1, 2], [3, 4, 5], [6, 7, 8], [12, 13, 14]]])
    assert torch.equal(previous_token_input(x), expected)


def test_prev_token_input_is_causal() -> None:
    """Changing the input at position j never changes any clamped site at positions before j:
    the pattern pass reads the previous position, not the next one (a leak from the future)."""
    sites = ["blocks.0.resid_post", "blocks.1.attn.pattern", "blocks.1.attn.z", "logits"]
    model = fewshot_model()
    clamps = clamp_set(a=ClampConfig(site="blocks.0.resid_post", value="prev_token_input"))
    batch = inputs_of(fewshot_batch(0))

    def forward(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        hooks = clamps.hooks(ClampContext(inputs, None, 0), sites, model)
        with torch.no_grad():
            model(inputs, hooks)
        return hooks.cache

    before = forward(batch)
    for j in (1, 2, 4):
        changed = {k: v.clone() for k, v in batch.items()}
        if j % 2:
            changed["labels"][:, j] = (changed["labels"][:, j] + 1) % N_LABELS  # a label
        else:
            changed["features"][:, j] += 1.0  # an exemplar
        after = forward(changed)
        for name in sites:
            axis = 2 if name.endswith("pattern") else 1  # the query / position axis
            earlier = (slice(None),) * axis + (slice(0, j),)
            torch.testing.assert_close(
                after[name][earlier], before[name][earlier], rtol=0, atol=1e-6
            )
            assert not torch.allclose(after[name], before[name]), (name, j)  # position j did move


def test_graft_takes_the_site_from_another_runs_checkpoint(tmp_path: Path) -> None:
    source = fewshot_model(seed=7)
    path = tmp_path / "source.ckpt"
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "ihlab_model": shape_state(MODEL, FEWSHOT_IO)}, path)
    site = "blocks.0.resid_post"

    def check(model, batch, cache):
        assert torch.equal(cache[site], clean(source, batch, [site])[site])

    cfg = ClampConfig(site=site, value="graft", checkpoint=str(path))
    train_and_check(clamp_set(graft=cfg), [site], check)


@pytest.mark.parametrize("kind", ["pattern_preserving", "value_preserving"])
def test_preserving_ablations_zero_the_head_and_freeze_the_later_layers(kind: str) -> None:
    site = "blocks.0.attn.z"
    frozen = "blocks.1.attn.pattern" if kind == "pattern_preserving" else "blocks.1.attn.v"

    def check(model, batch, cache):
        assert torch.equal(cache[site][:, :, 1], torch.zeros_like(cache[site][:, :, 1]))
        assert torch.equal(cache[frozen], clean(model, batch, [frozen])[frozen])
        ablated = {site: lambda z: torch.cat([z[:, :, :1], 0 * z[:, :, 1:2], z[:, :, 2:]], 2)}
        hooks = SiteHooks(cache=[frozen], interventions=ablated)
        model(inputs_of(batch), hooks)  # a plain ablation changes the frozen site
        assert not torch.equal(cache[frozen], hooks.cache[frozen])

    cfg = ClampConfig(site=site, value=kind, heads=[1])
    train_and_check(clamp_set(ablate=cfg), [site, frozen], check)


def test_ablate_others_keeps_only_the_named_heads() -> None:
    site = "blocks.1.attn.v"

    def check(model, batch, cache):
        v = cache[site]
        assert torch.equal(v[:, :, 1:], torch.zeros_like(v[:, :, 1:]))
        assert torch.equal(v[:, :, 0], clean(model, batch, [site])[site][:, :, 0])

    cfg = ClampConfig(site=site, value="ablate_others", heads=[0])
    train_and_check(clamp_set(single=cfg), [site], check)


def test_knockout_blocks_attention_to_what_followed_earlier_occurrences() -> None:
    site, scores = "blocks.1.attn.pattern", "blocks.1.attn.scores"

    def check(model, batch, cache):
        tokens, free = batch["tokens"], clean(model, batch, [scores])[scores]
        for b in range(tokens.shape[0]):
            for q in range(tokens.shape[1]):
                blocked = [k for k in range(1, q + 1) if tokens[b, k - 1] == tokens[b, q]]
                row = free[b, 2, q].clone()
                row[blocked] = -torch.inf
                assert torch.equal(cache[scores][b, 2, q], row)
                assert torch.all(cache[site][b, 2, q, blocked] == 0)
        assert torch.equal(cache[scores][:, [0, 1, 3]], free[:, [0, 1, 3]])

    cfg = ClampConfig(site=scores, value="knockout", heads=[2])
    clamps = build_clamp_set({"ko": cfg}, MODEL, TOKENS_IO)
    train_and_check(clamps, [site, scores], check, tokens=True)


# The registry: every value kind keeps the contract of `ihlab.values.base`.

REGISTRY_EXAMPLES = {  # value -> (clamp, token data?)
    "zero": (ClampConfig(site="blocks.0.attn.z", heads=[1]), False),
    "constant": (ClampConfig(site="blocks.1.resid_pre", value="constant", constant=0.5), False),
    "mean": (ClampConfig(site="blocks.0.attn.v", value="mean", heads=[2]), False),
    "previous_token": (ClampConfig(site="blocks.0.attn.pattern", value="previous_token"), False),
    "match": (ClampConfig(site="blocks.1.attn.pattern", value="match", heads=[0]), False),
    "induction": (ClampConfig(site="blocks.1.attn.pattern", value="induction"), True),
    "copy": (ClampConfig(site="logits", value="copy", source="blocks.1.attn.scores"), False),
    "prev_token_input": (
        ClampConfig(site="blocks.0.resid_post", value="prev_token_input"),
        False,
    ),
    "graft": (ClampConfig(site="blocks.0.resid_post", value="graft"), False),
    "pattern_preserving": (ClampConfig(site="blocks.0.attn.z", value="pattern_preserving"), False),
    "value_preserving": (ClampConfig(site="blocks.0.attn.v", value="value_preserving"), False),
    "ablate_others": (ClampConfig(site="blocks.1.attn.z", value="ablate_others", heads=[0]), False),
    "knockout": (ClampConfig(site="blocks.1.attn.scores", value="knockout", heads=[3]), True),
}


def test_every_registered_value_has_an_example_here() -> None:
    assert set(REGISTRY_EXAMPLES) == set(VALUES)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_value_holds_its_entries_and_follows_its_gradient_rule(
    name: str, tmp_path: Path
) -> None:
    """At the clamped site, held entries get no gradient from what they replace (the computed
    input), and reach the parameters through the value exactly when the class says
    `differentiable`; the rest of the site is the computed input itself."""
    cfg, tokens = REGISTRY_EXAMPLES[name]
    io = TOKENS_IO if tokens else FEWSHOT_IO
    if name == "graft":
        cfg.checkpoint = str(tmp_path / "source.ckpt")
        state = {f"model.{k}": v for k, v in fewshot_model(seed=3).state_dict().items()}
        torch.save({"state_dict": state, "ihlab_model": shape_state(MODEL, io)}, cfg.checkpoint)
    check_clamps({"c": cfg}, MODEL, TOK if tokens else FEW)
    clamps = build_clamp_set({"c": cfg}, MODEL, io)
    batch = token_batch(0) if tokens else fewshot_batch(0)
    torch.manual_seed(0)
    model = Transformer(MODEL, io)
    hooks = clamps.hooks(context(batch, 0, fewshot_batch(99)), (), model)
    seen: dict[str, Tensor] = {}
    held_at = hooks.interventions[cfg.site]

    def record(x: Tensor) -> Tensor:
        seen["x"] = x.detach().requires_grad_()  # the computed input, cut from the graph
        seen["out"] = held_at(seen["x"])
        return seen["out"]

    hooks.interventions[cfg.site] = record
    model(inputs_of(batch), hooks)
    x, out = seen["x"], seen["out"]
    (from_x,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    held = from_x == 0
    assert held.any()
    assert torch.equal(out[~held], x[~held])
    parameters = list(model.parameters())
    through_value = torch.autograd.grad(
        torch.where(held, out, 0).sum(), parameters, allow_unused=True
    )
    reaches = any(g is not None and bool(g.any()) for g in through_value)
    assert reaches == VALUES[name].differentiable


# Upstream sites, windows, selection by score.


def test_sites_before_the_clamp_are_untouched() -> None:
    upstream = ["blocks.0.attn.pattern", "blocks.0.resid_post", "blocks.1.attn.q"]

    def check(model, batch, cache):
        free = clean(model, batch, upstream)
        for name in upstream:
            assert torch.equal(cache[name], free[name])

    cfg = ClampConfig(site="blocks.1.attn.pattern", value="match")
    train_and_check(clamp_set(match=cfg), upstream, check)


def test_windows_switch_the_clamp_on_and_off_at_the_stated_steps() -> None:
    site = "blocks.0.attn.z"
    windows = [Window(start=1, stop=3), Window(start=5)]
    clamps = clamp_set(z=ClampConfig(site=site, windows=windows))
    seen: list[bool] = []

    def check(model, batch, cache):
        on = torch.equal(cache[site], torch.zeros_like(cache[site]))
        assert on or torch.equal(cache[site], clean(model, batch, [site])[site])
        seen.append(on)

    train_and_check(clamps, [site], check, steps=7)
    assert seen == [False, True, True, False, False, True, True]
    assert clamps.clamps[0].active(10**6)


def test_heads_chosen_by_a_reference_runs_scores(tmp_path: Path) -> None:
    cols = [f"heads/previous_token/L0H{h}" for h in range(N_HEADS)]
    rows = ["0,0," + ",".join(["0.1"] * N_HEADS), "50,1600,0.2,0.9,0.1,0.7"]
    header = "step,sequences," + ",".join(cols)
    (tmp_path / "metrics.csv").write_text("\n".join([header, *rows]))
    select = HeadSelect(run=str(tmp_path), score="previous_token", top=2, step=50)
    clamps = clamp_set(p=ClampConfig(site=PAT0, value="previous_token", select=select))
    assert clamps.clamps[0].target.heads == [1, 3]
    select.step = 7
    with pytest.raises(ConfigError, match="at step 7"):
        clamp_set(p=ClampConfig(site="blocks.0.attn.pattern", select=select))


def write_scores(run: Path, rows: dict[int, dict[str, list[float]]]) -> None:
    """A reference run's metrics.csv: per step, per score name, one value per head of L0 then L1."""
    names = sorted({name for scores in rows.values() for name in scores})
    cols = [f"heads/{n}/L{layer}H{h}" for n in names for layer in (0, 1) for h in range(N_HEADS)]
    lines = ["step,sequences," + ",".join(cols)]
    for step, scores in rows.items():
        lines.append(f"{step},{step * 32}," + ",".join(str(v) for n in names for v in scores[n]))
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


# Per step: previous_token, prefix_matching for heads L0H0-3 then L1H0-3; each layer (and step)
# ranks its heads differently, so a selection read off the wrong layer or step is visible.
SCORES = {
    0: {
        "previous_token": [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.1, 0.2],
        "prefix_matching": [0.5, 0.1, 0.2, 0.3, 0.2, 0.3, 0.4, 0.1],
    },
    100: {
        "previous_token": [0.9, 0.1, 0.8, 0.2, 0.1, 0.3, 0.9, 0.5],
        "prefix_matching": [0.1, 0.7, 0.2, 0.6, 0.8, 0.1, 0.2, 0.9],
    },
}


def top_by_hand(step: int, score: str, layer: int, top: int) -> list[int]:
    values = SCORES[step][score][layer * N_HEADS : (layer + 1) * N_HEADS]
    best = sorted(range(N_HEADS), key=lambda h: values[h], reverse=True)[:top]
    return sorted(best)


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("score", ["previous_token", "prefix_matching"])
@pytest.mark.parametrize(("step", "top"), [(0, 1), (0, 2), (100, 2), (None, 3)])
def test_select_ranks_the_heads_of_the_clamped_layer(
    tmp_path: Path, layer: int, score: str, step: int | None, top: int
) -> None:
    write_scores(tmp_path, SCORES)
    select = HeadSelect(run=str(tmp_path), score=score, top=top, step=step)
    expected = top_by_hand(100 if step is None else step, score, layer, top)  # None: last step
    z = ClampConfig(site=f"blocks.{layer}.attn.z", select=select)
    assert clamp_set(z=z).clamps[0].target.heads == expected
    copy = ClampConfig(site="logits", value="copy", source=f"blocks.{layer}.attn.scores")
    copy.select = select  # copy: the heads of its source's layer
    assert clamp_set(copy=copy).clamps[0].target.heads == expected


def test_selected_heads_are_the_ones_clamped_in_the_forward(tmp_path: Path) -> None:
    write_scores(tmp_path, SCORES)
    select = HeadSelect(run=str(tmp_path), score="prefix_matching", top=2, step=100)
    site = "blocks.1.attn.z"  # layer 1: heads 0 and 3 (layer 0 would be 1 and 3)

    def check(model, batch, cache):
        z, free = cache[site], clean(model, batch, [site])[site]
        assert torch.equal(z[:, :, [0, 3]], torch.zeros_like(z[:, :, [0, 3]]))
        assert torch.equal(z[:, :, [1, 2]], free[:, :, [1, 2]])

    train_and_check(clamp_set(z=ClampConfig(site=site, select=select)), [site], check, steps=1)


# The gradient rule, on parameter gradients.


def grads(clamps: ClampSet, reference: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    model = fewshot_model()
    batch = fewshot_batch(0)
    hooks = clamps.hooks(context(batch, 0, reference), (), model)
    loss_of(model(inputs_of(batch), hooks), batch).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def qkv_rows(grad: Tensor, part: int, head: int | None = None) -> Tensor:
    """The rows of a fused qkv weight's gradient for q (0), k (1) or v (2), optionally one head."""
    rows = grad.view(3, N_HEADS, -1, grad.shape[-1])[part]  # (head, d_head, d_model)
    return rows if head is None else rows[head]


def test_hand_built_values_pass_no_gradient_to_what_they_replace() -> None:
    g = grads(clamp_set(p=ClampConfig(site="blocks.0.attn.pattern", value="previous_token")))
    qkv = g["blocks.0.attn.qkv.weight"]
    assert torch.all(qkv_rows(qkv, 0) == 0) and torch.all(qkv_rows(qkv, 1) == 0)
    assert torch.any(qkv_rows(qkv, 2) != 0)  # values still learn through the clamped pattern

    g = grads(clamp_set(z=ClampConfig(site="blocks.0.attn.z", heads=[2])))
    assert torch.all(qkv_rows(g["blocks.0.attn.qkv.weight"], 2, head=2) == 0)
    assert torch.any(qkv_rows(g["blocks.0.attn.qkv.weight"], 2, head=1) != 0)


def test_values_computed_from_parameters_pass_gradient_through_their_computation() -> None:
    copy = ClampConfig(site="logits", value="copy", source="blocks.1.attn.scores")
    g = grads(clamp_set(copy=copy))
    assert torch.all(g["unembed.weight"] == 0)  # the query's logits no longer come from it
    assert torch.any(qkv_rows(g["blocks.1.attn.qkv.weight"], 0) != 0)  # but from the scores

    g = grads(clamp_set(a=ClampConfig(site="blocks.0.resid_post", value="prev_token_input")))
    assert torch.all(g["blocks.0.attn.qkv.weight"] == 0)  # layer 0 is replaced entirely
    assert torch.any(g["embed_features.weight"] != 0)
    assert torch.any(qkv_rows(g["blocks.1.attn.qkv.weight"], 1) != 0)

    clamps = clamp_set(m=ClampConfig(site="blocks.0.attn.z", value="mean"))
    g = grads(clamps, reference=fewshot_batch(99))
    assert torch.any(qkv_rows(g["blocks.0.attn.qkv.weight"], 2) != 0)  # through the mean


def test_a_graft_passes_no_gradient(tmp_path: Path) -> None:
    path = tmp_path / "source.ckpt"
    state = {f"model.{k}": v for k, v in fewshot_model(seed=3).state_dict().items()}
    torch.save({"state_dict": state, "ihlab_model": shape_state(MODEL, FEWSHOT_IO)}, path)
    g = grads(
        clamp_set(g=ClampConfig(site="blocks.0.resid_post", value="graft", checkpoint=str(path)))
    )
    assert torch.all(g["embed_features.weight"] == 0)
    assert torch.any(g["blocks.1.attn.qkv.weight"] != 0)


# Bad clamps fail before training, naming the clamp and the problem.

FEW = FewShotConfig(n_train_classes=20, n_unseen_classes=5, n_classes=40)
TOK = RepeatedTokensConfig()
PAT0, PAT1, Z0 = "blocks.0.attn.pattern", "blocks.1.attn.pattern", "blocks.0.attn.z"
BAD = [
    ({"site": "blocks.5.attn.pattern"}, FEW, "'blocks.5.attn.pattern' does not exist"),
    ({"site": "blocks.0.mlp.out"}, FEW, "'blocks.0.mlp.out' does not exist"),
    ({"site": Z0, "heads": [4]}, FEW, "head 4 does not exist"),
    ({"site": "blocks.0.resid_post", "heads": [0]}, FEW, "no head axis"),
    ({"site": Z0, "value": "previous_token"}, FEW, "needs an attn.pattern site"),
    ({"site": PAT0, "value": "constant"}, FEW, "any site but attn.pattern"),
    ({"site": PAT1, "value": "match"}, TOK, "needs few-shot data"),
    ({"site": PAT1, "value": "induction"}, FEW, "needs token data"),
    ({"site": "logits", "value": "copy", "source": "blocks.1.attn.scores"}, TOK, "few-shot"),
    ({"site": "logits", "value": "copy", "source": "blocks.1.attn.z"}, FEW, "source="),
    ({"site": "blocks.1.resid_post", "value": "prev_token_input"}, FEW, "l < 1"),
    ({"site": "blocks.0.resid_post", "value": "prev_token_input"}, TOK, "needs few-shot data"),
    ({"site": "blocks.1.attn.v", "value": "ablate_others"}, FEW, "needs heads"),
    ({"site": Z0, "value": "graft", "checkpoint": "nowhere.ckpt"}, FEW, "does not exist"),
    ({"site": Z0, "positions": [9]}, FEW, "position 9"),
    ({"site": Z0, "windows": [Window(5, 5)]}, FEW, "window [5, 5)"),
    ({"site": "blocks.1.attn.scores", "value": "knockout"}, FEW, "needs token data"),
    ({"site": PAT1, "value": "knockout"}, TOK, "needs an attn.scores site"),
    ({"site": PAT1, "value": "previous", "heads": [0]}, FEW, "Did you mean previous_token?"),
    ({"site": Z0, "strength": 0.5}, FEW, "strength is only used by value match"),
    ({"site": PAT1, "value": "match", "strength": 1.01}, FEW, "strength=1.01 must be in [0, 1]"),
    ({"site": Z0, "value": "mean", "reference_size": 0}, FEW, "reference_size must be >= 1"),
    ({"site": Z0, "positions": [-6]}, FEW, "position -6"),
    ({"site": Z0, "positions": [5]}, FEW, "position 5"),
    ({"site": Z0, "windows": [Window(-1, 5)]}, FEW, "window [-1, 5)"),
]


GOOD = [  # the edges of every range
    ({"site": Z0, "positions": [-5, 4]}, FEW),  # the first and last of 5 positions
    ({"site": Z0, "windows": [Window(0, 1)]}, FEW),  # from step 0, one step long
    ({"site": PAT1, "value": "match", "strength": 0.0}, FEW),
    ({"site": PAT1, "value": "match", "strength": 1.0}, FEW),
    ({"site": Z0, "value": "mean", "reference_size": 1}, FEW),
    ({"site": Z0, "heads": [0, 3]}, FEW),
]


@pytest.mark.parametrize(("clamp", "data"), GOOD)
def test_clamps_at_the_edges_of_their_ranges_are_accepted(clamp, data) -> None:
    check_clamps({"good": ClampConfig(**clamp)}, MODEL, data)


def test_head_selection_is_checked(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("step\n0\n")
    ok = HeadSelect(run=str(tmp_path), top=N_HEADS)
    check_clamps({"s": ClampConfig(site=PAT0, select=ok)}, MODEL, FEW)
    check_clamps({"s": ClampConfig(site=PAT0, select=HeadSelect(str(tmp_path), top=1))}, MODEL, FEW)
    bad = [
        ({"select": HeadSelect(str(tmp_path), top=0)}, "select.top=0 must be in 1..4"),
        ({"select": HeadSelect(str(tmp_path), top=5)}, "select.top=5 must be in 1..4"),
        ({"select": HeadSelect(str(tmp_path), score="copying")}, "select.score='copying'"),
        ({"select": HeadSelect(str(tmp_path / "nowhere"))}, "has no metrics.csv"),
        ({"select": ok, "heads": [0]}, "set heads or select, not both"),
    ]
    for fields, message in bad:
        with pytest.raises(ConfigError, match="clamps.s: .*" + re.escape(message)):
            check_clamps({"s": ClampConfig(site=PAT0, **fields)}, MODEL, FEW)


def test_match_row_shares_each_side_evenly_over_its_positions() -> None:
    """Hand-worked: labels 3 3 5 5 at key positions 1, 3, 5, 7 (exemplars elsewhere), target 3,
    strength 0.8: 0.4 on each correct position, 0.1 on each wrong one, 0 on exemplars."""
    from ihlab.clamps.values.patterns import match_row

    labels = torch.tensor([[-1, 3, -1, 3, -1, 5, -1, 5, -1]])
    row = match_row(labels, torch.tensor([3]), 0.8, torch.zeros(()))
    expected = torch.tensor([[[0, 0.4, 0, 0.4, 0, 0.1, 0, 0.1, 0]]])
    torch.testing.assert_close(row, expected)


@pytest.mark.parametrize(("clamp", "data", "message"), BAD)
def test_bad_clamps_are_rejected_naming_the_clamp(clamp, data, message) -> None:
    with pytest.raises(ConfigError, match="clamps.bad: .*" + re.escape(message)):
        check_clamps({"bad": ClampConfig(**clamp)}, MODEL, data)
