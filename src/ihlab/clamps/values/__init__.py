"""Clamp values, registered by name: `VALUES["zero"]` is the class of `value: zero`.

Every module of this package is imported here, so a new value kind is one new module (see
`base.py` for the interface).
"""

import importlib
import pkgutil

from ihlab.clamps.values.base import VALUES, ClampValue, Where, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["VALUES", "ClampValue", "Where", "register"]
