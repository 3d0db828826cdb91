"""bench.scoring."""
