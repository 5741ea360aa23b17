"""Optogenetic clamps: activation sites held at chosen values, for chosen heads and positions, over
chosen windows of training steps (the spec in `spec.py`, values in `values/`, the engine that
builds one forward's hooks in `engine.py`)."""
