"""`ihlab-dashboard`: the W&B workspace and report for watching phase changes, as code
(ihlab.tracking.dashboard).

    ihlab-dashboard entity=my-team                          # project ihlab
    ihlab-dashboard entity=my-team project=ihlab 'config_keys=[condition,data.n_labels]'
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ihlab.apps.hydra_entry import hydra_app
from ihlab.errors import to_config
from ihlab.tracking.dashboard import DashboardConfig, build_report, build_workspace

ConfigStore.instance().store(name="dashboard_schema", node=DashboardConfig)


@hydra_app("dashboard", "dashboard")
def main(cfg: DictConfig) -> None:
    config = to_config(cfg, DashboardConfig)
    for view in (build_workspace(config), build_report(config)):
        view.save()  # the only step that talks to W&B (needs `wandb login`); prints the URL


if __name__ == "__main__":
    main()
