"""`ihlab-train`'s entry point: the W&B writer starts before the heavy imports.

The writer (ihlab/tracking/wandb_writer.py) is started first, so that W&B is imported and started
on the second core while this process imports torch and Lightning on the first; only then is the
app (ihlab.apps.train) imported, which is why its import sits inside `train()`. A command line that
turns W&B off (`wandb=off` or `wandb.mode=disabled`) starts none; a config that turns it off
otherwise leaves an idle writer, which exits with the process.
"""

from __future__ import annotations

import sys

from ihlab.tracking.wandb_writer import writer

WANDB_OFF = ("wandb=off", "wandb.mode=disabled")


def train() -> None:
    """`ihlab-train` (ihlab.apps.train.main), with the W&B writer started first."""
    if not any(arg in WANDB_OFF for arg in sys.argv[1:]):
        writer()
    from ihlab.apps.train import main  # after the writer has started: see the module doc

    main()
