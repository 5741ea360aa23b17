"""The W&B writer process: calls made in order, errors handed back, runs never left open, and a
process that signals to the training process pass by."""

from __future__ import annotations

import io
import os
import pickle
import signal
import time
from enum import Enum
from pathlib import Path

import numpy as np
import pytest

from conftest import read_offline_wandb
from ihlab.tracking.wandb_run import WandbRun, builtins_only
from ihlab.tracking.wandb_writer import WandbWriter, serve


def init_kwargs(folder: Path, run_id: str, **extra: object) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "id": run_id,
        "dir": str(folder),
        "mode": "offline",
        "project": "ihlab-test",
        "name": "writer-test",
        "reinit": "create_new",
        "config": {"seed": 3},
        **extra,
    }


def replies_of(calls: list[tuple]) -> list[tuple]:
    """Run `serve` on these calls (then end of input); its replies, in order."""
    inbox, outbox = io.BytesIO(), io.BytesIO()
    for call in calls:
        pickle.dump(call, inbox)
    inbox.seek(0)
    serve(inbox, outbox)
    outbox.seek(0)
    replies = []
    while outbox.tell() < len(outbox.getvalue()):
        replies.append(pickle.load(outbox))
    return replies


def test_calls_are_made_in_order_and_the_run_holds_every_row(tmp_path: Path) -> None:
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    replies = replies_of(
        [
            ("init", "a", init_kwargs(tmp_path, "writer01"), None),
            ("log", "a", {"train/loss": 0.5, "trainer/global_step": 0}),
            ("log", "a", {"train/loss": 0.25, "trainer/global_step": 20}),
            ("image", "a", "heads/heatmap", image, 20, "step 20"),
            ("finish", "a", {"learning_time": 20}, 0),
        ]
    )
    assert replies == [("started", "a", None), ("finished", "a", None)]
    record = read_offline_wandb(tmp_path)
    rows = [(r["trainer/global_step"], r.get("train/loss")) for r in record["history"]]
    assert rows == [(0, 0.5), (20, 0.25), (20, None)]  # the image row comes last, as sent
    image_row = record["history"][-1]
    assert image_row["heads/heatmap/_type"] == "images/separated"
    assert (image_row["heads/heatmap/height"], image_row["heads/heatmap/width"]) == (4, 6)
    assert image_row["heads/heatmap/captions"] == ["step 20"]
    assert record["summary"]["learning_time"] == 20
    assert record["config"]["seed"] == 3


def test_a_failed_start_is_reported_and_the_runs_later_calls_are_skipped(tmp_path: Path) -> None:
    replies = replies_of(
        [
            ("init", "bad", init_kwargs(tmp_path / "bad", "writer02", mode="sideways"), None),
            ("log", "bad", {"x": 1.0}),
            ("init", "good", init_kwargs(tmp_path / "good", "writer03"), None),
            ("finish", "bad", {}, 1),
            ("finish", "good", {}, 0),
        ]
    )
    (kind, key, error), *rest = replies
    assert (kind, key) == ("started", "bad") and "sideways" in error
    assert rest == [
        ("started", "good", None),
        ("finished", "bad", "its W&B run had failed earlier"),
        ("finished", "good", None),
    ]
    assert not list((tmp_path / "bad").glob("wandb/offline-run-*/*.wandb"))


def test_a_run_left_open_when_the_input_ends_is_finished_as_failed(tmp_path: Path) -> None:
    replies = replies_of(
        [
            ("init", "a", init_kwargs(tmp_path, "writer04"), None),
            ("log", "a", {"x": 1.0, "trainer/global_step": 5}),
        ]
    )
    assert replies == [("started", "a", None)]
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    from wandb_records import read_records

    def exits() -> list[int]:
        records = read_records(path)
        return [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]

    # wandb's own service writes the file: under load its exit record can land a moment after
    # `finish` returns (seen once in a full suite run), so wait for it, at most 30 s.
    deadline = time.monotonic() + 30
    while not exits() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert exits() == [1]
    assert read_offline_wandb(tmp_path)["history"][0]["x"] == 1.0


def test_a_run_whose_wandb_start_fails_raises_in_the_training_process(tmp_path: Path) -> None:
    """Through a real writer process: the error comes back to the run that made the call."""
    run = WandbRun(init_kwargs(tmp_path, "writer05", mode="sideways"))
    with pytest.raises(RuntimeError, match=r"(?s)W&B failed: .*sideways"):
        run.wait_started()
    with pytest.raises(RuntimeError, match="failed earlier"):
        run.finish({}, exit_code=1)


def test_the_writer_runs_in_its_own_session_and_ignores_termination(tmp_path: Path) -> None:
    writer = WandbWriter()
    key = "through-signals"
    try:
        assert os.getsid(writer.proc.pid) != os.getsid(0)
        writer.send(("init", key, init_kwargs(tmp_path, "writer06"), None))
        writer.wait(writer.started, key)  # the writer is up (and handles its signals)
        writer.proc.send_signal(signal.SIGTERM)
        writer.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert writer.proc.poll() is None
        writer.send(("log", key, {"x": 2.0, "trainer/global_step": 1}))
        writer.finish(key, {"status": "interrupted"}, 1)
    finally:
        writer.close()
    assert writer.proc.wait(timeout=60) == 0  # its input closed: it exits by itself
    assert read_offline_wandb(tmp_path)["summary"]["status"] == "interrupted"


class Mode(str, Enum):
    offline = "offline"


def test_the_config_reaches_the_writer_as_builtins() -> None:
    config = {"wandb": {"mode": Mode.offline, "tags": (Mode.offline, "a")}, "seed": 1}
    plain = builtins_only(config)
    assert plain == {"wandb": {"mode": "offline", "tags": ["offline", "a"]}, "seed": 1}
    assert type(plain["wandb"]["mode"]) is str
