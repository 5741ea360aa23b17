"""A run directory belongs to one run: a lock while it runs, and a plan for what a start means.

`RunLock` holds an exclusive `flock` on `<run dir>/.lock` while a run uses the directory; the kernel
drops it when the process dies (even by SIGKILL), so a stale file never blocks a later run.

`plan_run` decides what starting a run in a directory means, from what the directory holds:
- nothing: a fresh run;
- this same run (its `.hydra/resolved.yaml` equals the new config, up to `RESUMABLE_KEYS`):
  finished (completed or diverged) -> nothing to do; unfinished -> resume from its latest
  readable checkpoint (`resume=auto`), or start over if it has none;
- another run, or files that are not a run: refused, unless `replace=true`, which moves them to
  `<run dir>/.replaced/<time>/` (hidden, so `ihlab-compare` never reads them) first.
An explicit `ckpt_path` resumes that checkpoint's run: in its own directory, or in a new empty
one, to which the run's history (metrics and tables) is copied so the summary covers it all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ihlab.runs.checkpoints import check_resumable, checkpoint_step, latest_checkpoint
from ihlab.runs.files import CHECKPOINTS, HYDRA, LOCK, REPLACED, SUMMARY, TRAIN_LOG, RunFiles
from ihlab.runs.summary import Status, UnreadableRecord, read_summary

log = logging.getLogger("ihlab.runs")
# Keys that may change when a run is resumed: they do not change its numbers.
# trainer.max_steps may grow (a run can be extended) unless the lr schedule depends on it.
RESUMABLE_KEYS = (
    "ckpt_path",
    "resume",
    "replace",
    "trainer.max_steps",
    "trainer.checkpoint_every",
    "trainer.progress_bar",
    "trainer.progress_refresh",
    "trainer.threads",
    "wandb",
)


class RunDirError(Exception):
    """A run cannot start in this directory; the message says why and what to do."""


class RunLock:
    """Exclusive use of a run directory by this process (context manager)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunFiles(Path(run_dir)).lock
        self.file: Any = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirError(
                f"run directory {self.path.parent} is in use by a live run ({holder}). Fix: wait "
                "for it to finish, or give this run another directory (hydra.run.dir=...)."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


@dataclass
class RunPlan:
    """What to do in a run directory (see `plan_run`)."""

    checkpoint: Path | None = None  # resume from this checkpoint (None: from step 0)
    done: dict[str, Any] | None = None  # the run finished earlier: its summary, nothing to do
    previous: dict[str, Any] | None = None  # the summary of the run's earlier segment, if any
    history_from: Path | None = None  # the run directory whose history was copied here
    replaced: Path | None = None  # where earlier contents were moved


def previous_record(path: Path) -> dict[str, Any] | None:
    """The record of a run's earlier segment; an unreadable one (damaged by hand: the lab writes
    records atomically) counts as none, with a warning, so the run resumes from its checkpoint."""
    try:
        return read_summary(path)
    except UnreadableRecord as err:
        log.warning("ignoring %s", err)
        return None


def contents(run_dir: Path) -> list[Path]:
    """What a run directory holds, apart from its lock and earlier replaced contents. A bare
    config-error record (a run that never started) counts as empty."""
    entries = [p for p in sorted(run_dir.iterdir()) if p.name not in (LOCK, REPLACED)]
    summary = previous_record(RunFiles(run_dir).summary)
    record = {HYDRA, SUMMARY, TRAIN_LOG}
    never_started = summary is not None and summary.get("status") == Status.config_error
    if never_started and {p.name for p in entries} <= record:
        return []
    return entries


def move_aside(run_dir: Path, entries: list[Path]) -> Path:
    """Move `entries` to `<run dir>/.replaced/<time>/`; returns that folder."""
    target = RunFiles(run_dir).replaced / time.strftime("%Y-%m-%d_%H-%M-%S")
    while target.exists():
        target = target.with_name(target.name + "_")
    target.mkdir(parents=True)
    for entry in entries:
        shutil.move(str(entry), str(target / entry.name))
    return target


def flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for every key where two resolved configs differ, except the keys a
    resume may change."""
    exempt = list(RESUMABLE_KEYS)
    schedule = flat(new).get("optim.schedule", "constant")
    if schedule != "constant":
        exempt.remove("trainer.max_steps")  # the lr schedule is shaped by it
    a, b = flat(old), flat(new)
    return [
        f"{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key) and not any(key == e or key.startswith(e + ".") for e in exempt)
    ]


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run wrote to `.hydra/resolved.yaml`; None without one."""
    path = RunFiles(run_dir).resolved
    if not path.is_file():
        return None
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return loaded if isinstance(loaded, dict) else None


def checkpoint_run_dir(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), if it is one."""
    run = ckpt.resolve().parent.parent
    is_run = ckpt.resolve().parent.name == CHECKPOINTS and stored_config(run) is not None
    return run if is_run else None


def _refuse(run_dir: Path, why: str) -> RunDirError:
    return RunDirError(
        f"run directory {run_dir} {why}. A run directory belongs to one run. Fix: give this run "
        "a new directory (hydra.run.dir=... or hydra.sweep.dir=...), or set replace=true to move "
        f"what is there to {run_dir / REPLACED}/ and start over."
    )


def _check_same_run(run_dir: Path, resolved: Mapping[str, Any]) -> None:
    old = stored_config(run_dir)
    if old is None:
        raise _refuse(run_dir, "holds files that are not an ihlab run's (no .hydra/resolved.yaml)")
    differences = config_differences(old, resolved)
    if differences:
        shown = "; ".join(differences[:8]) + ("; ..." if len(differences) > 8 else "")
        raise _refuse(run_dir, f"holds another run: its config differs ({shown})")


def plan_run(
    run_dir: Path,
    resolved: Mapping[str, Any],
    *,
    resume: str,
    replace: bool,
    ckpt_path: str | None,
    max_steps: int,
    record: str = SUMMARY,
    members: Sequence[str] = ("",),
) -> RunPlan:
    """What starting the run with config `resolved` in `run_dir` means (see the module doc).
    `record` is the file that says how the run ended, `members` the folders (inside `run_dir`)
    holding its runs' histories: for an ensemble job files.JOB_RECORD and one folder per seed.
    Call it holding the directory's `RunLock`; it moves and copies files as the plan says."""
    plan = RunPlan()
    entries = contents(run_dir)
    if entries and replace:
        plan.replaced = move_aside(run_dir, entries)
        entries = []
    if ckpt_path is not None:
        ckpt = Path(ckpt_path)
        source = checkpoint_run_dir(ckpt)
        if source is None:
            raise RunDirError(
                f"ckpt_path={ckpt_path}: not inside a run directory (<run>/checkpoints/*.ckpt with "
                "<run>/.hydra/resolved.yaml), so its run's config and history cannot be checked. "
                "Fix: resume from a checkpoint in its run's checkpoints/ folder."
            )
        _check_same_run(source, resolved)
        check_resumable(ckpt)
        step = checkpoint_step(ckpt)
        if source != run_dir.resolve():
            if entries:
                raise _refuse(run_dir, f"is not empty, so {source}'s history cannot be copied in")
            for member in members:
                (run_dir / member).mkdir(parents=True, exist_ok=True)
                for path in RunFiles(source / member).history():
                    if path.is_file():
                        shutil.copy2(path, run_dir / member / path.name)
            plan.history_from = source
        else:
            plan.previous = previous_record(run_dir / record)
        plan.checkpoint = ckpt
        _check_history([run_dir / m for m in members], step)
        return plan
    if not entries:
        return plan
    if resume == "never":
        raise _refuse(run_dir, "already holds a run and resume=never")
    _check_same_run(run_dir, resolved)
    summary = previous_record(run_dir / record)
    status = Status(summary["status"]) if summary and summary.get("status") in set(Status) else None
    if (
        status is not None
        and status.finished
        and (status == Status.diverged or summary["steps"] >= max_steps)
    ):
        plan.done = summary
        return plan
    found = latest_checkpoint(RunFiles(run_dir).checkpoints)
    if found is None:  # nothing to resume from: the same run again, from step 0
        plan.replaced = move_aside(run_dir, entries)
        return plan
    plan.checkpoint, plan.previous = found[0], summary
    _check_history([run_dir / m for m in members], found[1])
    return plan


def _check_history(run_dirs: Sequence[Path], step: int) -> None:
    """A resume needs every run's metrics up to the checkpoint's step, or its summary would not
    cover the whole run."""
    for run_dir in run_dirs if step else []:
        if not RunFiles(run_dir).metrics.is_file():
            raise RunDirError(
                f"cannot resume {run_dir} at step {step}: its metrics.csv is missing, so the "
                "summary could not cover the whole run. Fix: restore the file, or start over "
                "(replace=true)."
            )
