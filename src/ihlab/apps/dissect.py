"""`ihlab-dissect`: interventions on trained runs' own checkpoints, across training
(ihlab.dissect).

    ihlab-dissect 'runs=[outputs/induction_2l/<run>]'
    ihlab-dissect 'runs=[outputs/multirun/fewshot_fast/<time>]' checkpoints=last keep_one=false
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ihlab.apps.hydra_entry import hydra_app
from ihlab.dissect.run import dissect
from ihlab.dissect.spec import DissectConfig
from ihlab.errors import to_config
from ihlab.train.schema import register_configs

log = logging.getLogger("ihlab.dissect")

register_configs()  # the runs' configs use the train schema's resolvers
ConfigStore.instance().store(name="dissect_schema", node=DissectConfig)


@hydra_app("dissect", "dissect")
def main(cfg: DictConfig) -> dict[str, Any]:
    result = dissect(to_config(cfg, DissectConfig))
    log.info("wrote %s", ", ".join(result["files"].values()))
    return result


if __name__ == "__main__":
    main()
