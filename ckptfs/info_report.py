"""What `ckptfs info --html/--png` shows, gathered into one plain dict that
ckptfs/report/info_page.py and info_png.py draw (they import nothing that
reads a checkpoint):

    {"info": info.summary's dict (the --json of `ckptfs info`),
     "outline": [{"path", "type", "size", and for a tensor's file "name", "dtype", "shape"}, ...]
                (the tree as `ckptfs ls -R --json` lists it, the `.ckptfs/` view left out),
     "stats": the dict of `ckptfs stats --json`, or None (`stats_note` says why),
     "stats_note": str | None,
     "scan": the dict of `ckptfs scan --json`, or, where it could not run (a URL, an unreadable
             file), {"verdict": "not scanned" | "error", "problems": [why]}}

What it reads: the metadata (as `ckptfs info`), the pickles (as `ckptfs
scan`), and for the stats a bounded sample of each tensor unless asked to
read every element.
"""

from __future__ import annotations

import os

from . import info, scan, tensor_stats
from .api import Checkpoint
from .compare import json_safe
from .errors import CkptfsError
from .tree.checkpoint import VIEW_NAME
from .tree.checkpoint import Checkpoint as Parsed


def outline(ckpt: Checkpoint) -> list[dict]:
    """Every file, folder and link of the tree but the `.ckptfs/` view, a
    tensor's file with its dotted name, dtype and shape."""
    tensors = {t.path: t for t in ckpt.tensors()}
    entries = []
    for entry in ckpt.walk():
        if entry.path == VIEW_NAME or entry.path.startswith(VIEW_NAME + "/"):
            continue
        row = {"path": entry.path, "type": entry.type, "size": entry.size}
        tensor = tensors.get(entry.path)
        if tensor is not None:
            row.update(name=tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
        entries.append(row)
    return entries


def scan_verdict(source: str) -> dict:
    """`ckptfs scan --json` of a local source; a remote one is not scanned
    (scan reads local files only), and what stops the scan is its problem."""
    if not os.path.exists(source):
        return {"verdict": "not scanned", "problems": [f"{source}: scan reads local files and folders only"]}
    try:
        return scan.scan(source).to_json()
    except CkptfsError as e:
        return {"verdict": "error", "problems": [str(e)]}


def gather(parsed: Parsed, sample: int | None, with_stats: bool = True) -> dict:
    """The info report of a parsed checkpoint; `sample`: elements per tensor
    the stats look at (None: every element); `with_stats` False: metadata only."""
    ckpt = Checkpoint(parsed)
    report = {"info": info.summary(parsed), "outline": outline(ckpt), "stats": None,
              "stats_note": "not computed (--no-stats)", "scan": scan_verdict(parsed.source_path)}
    if with_stats:
        report["stats"], report["stats_note"] = tensor_stats.compute(ckpt, sample=sample).as_dict(), None
    return json_safe(report)
