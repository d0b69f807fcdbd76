"""The life of a mount: the daemon (fork, readiness, signals), the system's
mount table and per-mount state files, and the `-o` options."""
