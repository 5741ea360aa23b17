"""The worked example of docs/lens.md: an exported induction_2l checkpoint in TransformerLens.

    python docs/lens_example.py outputs/induction_2l/<run>/checkpoints/last.ckpt

Prints the lab's and TransformerLens's scores of every head, the patching table, and draws the
top induction head's attention pattern (docs/lens_induction_pattern.png).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from transformer_lens.head_detector import detect_head

from ihlab.export.lens import export_checkpoint


def repeat_loss(logits: torch.Tensor, tokens: torch.Tensor, start: int) -> float:
    """Mean next-token loss on the targets from `start` on."""
    loss = F.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction="none")
    return float(loss[start - 1 :].mean())


def main(checkpoint: str) -> None:
    torch.manual_seed(0)
    lens = export_checkpoint(checkpoint)
    # as the training data lays it out: BOS, random prefix, a segment, its repeat (63 tokens:
    # TransformerLens's detector needs fewer than n_ctx = 64)
    bos, n = lens.cfg.d_vocab - 1, 20
    prefix, segment, other = (torch.randint(bos, (k,)) for k in (22, n, n))
    clean = torch.cat([torch.tensor([bos]), prefix, segment, segment])[None]  # (1, 63)
    corrupt = torch.cat([torch.tensor([bos]), prefix, other, segment])[None]  # nothing to copy
    text = " ".join(f"t{i}" for i in clean[0].tolist())
    with torch.no_grad():
        induction = detect_head(lens, text, "induction_head")
        previous = detect_head(lens, text, "previous_token_head")
        clean_logits, cache = lens.run_with_cache(clean)
        corrupt_logits = lens(corrupt)
    print("TransformerLens detector (induction | previous token), per layer and head:")
    for layer in range(lens.cfg.n_layers):
        scores = [f"{x:.3f}" for x in induction[layer].tolist()]
        scores += ["|"] + [f"{x:.3f}" for x in previous[layer].tolist()]
        print(f"  layer {layer}: {' '.join(scores)}")
    layer, head = divmod(int(induction.argmax()), lens.cfg.n_heads)
    start = 1 + 22 + n + 1  # the repeat's second token: the first one copying can predict
    clean_loss = repeat_loss(clean_logits, clean, start)
    corrupt_loss = repeat_loss(corrupt_logits, corrupt, start)
    print(f"loss on the repeat: clean {clean_loss:.3f}, corrupted {corrupt_loss:.3f} nats")
    print("patching one layer-1 head's hook_z from the clean run into the corrupted one:")
    for h in range(lens.cfg.n_heads):

        def patch(z: torch.Tensor, hook: object, h: int = h) -> torch.Tensor:
            z[:, :, h] = cache["blocks.1.attn.hook_z"][:, :, h]  # (batch, pos, head, d_head)
            return z

        with torch.no_grad():
            logits = lens.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.attn.hook_z", patch)])
        loss = repeat_loss(logits, corrupt, start)
        share = (corrupt_loss - loss) / (corrupt_loss - clean_loss)
        print(f"  L1H{h}: {loss:.3f} nats ({100 * share:.0f}% of the gap recovered)")
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head]  # (query, key)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
    ax.set(
        title=f"L{layer}H{head} (TransformerLens hook_pattern)",
        xlabel="key position",
        ylabel="query position",
    )
    fig.tight_layout()
    out = Path(__file__).with_name("lens_induction_pattern.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
