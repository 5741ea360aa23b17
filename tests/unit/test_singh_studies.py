"""The paper-scale Singh et al. studies run what the authors' script runs: every sweep point of
`singh_fig4b`, `singh_fig5b`, `singh_fig6_classes` and `singh_fig6_labels`, composed as
`ihlab-train -m` composes it, against a table of the values in the authors' public run script
(aadityasingh/icl-dynamics, `ih_paper_runs.sh`; line numbers of that file) and its argument
defaults (`main_utils.py`). The script counts sequences (`--train_iters`, `--eval_every`); the lab
counts steps of 32 sequences, so a length is `iters / 32` steps exactly and an evaluation interval
the nearest whole number of steps (the script evaluates at the first batch boundary past each
multiple of its interval: 1,000 -> 1,024, 2,016, ...; the lab every 31 steps = 992 sequences)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.schema import TrainConfig, to_train_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "conf" / "experiment"
BATCH = 32  # --train_bs 32 on every line
LR = 1e-5  # --lr 0.00001 on every line
KEPT = [3]  # L19 STRONGEST_IH="1:3" (layer 1 = the second layer, head 3)
PREV_TOKEN = [2]  # L23 PT_HEAD="0:2"
# --fs_relabel N --fs_relabel_split TRAIN HELD 0: the held-out label pairs per label count
HELD_OUT = {5: 2, 10: 9, 15: 21}  # the prefix's "8 2 0"; L96 "36 9 0"; L97 "84 21 0"

MAIN_RUN_ITERS = 1_000_000  # L13
CLAMP_ITERS = 600_000  # L25
SCALING_ITERS = 2_000_000  # L29
SCALING_CLAMP_ITERS = 300_000  # L30


@dataclass(frozen=True)
class Run:
    """One of the authors' runs (or a set of lines that differ only in classes or labels)."""

    iters: int
    eval_every: int  # sequences
    lines: str


# study -> {sweep point (overrides) -> the authors' run}
FIG4B = {
    (f"named_heads.kept=[{h}]", "clamps=one_head"): Run(MAIN_RUN_ITERS, 5000, f"L{41 + h}")
    for h in range(8)
}
FIG5B = {
    ("clamps=one_head",): Run(CLAMP_ITERS, 1000, "L65"),
    ("clamps=singh_prev_token",): Run(CLAMP_ITERS, 1000, "L68"),
    ("clamps=singh_layer1",): Run(CLAMP_ITERS, 1000, "L71"),
    ("clamps=singh_match",): Run(CLAMP_ITERS, 1000, "L74"),
    ("clamps=singh_copy",): Run(CLAMP_ITERS, 1000, "L78"),
    ("clamps=singh_layer1_copy",): Run(CLAMP_ITERS, 1000, "L82"),
}
# Figure 6: normal training "_long" runs; "B evolution" = perfect_l1_and_copy, "C evolution" =
# perfect_match, "B, C evolution" = perfect_l1. The 50-class, 5-label clamp cells are Figure 5b's
# runs (L71, L74, L82) drawn to 3e5 sequences (ih_paper_plots.ipynb: max_iters = 3e5).
FIG6_CONDITIONS = ("one_head", "singh_layer1_copy", "singh_match", "singh_layer1")


def fig6(key: str, lines: dict[int, tuple[int, int, int, int]]) -> dict[tuple[str, str], Run]:
    """A Figure 6 row: per value of `key`, the lines of its four runs (FIG6_CONDITIONS' order)."""
    table = {}
    for value, (normal, *clamped) in lines.items():
        runs = [Run(SCALING_ITERS, 5000, f"L{normal}")]
        runs += [Run(SCALING_CLAMP_ITERS, 1000, f"L{line}") for line in clamped]
        for clamps, run in zip(FIG6_CONDITIONS, runs, strict=True):
            table[f"{key}={value}", f"clamps={clamps}"] = run
    return table


FIG6_CLASSES = fig6(
    "data.n_train_classes",
    {50: (89, 82, 74, 71), 100: (92, 100, 108, 116), 200: (93, 101, 109, 117)},
)
FIG6_LABELS = fig6(
    "data.n_labels", {5: (89, 82, 74, 71), 10: (96, 104, 112, 120), 15: (97, 105, 113, 121)}
)
AUTHORS = {
    "singh_fig4b": FIG4B,
    "singh_fig5b": FIG5B,
    "singh_fig6_classes": FIG6_CLASSES,
    "singh_fig6_labels": FIG6_LABELS,
}


def sweep_points(study: str) -> set[tuple[str, ...]]:
    """Every point of a study's own sweep (`hydra.sweeper.params` in its YAML), as overrides."""
    params = yaml.safe_load((EXPERIMENTS / f"{study}.yaml").read_text())["hydra"]["sweeper"]
    grid = [[f"{key}={v}" for v in str(vals).split(",")] for key, vals in params["params"].items()]
    return {tuple(sorted(point)) for point in itertools.product(*grid)}


@pytest.fixture(scope="module")
def composed() -> dict[tuple[str, tuple[str, ...]], TrainConfig]:
    """Every point of the table, composed as `ihlab-train` composes it (one Hydra context)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return {
            (study, point): to_train_config(compose("train", [f"experiment={study}", *point]))
            for study, table in AUTHORS.items()
            for point in table
        }


def test_every_paper_scale_study_is_in_the_table() -> None:
    studies = {p.stem for p in EXPERIMENTS.glob("singh_fig*.yaml") if not p.stem.endswith("_cpu")}
    assert studies == set(AUTHORS)


@pytest.mark.parametrize("study", AUTHORS)
def test_a_study_sweeps_exactly_the_authors_conditions(study: str) -> None:
    assert sweep_points(study) == {tuple(sorted(point)) for point in AUTHORS[study]}


@pytest.mark.parametrize(
    ("study", "point"), [(s, p) for s, table in AUTHORS.items() for p in table], ids=str
)
def test_each_point_runs_the_authors_length_interval_and_setting(
    study: str, point: tuple[str, ...], composed: dict[tuple[str, tuple[str, ...]], TrainConfig]
) -> None:
    run = AUTHORS[study][point]
    config = composed[study, point]
    assert config.trainer.max_steps * BATCH == run.iters, run.lines
    assert config.trainer.eval_every == round(run.eval_every / BATCH), run.lines
    assert config.data.batch_size == BATCH and config.optim.lr == LR
    assert config.optim.weight_decay == 0.0  # main_utils.py: --weight_decay 0.0, plain Adam
    model = config.model
    assert (model.n_layers, model.n_heads, model.d_model) == (2, 8, 64)  # the parser's defaults
    assert config.named_heads["prev_token"] == PREV_TOKEN
    if study != "singh_fig4b":
        assert config.named_heads["kept"] == KEPT
    labels = config.data.n_labels
    assert config.data.n_holdout_pairs == HELD_OUT[labels], run.lines
    classes = dict(p.split("=") for p in point).get("data.n_train_classes", "50")
    assert config.data.n_train_classes == int(classes)  # --class_split 50|100|200 ...
    assert config.seeds == [0, 1, 2, 3, 4]
