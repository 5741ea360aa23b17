"""Data families: infinite seeded training streams, fixed evaluation sets, probe batches, and what
each family measures (base.py). Every module of this package is imported here, so a family
registers itself just by being a file in it."""

from __future__ import annotations

import importlib
import pkgutil

from ihlab.data.base import FAMILIES, FAMILY_CONFIGS, DataConfig, DataFamily, make_family

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FAMILIES", "FAMILY_CONFIGS", "DataConfig", "DataFamily", "make_family"]
