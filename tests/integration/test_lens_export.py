"""`ihlab-export` on trained checkpoints: TransformerLens's own head detector agrees with the
lab's previous-token and prefix-matching scores on an induction_2l run, the command writes a
folder TransformerLens loads, and a smeared-key checkpoint is refused in one line with nothing
written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens.head_detector import detect_head

from conftest import train_in_process
from ihlab.apps.export import main as export_main
from ihlab.export.lens import export_checkpoint, load_lens
from ihlab.metrics.heads import induction_targets, prefix_matching_score, previous_token_score
from ihlab.runs.checkpoints import load_lab_model


@pytest.mark.slow
def test_transformer_lens_head_detector_agrees_with_the_labs_scores(induction_2l: Path) -> None:
    """TransformerLens's detector ("mul" measure) sums a head's attention on the detection
    pattern over every query and divides by the number of queries; the lab averages over the
    queries that have a target (every query but the first for previous-token; the queries
    whose token occurred before for prefix matching). Rescaled by those counts they agree to
    float precision."""
    checkpoint = induction_2l / "checkpoints" / "last.ckpt"
    lens = export_checkpoint(checkpoint)
    model = load_lab_model(checkpoint)
    g = torch.Generator().manual_seed(0)
    segment = torch.randperm(lens.cfg.d_vocab - 1, generator=g)[:20]
    bos = torch.tensor([lens.cfg.d_vocab - 1])  # the data's BOS: the last id
    tokens = torch.cat([bos, segment.repeat(3)])[None]  # (1, 61): BOS, a segment, two repeats
    text = " ".join(f"t{i}" for i in tokens[0].tolist())
    n = tokens.shape[1]
    names = [f"blocks.{layer}.attn.pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache({"tokens": tokens}, names)
        induction = detect_head(lens, text, "induction_head")  # (layer, head)
        previous = detect_head(lens, text, "previous_token_head")
    with_target = int(induction_targets(tokens).any(dim=-1).sum())
    assert with_target == 40
    lab_prefix = torch.stack([prefix_matching_score(cache[s], tokens) for s in names])
    lab_previous = torch.stack([previous_token_score(cache[s]) for s in names])
    torch.testing.assert_close(induction * n / with_target, lab_prefix, atol=1e-5, rtol=0)
    torch.testing.assert_close(previous * n / (n - 1), lab_previous, atol=1e-5, rtol=0)
    # the run has induction heads to agree on (three layer-1 heads share the work) and a
    # previous-token head
    assert float(lab_prefix[1].sum()) > 0.8, lab_prefix
    assert float(lab_previous[0].max()) > 0.5, lab_previous


@pytest.mark.slow
def test_the_command_writes_a_folder_transformer_lens_loads(
    induction_2l: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = induction_2l / "checkpoints" / "last.ckpt"
    assert export_main([str(checkpoint), str(tmp_path / "lens")]) == 0
    assert "wrote" in capsys.readouterr().out
    lens = load_lens(tmp_path / "lens")
    tokens = torch.randint(lens.cfg.d_vocab, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = load_lab_model(checkpoint)({"tokens": tokens})
        torch.testing.assert_close(lens(tokens), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_smeared_key_checkpoint_is_refused_in_one_line_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "smeared"
    train_in_process(run, "experiment=smeared_1l", "trainer.max_steps=2", "trainer.eval_every=2")
    out = tmp_path / "lens"
    assert export_main([str(run / "checkpoints" / "last.ckpt"), str(out)]) == 1
    # the command's own output is one line (other lines on stderr here are logging noise from
    # the training above, whose handlers outlive pytest's captured streams)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ihlab-export")]
    assert len(lines) == 1
    assert lines[0].startswith("ihlab-export: model.smeared_keys=true: TransformerLens has no")
    assert not out.exists()
