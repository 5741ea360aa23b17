"""`ihlab-train`'s library: the schema of its config, the LightningModule and its seed-ensemble
members, the optimizer, and `train()`, which claims a run directory, trains and records the
run's outcome."""
