"""bench.adapters."""
