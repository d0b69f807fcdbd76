"""The stores ckptfs reads remote checkpoints from, one module each, and
the scheme registry (base.py). A new store is one module with a class of
the `Store` protocol and one line below; a protocol fsspec knows needs
neither (generic.py)."""

from . import http, hub, s3
from .base import register

register("s3", s3.S3Store)
register("http", http.HttpStore)
register("https", http.HttpStore)
register("hf", hub.HubStore)
