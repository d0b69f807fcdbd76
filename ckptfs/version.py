"""The version ckptfs reports (--version, info.yaml, scan reports, the man page)."""

__version__ = "0.1.0"
