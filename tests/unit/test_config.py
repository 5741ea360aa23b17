"""Configs: every experiment composes and validates; bad values fail naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode

from conftest import compose_config
from ihlab.apps.hydra_entry import config_dir
from ihlab.data import DataConfig
from ihlab.errors import ConfigError
from ihlab.train.optim import OptimConfig, Schedule, lr_factor
from ihlab.train.schema import TrainConfig

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


def test_the_required_experiments_exist() -> None:
    required = {"induction_2l", "smeared_1l", "plain_1l", "fewshot_singh", "fewshot_fast"}
    assert required | {"markov_2l"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(make_config, experiment: str) -> None:
    config = make_config(f"experiment={experiment}")
    assert isinstance(config, TrainConfig)
    assert config.name == experiment
    assert isinstance(config.data, DataConfig)


def test_default_is_induction_2l_with_wandb_offline() -> None:
    from conftest import compose_config

    cfg = compose_config([])
    assert cfg.name == "induction_2l"
    assert cfg.wandb.mode.value == "offline"
    assert cfg.trainer.accelerator == "cpu"


def test_fewshot_singh_matches_the_paper(make_config) -> None:
    config = make_config("experiment=fewshot_singh")
    assert (config.model.n_layers, config.model.n_heads, config.model.d_model) == (2, 8, 64)
    assert config.model.positional.value == "rope" and config.model.attn_only
    assert config.optim.name.value == "adam" and config.optim.lr == 1e-5
    assert config.data.batch_size == 32 and config.data.n_train_classes == 50
    assert config.data.n_labels == 5 and config.data.context_pairs == 2
    assert config.data.dataset_seed == 20 and config.data.unseen_exemplars.value == "train"


def test_unknown_key_fails_naming_it(make_config) -> None:
    with pytest.raises(ConfigCompositionException, match=r"model\.n_layer"):
        make_config("model.n_layer=3")


def test_wrong_type_fails_naming_the_key(make_config) -> None:
    with pytest.raises(ConfigCompositionException, match=r"trainer\.max_steps"):
        make_config("trainer.max_steps=many")


def test_bad_enum_value_lists_the_choices(make_config) -> None:
    with pytest.raises(ConfigCompositionException, match=r"model\.positional") as err:
        make_config("model.positional=sinusoidal")
    assert "learned, rope, none" in str(err.value.__cause__)


def test_indivisible_d_model_fails_naming_both_keys_and_the_fix(make_config) -> None:
    with pytest.raises(ConfigError, match=r"model\.d_model=64.*model\.n_heads=5.*Fix"):
        make_config("model.n_heads=5")


def test_missing_hdf5_file_fails_naming_the_key_and_the_fix(make_config, tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(ConfigError, match=r"data\.hdf5_path.*nope\.h5") as err:
        make_config("experiment=fewshot_fast", "data.features=hdf5", f"data.hdf5_path={missing}")
    assert "data.features=gaussian" in str(err.value)


def test_bad_trainer_value_names_the_key(make_config) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.eval_every"):
        make_config("trainer.eval_every=0")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=nan"], "optim.lr=nan must be a finite number > 0"),
        (["optim.lr=inf"], "optim.lr=inf must be a finite number > 0"),
        (["optim.lr=0"], "optim.lr=0.0 must be a finite number > 0"),
        (["optim.eps=0"], "optim.eps=0.0 must be a finite number > 0"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 must be a finite number >= 0"),
        (["optim.beta1=1.0"], "optim.beta1=1.0 must be in [0, 1)"),
        (["optim.beta2=-0.5"], "optim.beta2=-0.5 must be in [0, 1)"),
        (["optim.beta2=nan"], "optim.beta2=nan must be in [0, 1)"),
        (["optim.min_lr_ratio=2"], "optim.min_lr_ratio=2.0 must be in [0, 1]"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps=-1 must be >= 0"),
        (["seed=-1"], "seed=-1 must be between 0 and 4294967295"),
        (["seed=4294967296"], "seed=4294967296 must be between 0 and 4294967295"),
        (["model.init_std=-1"], "model.init_std=-1.0 must be a finite number > 0"),
        (["model.init_std=nan"], "model.init_std=nan must be a finite number > 0"),
        (["model.rope_base=0"], "model.rope_base=0.0 must be a finite number > 0"),
        (["model.d_mlp=0"], "model.d_mlp=0 must be >= 1"),
        (["model.n_layers=0"], "model.n_layers=0 must be >= 1"),
        (["data.icl_late=500"], "set both target positions of the ICL score, or neither"),
        (["data.icl_early=5", "data.icl_late=500"], "need 0 <= early < late < 63"),
        (["data.icl_early=40", "data.icl_late=10"], "need 0 <= early < late < 63"),
        (["data.icl_band=-1"], "data.icl_band=-1 must be >= 0"),
        (["trainer.divergence_factor=-1"], "trainer.divergence_factor=-1.0 must be a finite"),
        (["trainer.gradient_clip_val=0"], "trainer.gradient_clip_val=0.0 must be a finite number"),
        (["trainer.devices=0"], "trainer.devices=0 must be >= 1"),
        (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0 must be >= 1"),
        (["data.batch_size=0"], "data.batch_size=0 must be positive"),
        (["experiment=fewshot_fast", "data.epsilon=-1"], "data.epsilon=-1.0 must be >= 0"),
        (
            ["clamps=prev_token", "experiment=fewshot_fast", "clamps.prev_token.heads=[9]"],
            "clamps.prev_token: head 9 does not exist",
        ),
        (
            ["experiment=fewshot_fast", "clamps=singh_match"],
            "clamps.one_head.heads: this clamp preset keeps or clamps the heads named_heads.kept",
        ),
        (
            ["experiment=fewshot_singh_cpu", "clamps=one_head", "named_heads.kept=[8]"],
            "clamps.one_head: head 8 does not exist",
        ),
    ],
)
def test_every_bad_value_fails_before_any_work_naming_key_and_fix(
    make_config, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["resume=sometimes"], "resume"),
        (["model.init=glorot"], "model.init"),
        (["replace=maybe"], "replace"),
        (["experiment=fewshot_fast", "data.icl_early=1"], r"data\.icl_early"),  # tokens only
    ],
)
def test_bad_keys_of_a_family_or_run_options_name_the_key(
    make_config, overrides: list[str], key: str
) -> None:
    with pytest.raises(ConfigCompositionException, match=key):
        make_config(*overrides)


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule=Schedule.cosine, min_lr_ratio=0.1)
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(50, OptimConfig(), 110) == 1.0


STUDIES = [f"singh_{fig}" for fig in ("fig4b", "fig5b", "fig6_classes", "fig6_labels")]


@pytest.mark.parametrize("study", [s + scale for s in STUDIES for scale in ("", "_cpu")])
def test_a_study_runs_its_whole_sweep_with_or_without_dash_m(study: str) -> None:
    """Run without -m, a study's experiment would train the unablated model under its sweep's
    condition names; it is a multirun in any case (Hydra reads hydra.mode from the config)."""
    cfg = compose_config([f"experiment={study}"], hydra=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert "clamps" in cfg.hydra.sweeper.params or "named_heads.kept" in cfg.hydra.sweeper.params


def test_a_choice_reads_as_its_value_in_a_condition_and_a_message(make_config) -> None:
    config = make_config(
        "experiment=fewshot_singh_cpu",
        "data.unseen_exemplars=train",
        "condition=${model.positional}_${model.init}_${data.features}_${data.unseen_exemplars}",
    )
    assert config.condition == "rope_lecun_gaussian_train"
    assert f"{config.model.positional}" == str(config.model.positional) == "rope"
