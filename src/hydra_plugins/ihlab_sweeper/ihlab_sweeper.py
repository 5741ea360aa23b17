"""`ihlab-train`'s sweeper: Hydra's basic sweeper, whose jobs are the sweep points with their
seeds routed (ihlab.apps.multirun.routed_points): a point with `seeds=[...]` runs as one batched
job where batching pays, else as one job per seed. conf/train.yaml selects it.

Hydra finds sweepers only in the `hydra_plugins` namespace and imports every plugin module in
every Hydra app at start-up, so this module imports nothing of ihlab until a sweep starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override


class IhlabSweeper(BasicSweeper):
    def split_arguments(  # type: ignore[override]
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        """Hydra's batches of jobs, each point's seeds routed."""
        from ihlab.apps.multirun import routed_points  # a sweep started: see the module doc

        batches: Sequence[Sequence[list[str]]] = BasicSweeper.split_arguments(
            overrides, max_batch_size
        )
        assert self.config is not None
        return [routed_points(self.config, batch)[0] for batch in batches]
