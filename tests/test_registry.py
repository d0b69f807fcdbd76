"""Adding a format is one module and one line of the registry
(docs/architecture.md): every module of ckptfs/formats that ends with a
FORMAT is tried by detection, once, and nothing else names the formats."""

from __future__ import annotations

import importlib
import pkgutil

import ckptfs.formats as formats
from ckptfs.formats import DIRECTORY_FORMATS, FILE_FORMATS
from ckptfs.formats.base import DirectoryFormat, FileFormat


def test_every_format_module_is_in_the_registry_once():
    defined = []
    for info in pkgutil.walk_packages(formats.__path__, formats.__name__ + "."):
        fmt = getattr(importlib.import_module(info.name), "FORMAT", None)
        if isinstance(fmt, (FileFormat, DirectoryFormat)):
            defined.append(fmt)
    registered = list(FILE_FORMATS) + list(DIRECTORY_FORMATS)
    assert sorted(f.name for f in defined) == sorted(f.name for f in registered)
    assert len({id(f) for f in registered}) == len(registered)
    assert {"gguf", "numpy .npz", "deepspeed zero", "sharded torch.save (FSDP1)"} <= {f.name for f in registered}
