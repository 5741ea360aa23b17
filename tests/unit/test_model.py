"""The transformer: shapes, causality, every cached site against an independent recomputation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ihlab.errors import ConfigError
from ihlab.model import ModelConfig, ModelIO, Positional, Transformer, smear_keys
from ihlab.sites import SiteHooks

TOKENS_IO = ModelIO(n_ctx=16, d_vocab=11, d_vocab_out=11)
FEATURES_IO = ModelIO(n_ctx=5, d_features=7, n_labels=3, d_vocab_out=3)


def make_model(io: ModelIO = TOKENS_IO, **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=8, init_std=0.3, **overrides)
    return Transformer(cfg, io)


def token_inputs(batch: int = 3, n: int = 16) -> dict[str, torch.Tensor]:
    return {"tokens": torch.randint(0, 11, (batch, n), generator=torch.Generator().manual_seed(1))}


def fewshot_inputs(batch: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    labels = torch.full((batch, 5), -1)
    labels[:, 1::2] = torch.randint(0, 3, (batch, 2), generator=g)
    features = torch.randn(batch, 5, 7, generator=g) * (labels < 0)[..., None]
    return {"features": features, "labels": labels}


VARIANTS = [
    {},
    {"positional": Positional.rope},
    {"positional": Positional.none, "smeared_keys": True},
    {"attn_only": False, "bias": True},
    {"norm": False, "d_head": 6},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_logit_shapes(overrides: dict) -> None:
    model = make_model(**overrides)
    assert model(token_inputs()).shape == (3, 16, 11)


def test_fewshot_inputs_use_feature_and_label_embeddings() -> None:
    model = make_model(FEATURES_IO, positional=Positional.rope)
    inputs = fewshot_inputs()
    assert model(inputs).shape == (4, 5, 3)
    embed = model.embed(inputs)  # (batch, pos, d_model)
    label_pos = inputs["labels"][0] >= 0
    expected_labels = model.embed_labels.weight[inputs["labels"][0, label_pos]]
    expected_features = model.embed_features(inputs["features"][0, ~label_pos])
    torch.testing.assert_close(embed[0, label_pos], expected_labels)
    torch.testing.assert_close(embed[0, ~label_pos], expected_features)


def test_singh_model_has_the_papers_parameter_count() -> None:
    cfg = ModelConfig(n_layers=2, n_heads=8, d_model=64, positional=Positional.rope)
    model = Transformer(cfg, ModelIO(n_ctx=5, d_features=512, n_labels=5, d_vocab_out=5))
    assert sum(p.numel() for p in model.parameters()) == 66_629


@pytest.mark.parametrize("overrides", VARIANTS)
@pytest.mark.parametrize("explicit", [False, True])
def test_causal_masking(overrides: dict, explicit: bool) -> None:
    """Changing a later token never changes earlier logits, on either attention path."""
    model = make_model(**overrides)
    inputs = token_inputs()
    changed = {"tokens": inputs["tokens"].clone()}
    changed["tokens"][:, 10:] = (changed["tokens"][:, 10:] + 1) % 11
    hooks = (
        (lambda: SiteHooks(cache=["blocks.0.attn.pattern", "blocks.1.attn.pattern"]))
        if explicit
        else SiteHooks
    )
    before, after = model(inputs, hooks()), model(changed, hooks())
    torch.testing.assert_close(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


@pytest.mark.parametrize("overrides", VARIANTS)
def test_fused_and_explicit_attention_agree(overrides: dict) -> None:
    model = make_model(**overrides)
    inputs = token_inputs()
    fast = model(inputs)
    slow, cache = model.run_with_cache(inputs)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert set(cache) == set(model.sites)


def rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as a complex rotation of (x_i, x_{i + d/2}) pairs by angle pos * base^(-2i/d)."""
    n, d = x.shape[1], x.shape[-1]
    pairs = torch.complex(x[..., : d // 2], x[..., d // 2 :])  # (batch, pos, head, d/2)
    freqs = base ** (-torch.arange(0, d, 2).float() / d)
    angles = torch.arange(n).float()[:, None] * freqs  # (pos, d/2)
    turned = pairs * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    return torch.cat([turned.real, turned.imag], dim=-1)


def recompute_sites(model: Transformer, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every site from the parameters with plain tensor algebra, position by position."""
    cfg, sites = model.cfg, {}
    batch, n = tokens.shape
    x = model.embed_tokens.weight[tokens]
    sites["embed"] = x
    if cfg.positional == Positional.learned:
        sites["pos_embed"] = model.pos_embed.weight[:n].expand(batch, n, -1)
        x = x + sites["pos_embed"]
    h, d = cfg.n_heads, cfg.head_dim
    for layer, block in enumerate(model.blocks):
        p = f"blocks.{layer}"
        sites[f"{p}.resid_pre"] = x
        normed = (
            F.layer_norm(x, (cfg.d_model,), block.ln_attn.weight, block.ln_attn.bias)
            if cfg.norm
            else x
        )
        w = block.attn.qkv.weight  # (3 * h * d, d_model)
        bias = block.attn.qkv.bias if block.attn.qkv.bias is not None else torch.zeros(3 * h * d)
        qkv = normed @ w.T + bias
        q, k, v = (qkv[..., i * h * d : (i + 1) * h * d].reshape(batch, n, h, d) for i in range(3))
        if cfg.positional == Positional.rope:
            q, k = rotate(q, cfg.rope_base), rotate(k, cfg.rope_base)
        if cfg.smeared_keys:
            s = torch.sigmoid(block.attn.smear_alpha)[:, None]
            k = torch.stack(
                [k[:, 0]] + [s * k[:, j] + (1 - s) * k[:, j - 1] for j in range(1, n)], dim=1
            )
        sites[f"{p}.attn.q"], sites[f"{p}.attn.k"], sites[f"{p}.attn.v"] = q, k, v
        scores = torch.zeros(batch, h, n, n)
        for i in range(n):
            for j in range(n):
                dot = (q[:, i] * k[:, j]).sum(-1) / math.sqrt(d)
                scores[:, :, i, j] = dot if j <= i else float("-inf")
        pattern = scores.softmax(-1)
        z = torch.einsum("bhij,bjhd->bihd", pattern, v)
        sites[f"{p}.attn.scores"], sites[f"{p}.attn.pattern"], sites[f"{p}.attn.z"] = (
            scores,
            pattern,
            z,
        )
        out = z.reshape(batch, n, h * d) @ block.attn.out.weight.T
        if block.attn.out.bias is not None:
            out = out + block.attn.out.bias
        sites[f"{p}.attn.out"] = out
        x = x + out
        if block.mlp is not None:
            m = (
                F.layer_norm(x, (cfg.d_model,), block.ln_mlp.weight, block.ln_mlp.bias)
                if cfg.norm
                else x
            )
            hidden = F.gelu(m @ block.mlp.fc.weight.T + block.mlp.fc.bias)
            sites[f"{p}.mlp.out"] = hidden @ block.mlp.proj.weight.T + block.mlp.proj.bias
            x = x + sites[f"{p}.mlp.out"]
        sites[f"{p}.resid_post"] = x
    if cfg.norm:
        x = F.layer_norm(x, (cfg.d_model,), model.ln_final.weight, model.ln_final.bias)
    sites["logits"] = x @ model.unembed.weight.T + model.unembed.bias
    return sites


@pytest.mark.parametrize("overrides", VARIANTS)
def test_every_cached_site_equals_an_independent_recomputation(overrides: dict) -> None:
    model = make_model(**overrides)
    if model.cfg.smeared_keys:
        with torch.no_grad():
            for block in model.blocks:
                block.attn.smear_alpha.copy_(torch.tensor([0.7, -1.3]))
    inputs = token_inputs(n=9)
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
        expected = recompute_sites(model, inputs["tokens"])
    assert set(cache) == set(expected) == set(model.sites)
    for name, value in expected.items():
        torch.testing.assert_close(cache[name], value, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(logits, expected["logits"])


def test_smeared_keys_math() -> None:
    k = torch.randn(2, 5, 3, 4)  # (batch, pos, head, d_head)
    alpha = torch.tensor([0.0, 2.0, -50.0])
    out = smear_keys(k, alpha)
    torch.testing.assert_close(out[:, 0], k[:, 0])  # first position unchanged
    torch.testing.assert_close(out[:, 1:, 0], 0.5 * k[:, 1:, 0] + 0.5 * k[:, :-1, 0])
    s = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(out[:, 1:, 1], s * k[:, 1:, 1] + (1 - s) * k[:, :-1, 1])
    torch.testing.assert_close(out[:, 1:, 2], k[:, :-1, 2], atol=1e-6, rtol=0)  # sigmoid -> 0


def test_smear_alpha_is_learned_per_head() -> None:
    model = make_model(smeared_keys=True)
    model(token_inputs()).sum().backward()
    for block in model.blocks:
        assert block.attn.smear_alpha.shape == (2,)
        assert (
            block.attn.smear_alpha.grad is not None and block.attn.smear_alpha.grad.abs().sum() > 0
        )


def test_cache_holds_only_requested_sites_and_rejects_unknown_ones() -> None:
    model = make_model()
    _, cache = model.run_with_cache(token_inputs(), ["blocks.1.attn.z", "embed"])
    assert set(cache) == {"blocks.1.attn.z", "embed"}
    assert cache["blocks.1.attn.z"].shape == (3, 16, 2, 4)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.pattern"):
        model.run_with_cache(token_inputs(), ["blocks.1.attn.patern"])


def test_intervention_replaces_a_site_and_the_cache_shows_the_replacement() -> None:
    model = make_model()
    inputs = token_inputs()

    def uniform(pattern: torch.Tensor) -> torch.Tensor:
        causal = torch.ones_like(pattern).tril()
        return causal / causal.sum(-1, keepdim=True)

    hooks = SiteHooks(
        cache=["blocks.0.attn.pattern", "blocks.1.attn.pattern"],
        interventions={"blocks.0.attn.pattern": uniform},
    )
    model(inputs, hooks)
    torch.testing.assert_close(
        hooks.cache["blocks.0.attn.pattern"], uniform(hooks.cache["blocks.0.attn.pattern"])
    )
    _, clean = model.run_with_cache(inputs, ["blocks.1.attn.pattern"])
    assert not torch.allclose(hooks.cache["blocks.1.attn.pattern"], clean["blocks.1.attn.pattern"])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"d_model": 10, "n_heads": 4}, "model.d_model"),
        ({"n_layers": 0}, "model.n_layers"),
        ({"positional": Positional.rope, "d_head": 3}, "model.positional"),
    ],
)
def test_bad_model_config_names_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ModelConfig(**overrides)


def test_lecun_init_is_singhs_truncated_lecun_normal() -> None:
    """Singh et al.'s init: linear maps truncated at 2 sigma with std exactly 1/sqrt(fan_in),
    biases 0; embedding tables 0.02 x a standard normal truncated to [-2, 2] (not rescaled)."""
    from scipy.stats import truncnorm

    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, n_heads=8, d_model=64, positional=Positional.rope, init="lecun")
    io = ModelIO(n_ctx=5, d_features=512, n_labels=200, d_vocab_out=200)
    model = Transformer(cfg, io)
    trunc = float(truncnorm(-2, 2).std())  # 0.8796
    linear = {
        "blocks.0.attn.qkv.weight": 64**-0.5,
        "blocks.1.attn.out.weight": 64**-0.5,
        "embed_features.weight": 512**-0.5,
        "unembed.weight": 64**-0.5,
    }
    params = dict(model.named_parameters())
    for name, std in linear.items():
        w = params[name]
        assert w.std().item() == pytest.approx(std, rel=0.03), name
        assert w.abs().max().item() <= 2 * std / trunc + 1e-7, name
        assert w.abs().max().item() >= 1.9 * std / trunc, name  # truncated, not narrower
    labels = params["embed_labels.weight"]
    assert labels.std().item() == pytest.approx(0.02 * trunc, rel=0.03)
    assert 0.038 <= labels.abs().max().item() <= 0.04 + 1e-7
    for name in ("embed_features.bias", "unembed.bias"):
        assert torch.count_nonzero(params[name]) == 0
    assert "blocks.0.attn.qkv.bias" not in params and "blocks.0.attn.out.bias" not in params
