"""Entry points that start helpers before the heavy imports.

`ihlab-train` starts its W&B writer (wandb_process.py) first, so that W&B is imported and started
on the second core while this process imports torch and Lightning on the first. A command line
that turns W&B off (`wandb=off` or `wandb.mode=disabled`) starts none; a config that turns it off
otherwise leaves an idle writer, which exits with the process.
"""

from __future__ import annotations

import sys

WANDB_OFF = ("wandb=off", "wandb.mode=disabled")


def train() -> None:
    """`ihlab-train` (ihlab.train.main), with the W&B writer started first."""
    if not any(arg in WANDB_OFF for arg in sys.argv[1:]):
        from ihlab.wandb_process import writer

        writer()
    from ihlab.train import main

    main()
