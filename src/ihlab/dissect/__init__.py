"""`ihlab-dissect`'s library: take trained runs apart. Every chosen checkpoint of every run is
evaluated on the run's own evaluation sets, intact and under each intervention (any clamp the
lab knows, applied at evaluation only, and generated families: every head ablated alone, one
head kept per layer, whole layers ablated), and every metric the run's data family defines is
reported with its change from the intact model and intervals (over sequences within a run, over
seeds across runs)."""
