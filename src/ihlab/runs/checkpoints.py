"""Checkpoint files: written atomically, read without arbitrary unpickling, found for resume.

Every checkpoint the lab reads goes through `load_checkpoint`, which uses
`torch.load(weights_only=True)`: tensors, plain containers and numbers only, so a crafted file
cannot run code. The lab's own checkpoints hold nothing else (the model's shape is stored as plain
data, `ihlab_model`). A file that needs more is refused with a message saying why.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ihlab.model import Transformer, from_shape_state
from ihlab.runs.atomic import open_atomic
from ihlab.runs.files import FAILURE, LAST, step_checkpoint

log = logging.getLogger("ihlab.checkpoints")
# Lightning logs "`weights_only` was not set" at every full (optimizer included) save.
logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").setLevel(
    logging.WARNING
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or would need arbitrary code to load."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded on the CPU with weights-only unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines()]
        # torch words this "Unsupported global: GLOBAL x" or "... unsupported GLOBAL x whose
        # module x is blocked", depending on what the weights-only unpickler refused.
        unsafe = next((line for line in lines if "unsupported global" in line.lower()), None)
        if unsafe is None:  # not a pickle torch understands at all
            message = f"checkpoint {path} is corrupt or truncated (not a torch checkpoint)."
            raise CheckpointError(message) from None
        raise CheckpointError(
            f"checkpoint {path} holds objects that only arbitrary unpickling could load "
            f"({unsafe}); ihlab never runs code from a file. Fix: use a checkpoint written by "
            "ihlab-train, or re-save the weights as plain tensors."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({err_line(err)})."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict.")
    return state


def err_line(err: BaseException) -> str:
    """An exception's type and the first line of its message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else 'no detail'}"


def check_resumable(path: str | Path) -> None:
    """Refuse to resume from the state saved when an error struck: it may be mid-step, and a run
    resumed from it would evaluate at shifted steps."""
    if Path(path).name == FAILURE:
        raise CheckpointError(
            f"checkpoint {path} holds the state at the moment of a failure, possibly in the "
            "middle of a step, for inspection only. Fix: resume from a step_*.ckpt, last.ckpt "
            "or interrupted.ckpt of the run (rerunning the run's command picks the newest)."
        )


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a Lightning checkpoint was saved at."""
    state = load_checkpoint(path)
    if "global_step" not in state:
        raise CheckpointError(f"checkpoint {path} has no global_step: not a training checkpoint.")
    return int(state["global_step"])


def latest_checkpoint(folder: Path, below: int | None = None) -> tuple[Path, int] | None:
    """The readable resumable `*.ckpt` in `folder` with the most optimizer steps (optionally
    fewer than `below`), with its step; unreadable files are skipped with a warning. None if
    there is none."""
    best: tuple[Path, int] | None = None
    for path in sorted(folder.glob("*.ckpt")):
        if path.name == FAILURE:
            continue
        try:
            step = checkpoint_step(path)
        except CheckpointError as err:
            log.warning("skipping %s", err)
            continue
        if (below is None or step < below) and (best is None or step > best[1]):
            best = (path, step)
    return best


def evaluates_after(trainer: L.Trainer, eval_every: int) -> bool:
    """Whether an evaluation follows the step just taken (Lightning's val_check_interval)."""
    return trainer.global_step % eval_every == 0


class PeriodicCheckpoint(L.Callback):
    """`step_XXXXXX.ckpt` every `every` steps and `last.ckpt` (the latest of them, and the final
    state), each saved at a step boundary: after the step's evaluation on evaluation steps, with
    metrics.csv flushed first. A run killed at any moment (even SIGKILL) thus has on disk a
    checkpoint and every metric logged up to its step, so a resume reproduces the uninterrupted
    run exactly.
    """

    def __init__(self, folder: Path, every: int, eval_every: int) -> None:
        self.folder, self.every, self.eval_every = Path(folder), every, eval_every

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not evaluates_after(trainer, self.eval_every):
            self.periodic(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.periodic(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, LAST)

    def periodic(self, trainer: L.Trainer) -> None:
        if trainer.global_step % self.every == 0:
            self.save(trainer, step_checkpoint(trainer.global_step))
            self.save(trainer, LAST)

    def save(self, trainer: L.Trainer, name: str) -> None:
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.folder / name)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic writes (a kill or a full disk never leaves a
    truncated checkpoint) and weights-only loading."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        with open_atomic(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path)


def load_lab_model(checkpoint: str | Path, member: int = 0) -> Transformer:
    """The model of an `ihlab-train` checkpoint (its shape is stored beside the weights), in eval
    mode, loaded without arbitrary unpickling; `member` picks a seed of an ensemble job's
    checkpoint. CheckpointError for a file that is unreadable, unsafe, or not written by
    ihlab-train."""
    state = load_checkpoint(checkpoint)
    if "ihlab_model" not in state or "state_dict" not in state:
        raise CheckpointError(
            f"{checkpoint} was not written by ihlab-train (no model config in it)."
        )
    model = Transformer(*from_shape_state(state["ihlab_model"]))
    stacked = {
        k[len("params.") :]: v for k, v in state["state_dict"].items() if k.startswith("params.")
    }
    if stacked:  # parameters on a member axis (train/members.py)
        n_members = next(iter(stacked.values())).shape[0]
        if not 0 <= member < n_members:
            raise CheckpointError(
                f"{checkpoint} holds {n_members} members; member {member} is not one."
            )
        weights = {key.replace("__", "."): value[member] for key, value in stacked.items()}
    else:  # one model's parameters under "model."
        prefix = "model."
        weights = {
            k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)
        }
    model.load_state_dict(weights)
    return model.eval()
