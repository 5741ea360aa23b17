"""The run-directory contract: what a run directory holds, who owns it, and how its files are
written (atomically) and read (weights-only for checkpoints). Every file name is in `files.py`."""
