"""TransformerLens export (ihlab.export.lens): every token-model variant and every token
experiment's model gives the lab's logits within 1e-5 and its attention patterns; RoPE's halves
convention is the one that matches; folded weights keep the log-probabilities; a zero clamp in
the lab equals a TransformerLens hook zeroing hook_z; saved models load back; what does not map is
refused by name."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformer_lens")

from conftest import compose_config
from ihlab.clamps.context import ClampContext
from ihlab.clamps.engine import Clamp, ClampSet
from ihlab.clamps.spec import ClampConfig
from ihlab.data import make_family
from ihlab.export.lens import ExportError, id_tokenizer, load_lens, save_lens, to_lens
from ihlab.model import ModelConfig, ModelIO, Transformer
from ihlab.train.schema import to_train_config

IO = ModelIO(n_ctx=48, d_vocab_out=40, d_vocab=40)
VARIANTS = list(itertools.product(["learned", "rope", "none"], [True, False], [False, True]))


def lab_model(cfg: ModelConfig, io: ModelIO = IO, seed: int = 0) -> Transformer:
    """A lab model with every weight (biases and norms included) away from its init."""
    torch.manual_seed(seed)
    model = Transformer(cfg, io).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def patterns_and_logits(model: Transformer, tokens: torch.Tensor):
    names = [f"blocks.{layer}.attn.pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        return model.run_with_cache({"tokens": tokens}, names)


@pytest.mark.parametrize(("positional", "attn_only", "bias"), VARIANTS)
@pytest.mark.parametrize("norm", [True, False])
def test_every_variant_gives_the_labs_logits_and_patterns(
    positional: str, attn_only: bool, bias: bool, norm: bool
) -> None:
    cfg = ModelConfig(
        n_layers=2,
        n_heads=4,
        d_model=32,
        attn_only=attn_only,
        positional=positional,
        bias=bias,
        unembed_bias=bias,
        norm=norm,
    )
    model = lab_model(cfg)
    tokens = torch.randint(40, (3, 48), generator=torch.Generator().manual_seed(1))
    logits, cache = patterns_and_logits(model, tokens)
    with torch.no_grad():
        out, lens_cache = to_lens(model).run_with_cache(tokens)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=0)
    for layer in range(2):
        torch.testing.assert_close(
            lens_cache[f"blocks.{layer}.attn.hook_pattern"],
            cache[f"blocks.{layer}.attn.pattern"],
            atol=1e-6,
            rtol=0,
        )


TOKEN_EXPERIMENTS = [
    "induction_2l",
    "markov_2l",
    "plain_1l",
    "text_1l",
    "text_2l",
    "text_3l",
    "text_2l_gpu",
]


@pytest.mark.parametrize("experiment", TOKEN_EXPERIMENTS)
def test_each_token_experiments_model_exports_exactly(experiment: str) -> None:
    config = to_train_config(compose_config([f"experiment={experiment}", "wandb=off"]))
    if experiment.startswith("text"):  # its sizes without building the corpus
        vocab = config.data.vocab_size
        io = ModelIO(n_ctx=config.data.seq_len - 1, d_vocab_out=vocab, d_vocab=vocab)
    else:
        io = make_family(config.data, 0).io
    model = lab_model(config.model, io)
    tokens = torch.randint(io.d_vocab, (2, io.n_ctx), generator=torch.Generator().manual_seed(2))
    logits, _ = patterns_and_logits(model, tokens)
    with torch.no_grad():
        torch.testing.assert_close(to_lens(model)(tokens), logits, atol=1e-5, rtol=0)


def test_rope_rotates_halves_as_the_lab_does_not_adjacent_pairs() -> None:
    model = lab_model(ModelConfig(positional="rope", d_model=32))
    tokens = torch.randint(40, (2, 48), generator=torch.Generator().manual_seed(3))
    logits, _ = patterns_and_logits(model, tokens)
    lens = to_lens(model)
    lens.cfg.rotary_adjacent_pairs = True  # GPT-J's convention, read at every forward
    with torch.no_grad():
        assert (lens(tokens) - logits).abs().max() > 1e-2


def test_folded_weights_keep_the_log_probabilities() -> None:
    model = lab_model(ModelConfig(attn_only=False, bias=True, positional="rope", d_model=32))
    tokens = torch.randint(40, (2, 48), generator=torch.Generator().manual_seed(4))
    logits, _ = patterns_and_logits(model, tokens)
    folded = to_lens(model, fold=True)
    assert folded.cfg.normalization_type == "LNPre"
    with torch.no_grad():
        out = folded(tokens)
    torch.testing.assert_close(out.log_softmax(-1), logits.log_softmax(-1), atol=1e-5, rtol=0)
    assert (out - logits).abs().max() > 1e-3  # the centred unembedding shifts the logits


def test_a_hook_zeroing_hook_z_equals_the_labs_zero_clamp() -> None:
    model = lab_model(ModelConfig(n_layers=2, n_heads=4, d_model=32))
    tokens = torch.randint(40, (2, 48), generator=torch.Generator().manual_seed(5))
    clamp = Clamp("z", ClampConfig(site="blocks.1.attn.z", value="zero", heads=[2]), 4)
    hooks = ClampSet([clamp], 2).hooks(ClampContext({"tokens": tokens}, None, 0))
    with torch.no_grad():
        clamped = model({"tokens": tokens}, hooks)
        intact = model({"tokens": tokens})

        def zero_head(z: torch.Tensor, hook: object) -> torch.Tensor:
            z[:, :, 2] = 0.0  # (batch, pos, head, d_head)
            return z

        lens = to_lens(model)
        patched = lens.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    torch.testing.assert_close(patched, clamped, atol=1e-5, rtol=0)
    assert (clamped - intact).abs().max() > 1e-3


def test_a_saved_model_loads_back_with_the_same_logits(tmp_path: Path) -> None:
    model = lab_model(ModelConfig(attn_only=False, positional="rope", d_model=32))
    tokens = torch.randint(40, (2, 48), generator=torch.Generator().manual_seed(6))
    for fold in (False, True):
        lens = to_lens(model, fold=fold)
        loaded = load_lens(save_lens(lens, tmp_path / f"fold{fold}"))
        with torch.no_grad():
            assert torch.equal(loaded(tokens), lens(tokens))
        assert sorted(p.name for p in (tmp_path / f"fold{fold}").iterdir()) == [
            "config.json",
            "model.safetensors",
        ]


def test_the_id_tokenizer_writes_lab_ids_and_refuses_unknown_words() -> None:
    tok = id_tokenizer(40)
    assert tok("t3 t39 t0")["input_ids"] == [3, 39, 0]
    with pytest.raises(Exception, match="UNK"):
        tok("t3 t40")


def test_what_does_not_map_is_refused_by_name() -> None:
    with pytest.raises(ExportError, match=r"model\.smeared_keys=true: TransformerLens has no"):
        to_lens(Transformer(ModelConfig(smeared_keys=True, n_layers=1), IO))
    fewshot = Transformer(ModelConfig(), ModelIO(n_ctx=8, d_vocab_out=5, d_features=16, n_labels=5))
    with pytest.raises(ExportError, match="exemplar feature vectors"):
        to_lens(fewshot)
