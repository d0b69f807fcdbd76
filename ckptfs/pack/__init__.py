"""What a format's writer writes through, below every format: the changes
it is handed (which paths differ, which files were edited), output sinks,
the atomic swap, a new folder filled through descriptors, uploads."""
