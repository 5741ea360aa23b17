"""`ihlab-compare`'s library: read a study's run directories, pool seeds per condition, test
every condition against the baseline and write tables, plots and an HTML report."""
