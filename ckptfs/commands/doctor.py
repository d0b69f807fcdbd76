"""`ckptfs doctor`: what a mount needs on this machine, and the fix of each gap (ckptfs/doctor.py)."""

from __future__ import annotations

import json

from ..errors import CkptfsError
from . import install_helper
from .command import Command


def _arguments(parser) -> None:
    parser.add_argument("--allow-other", action="store_true",
                        help="mounts will use -o allow_other: user_allow_other in /etc/fuse.conf is needed")
    parser.add_argument("--source", metavar="URL",
                        help="check what this remote source needs (its packages, its credentials) as required")
    parser.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")


def _helper():
    """What install-helper would write for this ckptfs, and the command that writes it."""
    from .. import doctor

    try:
        ckptfs = install_helper.this_ckptfs()
    except CkptfsError:
        return doctor.Helper(f"/{install_helper.HELPER}", install_helper.HELPER_MARK, None,
                             "sudo ckptfs install-helper (as the ckptfs command pip installed)")
    return doctor.Helper(f"/{install_helper.HELPER}", install_helper.HELPER_MARK,
                         install_helper.helper_text(ckptfs), f"sudo {ckptfs} install-helper")


def run(args) -> int:
    from .. import doctor

    checks = doctor.run(doctor.Asked(args.allow_other, args.source), _helper())
    print(json.dumps(doctor.report(checks), indent=2) if args.json else doctor.text(checks))
    return 0 if doctor.can_mount(checks) else 1


COMMAND = Command(
    "doctor", "check what a mount needs on this machine, and say how to fix each gap",
    "Checks the fuse module, /dev/fuse, fusermount3, /etc/fuse.conf's user_allow_other, the pyfuse3 build (ckptfs's "
    "patched one or stock, and what stock costs), ckptfs's dependencies, ml_dtypes, the state and cache folders, "
    "the mount helper, the remote extra and the credentials found (named by where they are, never printed). One "
    "line each, with the command that fixes it; exit status 0 when a mount can work here, 1 when it cannot.",
    _arguments, run, printing=True,
)
