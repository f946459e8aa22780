"""Generated data built from real pixels that installed packages ship (for tests, demo, benchmarks)."""
