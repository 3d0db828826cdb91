"""bench.search."""
