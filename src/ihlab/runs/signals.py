"""SIGTERM, SIGINT and SLURM preemption: stop at a step boundary, record, and exit as killed.

A scheduler (SLURM preemption, a killed multirun, Ctrl-C) must see a stopped run as stopped, and
the run must be resumable from where it stopped. So a signal never kills a run in the middle of a
step: while training, the handler only records the signal and `StopOnSignal` (in
ihlab.train.interrupts: this module needs no Lightning) raises `Interrupted` after the current
optimizer step, when model, optimizer and data stream agree. The training code then saves a
checkpoint and writes `summary.json` with status `interrupted`, and `exit_as_signalled` ends the
process the way the signal would have (exit status 128 + signal number), after any child
processes (a parallel multirun's workers) have stopped the same way. Under submitit (SLURM), the
preemption signal (USR2) is handed back to submitit afterwards, which requeues the job; the
requeued job resumes from the checkpoint (`resume=auto`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

log = logging.getLogger("ihlab.interrupts")

CHILD_GRACE_S = 120.0  # how long child processes get to checkpoint and stop before SIGKILL
PREEMPTION = signal.SIGUSR2  # submitit's preemption / timeout signal
POOL_LOCK_WAIT_S = 5.0  # for the worker pool's lock (held only briefly by the pool itself)


class Interrupted(BaseException):
    """The process received `signum`. A BaseException, like KeyboardInterrupt, so that code that
    handles failures (`except Exception`, Hydra's error reporting) lets it through."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        self.signum, self.step = signum, step
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class SignalGuard:
    """The process's handler for SIGTERM, SIGINT and (under submitit) USR2.

    Outside training a signal stops the process at once (after its children); inside training
    (inside `deferring()`) it is only recorded, and `StopOnSignal` acts on it.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self.previous: dict[int, Any] = {}

    def signals(self) -> list[int]:
        handled = [signal.SIGTERM, signal.SIGINT]
        if callable(signal.getsignal(PREEMPTION)) or PREEMPTION in self.previous:
            handled.append(PREEMPTION)  # submitit installed its requeue handler
        return handled

    def install(self) -> bool:
        """Handle the signals in this process (main thread only); True if a handler changed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        changed = False
        for signum in self.signals():
            current = signal.getsignal(signum)
            if current != self.handle:  # bound methods are equal, not identical
                self.previous.setdefault(signum, current)
                signal.signal(signum, self.handle)
                changed = True
        return changed

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Record signals instead of raising them inside this block (a run: it stops at a step
        boundary and always finishes its bookkeeping)."""
        installed = self.install()
        was, self.deferred, self.received = self.deferred, True, None
        try:
            yield
        finally:
            self.deferred = was
            if installed:
                self.restore()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning("received %s", signal.Signals(signum).name)
            stop_children(signal.SIGTERM if signum == PREEMPTION else signum)
        if not self.deferred:
            raise Interrupted(signum)


GUARD = SignalGuard()


def stop_children(signum: int) -> None:
    """Send `signum` to every descendant process of this session and wait for them to stop
    (SIGKILL after CHILD_GRACE_S): a parallel multirun's workers checkpoint and stop with their
    parent. Helpers that run in a session of their own (the W&B writer and W&B's service) or
    ignore the signal (multiprocessing's and loky's resource trackers) are left alone: they must
    outlive the run's last words, and they stop by themselves when their parent does."""
    session = os.getsid(0)
    children = [
        p
        for p in psutil.Process().children(recursive=True)
        if _session(p) == session and not _ignores(p, signum)
    ]
    with _worker_pool_held():
        for child in children:
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                continue
        alive, deadline = children, time.monotonic() + CHILD_GRACE_S
        while alive and time.monotonic() < deadline:
            _, alive = psutil.wait_procs(alive, timeout=0.2)
            # a helper still starting when signalled may have begun ignoring the signal since
            alive = [child for child in alive if not _ignores(child, signum)]
        for child in alive:
            log.error(
                "child process %d did not stop within %.0f s: killed", child.pid, CHILD_GRACE_S
            )
            child.kill()


@contextlib.contextmanager
def _worker_pool_held() -> Iterator[None]:
    """Keep joblib's process pool (launcher=parallel) from acting while its workers stop.

    The pool (loky) SIGKILLs all its workers as soon as one of them exits, taking it for a crash;
    a stopping multirun's workers exit one by one, each after its checkpoint and summary, so the
    first to finish would kill the others mid-write. The pool's manager thread takes the pool's
    shutdown lock before it acts on a dead worker (and `submit` takes it too, so no job starts
    meanwhile): holding that lock until every worker has stopped leaves it nothing to kill. Only
    a pool this process already made is held (joblib is not imported here); if the lock is busy
    (the signal arrived inside the pool's own locked code) the workers stop as before.
    """
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    pool = getattr(loky, "_executor", None)
    lock = getattr(pool, "_shutdown_lock", None)
    if lock is None or not lock.acquire(timeout=POOL_LOCK_WAIT_S):
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _ignores(process: psutil.Process, signum: int) -> bool:
    """Whether `process` ignores `signum` (Linux: the SigIgn mask in /proc; elsewhere: no)."""
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except OSError:
        return False
    ignored = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) >> (signum - 1) & 1)


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:  # gone already
        return None


def exit_as_signalled(signum: int) -> None:
    """End the process as `signum` would have: hand USR2 back to submitit (which requeues the job
    and exits), else re-raise the signal with its default action (exit status 128 + signum)."""
    logging.shutdown()
    previous = GUARD.previous.get(signum)
    if signum == PREEMPTION and callable(previous):
        previous(signum, None)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    raise SystemExit(128 + signum)  # not reached unless the signal is blocked
