"""Fuzz harnesses: one target per parser (targets.py), seeds from the
samples (corpus.py), short runs in the test suite (tests/test_fuzz.py) and
long ones behind `make fuzz` (run.py)."""
