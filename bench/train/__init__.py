"""bench.train."""
