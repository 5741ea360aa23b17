"""ihlab: a training-dynamics lab for in-context learning circuits."""

__version__ = "0.1.0"
