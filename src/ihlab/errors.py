"""Errors the lab raises for bad input: each names the problem and the fix."""


class ConfigError(ValueError):
    """A config value is wrong; the message names the key (e.g. `model.d_model`) and the fix."""
