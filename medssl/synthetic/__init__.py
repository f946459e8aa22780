"""Generated data built from real pixels that installed packages ship (for tests, demo, benchmarks)."""

from medssl.synthetic.multistain import DEFAULT_STAINS, write_multistain_cohort

__all__ = ["DEFAULT_STAINS", "write_multistain_cohort"]
