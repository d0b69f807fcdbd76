"""Checkpoints that run code when loaded (generate.py), how each is loaded
(load.py, run in a child), and safe checkpoints written by the libraries
that own their formats (safe.py): what `ckptfs scan` is tested and
benchmarked on."""
