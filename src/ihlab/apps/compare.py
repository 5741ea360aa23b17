"""`ihlab-compare`: compare conditions across run directories (ihlab.compare.study).

ihlab-compare runs=[outputs/multirun/fewshot_fast/<time>]
ihlab-compare runs=[DIR,DIR] group_by=data.n_labels baseline=5 metric=eval/heldout_pairs/loss
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ihlab.apps.hydra_entry import hydra_app
from ihlab.compare.study import CompareConfig, compare
from ihlab.errors import to_config
from ihlab.runs.naming import register_resolvers

log = logging.getLogger("ihlab.compare")


def register_compare_config() -> None:
    """Put CompareConfig where conf/compare.yaml finds it, and the run-directory resolvers a
    run's unresolved `.hydra/config.yaml` uses."""
    register_resolvers()
    ConfigStore.instance().store(name="compare_schema", node=CompareConfig)


register_compare_config()


@hydra_app("compare", "compare")
def main(cfg: DictConfig) -> dict[str, Any]:
    config = to_config(cfg, CompareConfig)
    try:
        result = compare(config.runs, config.group_by, config.baseline, config.metric, config.out)
    except ValueError as err:
        raise SystemExit(f"ihlab-compare: {err}") from None
    log.info(Path(result["files"]["comparison.md"]).read_text())
    log.info("wrote %s", ", ".join(result["files"].values()))
    return result


if __name__ == "__main__":
    main()
