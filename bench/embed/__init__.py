"""bench.embed."""
