"""The W&B writer: every W&B call of a training process, made by a child process beside it.

    python -m ihlab.tracking.wandb_writer     # started by `writer()`, one per training process

Why: importing and starting W&B costs ~2-3 s of Python per process, and encoding a row of head
scores milliseconds. In the training process that work holds the interpreter the training loop
runs on, and running beside it on the second core it still stalls training badly, because
torch's intra-op threads then wait for each other at every small parallel operation. So the
writer is started before the training stack is imported (`ihlab-train`'s entry point,
ihlab/apps/launch.py): it imports and starts W&B during the ~4 s in which the training process
imports torch and Lightning on one core, and afterwards has only the runs' calls to make.

The protocol: pickled calls on the writer's stdin, made in order: ("init", key, kwargs, file),
("log", key, row), ("image", key, name, array, step, caption), ("finish", key, summary,
exit_code), each for the W&B run `key`. After a "finish" the writer replies ("finished", key,
error) on its protocol stream (the stdout it was started with; its own prints go to stderr);
at a run's first failed call it replies ("error", key, message) and skips that run's later
calls. The client (`WandbWriter`) raises such an error in the training loop at the run's next
call, or at its `finish`, which waits until every call of the run has been made.

The writer ignores SIGINT and SIGTERM (the training process decides when its runs end: a stopped
run still logs its last rows and its summary) and runs in a session of its own, so a signal to
the training process's group passes it by. When its stdin closes (the training process exited,
or was killed) it ends every run still open, with exit code 1, and exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from typing import Any, BinaryIO

STEP_KEY = "trainer/global_step"  # every metric's x-axis: optimizer steps


def reply(out: BinaryIO, message: tuple[Any, ...]) -> None:
    pickle.dump(message, out)
    out.flush()


def prewarm() -> None:
    """Import W&B and start its service before any run asks for it. `wandb.init` also imports
    W&B Launch (to apply staged launch inputs), the largest import of all: done here too."""
    import wandb

    wandb.setup()
    with contextlib.suppress(ImportError):  # where wandb keeps it is its own business
        import wandb.sdk.launch
    with contextlib.suppress(ImportError):  # wandb.Image checks for pandas data frames
        import pandas  # noqa: F401


def serve(calls: BinaryIO, out: BinaryIO) -> None:
    """Make the calls read from `calls` until it closes; replies go to `out`."""
    import wandb

    runs: dict[str, Any] = {}
    failed: set[str] = set()
    while True:
        try:
            message = pickle.load(calls)
        except EOFError:
            break
        kind, key, *args = message
        if key in failed:
            if kind == "finish":
                reply(out, ("finished", key, "its W&B run had failed earlier"))
            continue
        try:
            if kind == "init":
                kwargs, saved = args
                run = wandb.init(**kwargs)
                run.define_metric(STEP_KEY)
                run.define_metric("*", step_metric=STEP_KEY)
                if saved is not None and os.path.exists(saved):
                    run.save(saved, base_path=os.path.dirname(saved), policy="now")
                runs[key] = run
                reply(out, ("started", key, None))
            elif kind == "log":
                (row,) = args
                runs[key].log(row)
            elif kind == "image":
                name, array, step, caption = args
                runs[key].log({name: [wandb.Image(array, caption=caption)], STEP_KEY: step})
            elif kind == "finish":
                summary, exit_code = args
                run = runs.pop(key)
                if summary:
                    run.summary.update(summary)
                run.finish(exit_code=exit_code)
                reply(out, ("finished", key, None))
            else:
                raise ValueError(f"unknown call {kind!r}")
        except Exception as err:
            failed.add(key)
            runs.pop(key, None)
            text = f"{type(err).__name__}: {err}"
            answer = {"init": "started", "finish": "finished"}.get(kind, "error")
            reply(out, (answer, key, text))
    for run in runs.values():  # the parent went away without finishing them
        run.finish(exit_code=1)


class WandbWriter:
    """The client of this process's W&B writer process: a sender thread feeds it the calls
    (so a full pipe, while W&B starts, never blocks training), a reader thread collects its
    replies."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ihlab.tracking.wandb_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # signals to the training process's group pass it by
        )
        self.outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.replies = threading.Condition()
        self.errors: dict[str, str] = {}
        self.started: dict[str, str | None] = {}
        self.finished: dict[str, str | None] = {}
        self.ended = False
        threading.Thread(target=self._send, name="ihlab-wandb-calls", daemon=True).start()
        threading.Thread(target=self._read, name="ihlab-wandb-replies", daemon=True).start()
        atexit.register(self.close)

    def _send(self) -> None:
        assert self.proc.stdin is not None
        try:
            while (message := self.outbox.get()) is not None:
                pickle.dump(message, self.proc.stdin)
                self.proc.stdin.flush()
        except OSError:  # the writer stopped: the reader sees it end
            pass
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                kind, key, text = pickle.load(self.proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self.replies:
                if kind == "error":
                    self.errors.setdefault(key, text)
                else:
                    getattr(self, kind)[key] = text  # started / finished
                self.replies.notify_all()
        with self.replies:
            self.ended = True
            self.replies.notify_all()

    def send(self, message: tuple[Any, ...]) -> None:
        """Hand a call over; first raise the error of an earlier call of the same run, if any."""
        with self.replies:
            error = self.errors.pop(message[1], None)
            ended = self.ended
        if error is not None:
            raise RuntimeError(f"W&B failed: {error}")
        if ended:
            raise RuntimeError("the W&B writer process stopped")
        self.outbox.put(message)

    def wait(self, replies: dict[str, str | None], key: str) -> None:
        """Wait for the writer's reply about run `key`; raise the error it reports."""
        with self.replies:
            self.replies.wait_for(lambda: key in replies or self.ended)
            error = replies.pop(key, "the W&B writer process stopped")
        if error is not None:
            raise RuntimeError(f"W&B failed: {error}")

    def finish(self, key: str, summary: dict[str, Any], exit_code: int) -> None:
        """End run `key` and wait until the writer has made every call of it."""
        self.send(("finish", key, summary, exit_code))
        self.wait(self.finished, key)

    def close(self) -> None:
        """End the writer's input: it ends any run still open and exits."""
        self.outbox.put(None)


_WRITER: WandbWriter | None = None
_WRITER_LOCK = threading.Lock()


def writer() -> WandbWriter:
    """This process's W&B writer, started on first use (and again if it has stopped)."""
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None or _WRITER.proc.poll() is not None:
            _WRITER = WandbWriter()
        return _WRITER


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # wandb's prints must not reach `out`
    prewarm()
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
