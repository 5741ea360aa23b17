"""Statistics for small samples: two-group tests, learning times as time-to-event data, bootstrap
intervals and multiple-comparison corrections (`groups.py`), and paired per-item tests and
intervals (`paired.py`)."""
