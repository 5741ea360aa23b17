"""`ihlab-export`: an `ihlab-train` checkpoint as a TransformerLens model folder (ihlab.export).

    ihlab-export outputs/induction_2l/<run>/checkpoints/last.ckpt lens/induction_2l
    ihlab-export <run>/checkpoints/last.ckpt lens/folded --fold     # TransformerLens's processing
    ihlab-export <job>/checkpoints/last.ckpt lens/seed3 --member 3  # one seed of an ensemble job

The folder holds `config.json` and `model.safetensors`; `ihlab.export.lens.load_lens(folder)`
(or three lines of TransformerLens, docs/lens.md) gives the `HookedTransformer` back. A model
TransformerLens cannot express (smeared keys, exemplar features) is refused in one line before
anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ihlab.errors import ConfigError
from ihlab.runs.checkpoints import CheckpointError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ihlab-export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an ihlab-train checkpoint (.ckpt)")
    parser.add_argument("out", help="the folder to write (config.json, model.safetensors)")
    parser.add_argument("--fold", action="store_true", help="fold LayerNorms, centre weights")
    parser.add_argument("--member", type=int, default=0, help="the seed of an ensemble job")
    args = parser.parse_args(argv)
    from ihlab.export.lens import export_checkpoint, save_lens  # torch and TransformerLens

    try:
        lens = export_checkpoint(args.checkpoint, args.member, args.fold)
    except (ConfigError, CheckpointError) as err:
        print(f"ihlab-export: {err}", file=sys.stderr)
        return 1
    folder = save_lens(lens, args.out)
    print(
        f"wrote {folder}: {lens.cfg.n_layers} layers x {lens.cfg.n_heads} heads, d_model "
        f"{lens.cfg.d_model}, {lens.cfg.positional_embedding_type} positions"
        + (", folded" if args.fold else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
