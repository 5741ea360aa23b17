"""`ihlab-probe`: induction heads of a pretrained model, ablated and knocked out (ihlab.probe).

ihlab-probe                                          # SmolLM2-135M-Instruct, offline, CPU
ihlab-probe model.source=meta-llama/Meta-Llama-3-8B model.device=cuda model.dtype=bfloat16
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ihlab.apps.hydra_entry import hydra_app
from ihlab.errors import to_config
from ihlab.probe.config import ProbeConfig
from ihlab.probe.run import run_probe

ConfigStore.instance().store(name="probe_schema", node=ProbeConfig)


@hydra_app("probe", "probe")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_probe(to_config(cfg, ProbeConfig), Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
