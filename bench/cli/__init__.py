"""bench.cli."""
