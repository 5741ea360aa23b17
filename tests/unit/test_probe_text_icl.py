"""The probe's ICL score on text, on a tiny random model: windows spread over the joined
documents, band losses equal to a hand computation from full forwards (clean and ablated), and
the cells' statistics recomputed with scipy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from ihlab.clamps.engine import ClampSet
from ihlab.data.text.corpus import Document
from ihlab.errors import ConfigError
from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.columns import Column
from ihlab.probe.conditions import Condition, head_clamps
from ihlab.probe.config import ProbeConfig, TextICLConfig
from ihlab.probe.evaluate import condition_hooks
from ihlab.probe.text_icl import band_losses, text_documents, text_icl_cells, text_windows
from tiny_hf import CharTokenizer, tiny

CFG = TextICLConfig(windows=5, context=40, early=6, late=30, band=3, batch_size=3)
TEXT = "in the beginning was the word and the word was with god " * 6


def test_windows_are_spread_evenly_over_the_documents_joined_by_end_of_text() -> None:
    tok = CharTokenizer()
    docs = [Document("a", TEXT, True), Document("b", TEXT[::-1], True)]
    stream = tok(docs[0].text)["input_ids"] + [1] + tok(docs[1].text)["input_ids"] + [1]
    windows = text_windows(tok, docs, CFG)
    assert windows.shape == (5, 40)
    assert windows[0].tolist() == stream[:40]
    assert windows[-1].tolist() == stream[-40:]
    step = (len(stream) - 40) / 4
    assert windows[2].tolist() == stream[int(2 * step) : int(2 * step) + 40]
    with pytest.raises(ConfigError, match="fewer than one window"):
        text_windows(tok, [Document("a", "short", True)], CFG)


@torch.no_grad()
def hand_losses(loaded, windows: torch.Tensor, heads: list) -> torch.Tensor:
    """(window, 2): one full forward per window on BOS + window, every logit kept."""
    clamps = ClampSet(head_clamps(heads, "ablate", "zero", loaded.n_heads), loaded.n_layers)
    out = []
    for window in windows:
        ids = torch.cat([torch.tensor([0]), window])[None]  # BOS first
        with probing(ProbeState(condition_hooks(clamps, None, None))):
            logp = loaded.model(input_ids=ids).logits[0].log_softmax(-1)  # (1 + context, vocab)
        # logits at position t (after BOS and t tokens) predict window[t]
        loss = [-float(logp[t, window[t]]) for t in range(len(window))]
        early = sum(loss[3:10]) / 7  # 6 +- 3
        late = sum(loss[27:34]) / 7  # 30 +- 3
        out.append([early, late])
    return torch.tensor(out, dtype=torch.float64)


def test_band_losses_equal_full_forwards_clean_and_ablated() -> None:
    loaded = tiny("llama")
    loaded.tokenizer = CharTokenizer()
    windows = text_windows(loaded.tokenizer, [Document("a", TEXT, True)], CFG)
    conditions = [Condition("full"), Condition("L1", "ablate", [(1, 0), (1, 2)])]
    losses = band_losses(loaded, windows, conditions, CFG)
    torch.testing.assert_close(losses["full"], hand_losses(loaded, windows, []), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        losses["L1"], hand_losses(loaded, windows, [(1, 0), (1, 2)]), atol=1e-5, rtol=0
    )
    assert not torch.equal(losses["L1"], losses["full"])


def test_cells_average_random_draws_per_window_and_test_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    full = torch.rand(12, 2, generator=g, dtype=torch.float64) + torch.tensor([3.0, 2.5])
    losses = {
        "full": full,
        "IH": full + torch.tensor([0.0, 0.4]) + 0.05 * torch.rand(12, 2, generator=g),
        "r0": full + 0.1 * torch.rand(12, 2, generator=g),
        "r1": full + 0.1 * torch.rand(12, 2, generator=g),
    }
    columns = [
        Column("full", [Condition("full")]),
        Column("IH", [Condition("IH")], control="random"),
        Column("random", [Condition("r0"), Condition("r1")]),
    ]
    cells = {c.column: c for c in text_icl_cells(columns, losses)}
    score = {k: v[:, 1] - v[:, 0] for k, v in losses.items()}
    random = (score["r0"] + score["r1"]) / 2  # the control's per-window score
    assert cells["full"].icl == pytest.approx(float(score["full"].mean()))
    half = stats.t.ppf(0.975, 11) * float(score["full"].std()) / math.sqrt(12)
    assert cells["full"].icl_ci == pytest.approx(half)
    assert cells["random"].icl == pytest.approx(float(random.mean()))
    change = score["IH"] - score["full"]
    assert cells["IH"].change == pytest.approx(float(change.mean()))
    assert cells["IH"].share_removed == pytest.approx(-float(change.mean() / score["full"].mean()))
    assert cells["IH"].p_vs_full == pytest.approx(stats.wilcoxon(score["IH"], score["full"]).pvalue)
    assert cells["IH"].p_vs_random == pytest.approx(stats.wilcoxon(score["IH"], random).pvalue)
    assert cells["IH"].loss_late == pytest.approx(float(losses["IH"][:, 1].mean()))
    assert cells["full"].change is None and cells["random"].p_vs_random is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ({"windows": 1}, "text.windows=1"),
        ({"band": 60}, "the bands must not overlap"),
        ({"early": 5}, "early one must start at index 0"),
        ({"late": 505}, "text.late=505 \\+ text.band=10 is beyond the context"),
        ({"context": 300}, "beyond the context"),
    ],
)
def test_bad_text_sizes_fail_with_the_config(text: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ProbeConfig(text=TextICLConfig(**text))


def test_the_users_text_files_are_read_with_the_text_keys(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "empty.txt").write_text("  \n")
    assert [d.text for d in text_documents(TextICLConfig(paths=[str(tmp_path / "a.txt")]))] == [
        "some text"
    ]
    with pytest.raises(ConfigError, match=r"text\.paths: .*empty\.txt is empty"):
        text_documents(TextICLConfig(paths=[str(tmp_path)]))
    with pytest.raises(ConfigError, match=r"text\.paths: '.*nothing' is no file"):
        text_documents(TextICLConfig(paths=[str(tmp_path / "nothing")]))


def test_a_model_without_bos_cannot_score_the_first_text_token() -> None:
    class NoBos(CharTokenizer):
        bos_token_id = None

    loaded = tiny("gpt2")
    loaded.tokenizer = NoBos()
    windows = text_windows(loaded.tokenizer, [Document("a", TEXT, True)], CFG)
    at_zero = TextICLConfig(windows=5, context=40, early=3, late=30, band=3)
    with pytest.raises(ConfigError, match="no BOS token"):
        band_losses(loaded, windows, [Condition("full")], at_zero)
    losses = band_losses(loaded, windows, [Condition("full")], CFG)  # early band 3-9: fine
    assert losses["full"].shape == (5, 2)
