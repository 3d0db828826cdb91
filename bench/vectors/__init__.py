"""bench.vectors."""
