"""Where a run's numbers go while it trains: the metrics CSV logger, pictures made from arrays, the
W&B run and the W&B writer process, and the W&B dashboard built as code."""
