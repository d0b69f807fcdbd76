"""`ckptfs status`: the ckptfs mounts of the kernel's mount table, each with
what its daemon recorded in its state file (mounts.MountState).

The mount table is the truth of what is mounted; a state file only adds to
it, and only when it is the current user's own, or root asks: a state file
is read from a directory owned by the mount's user, and its pid counts only
while that process runs."""

from __future__ import annotations

import os
import stat

from . import mounts


def _mount_table() -> list[tuple[str, str, bool, int | None]]:
    """(mount point, source, writable, uid of the user who mounted) of every
    fuse.ckptfs mount this process can see."""
    found = []
    for entry in mounts.mount_table():
        if entry.fstype != "fuse.ckptfs":
            continue
        super_options = dict(o.partition("=")[::2] for o in entry.super_options)
        uid = super_options.get("user_id")
        found.append((entry.mountpoint, entry.source, "rw" in entry.options,
                      int(uid) if uid and uid.isdigit() else None))
    return found


def _state_dirs(uid: int | None) -> list[str]:
    """Where the daemon of a mount made by `uid` keeps its state, as far as
    this process may read it."""
    if uid is None or uid == os.geteuid():
        return [mounts.state_dir()]
    if os.geteuid() != 0:
        return []
    candidates = ["/run/ckptfs"] if uid == 0 else [f"/run/user/{uid}/ckptfs", f"/tmp/ckptfs-{uid}"]
    owned = []
    for path in candidates:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            owned.append(path)
    return owned


def _recorded(mountpoint: str, uid: int | None) -> dict:
    for directory in _state_dirs(uid):
        doc = mounts.MountState(mountpoint, directory).mounted()
        if doc.get("mountpoint") == mountpoint:
            return doc
    return {}


def ckptfs_mounts() -> list[dict]:
    """One object per mount, the schema of `ckptfs status --json`
    (docs/cli.md); what is unknown is None."""
    result = []
    for mountpoint, source, writable, uid in _mount_table():
        doc = _recorded(mountpoint, uid)
        pid = doc.get("pid")
        alive = mounts.process_alive(pid) if isinstance(pid, int) else None
        result.append({
            "mountpoint": mountpoint,
            "source": doc.get("source", source),
            "format": doc.get("format"),
            "writable": writable,
            "edits_waiting": doc.get("edits") if writable and doc else (False if not writable else None),
            "output": doc.get("output") if writable else None,
            "pid": pid if alive else None,
            "daemon_running": alive,
            "log": doc.get("log"),
            "uid": uid,
        })
    return result


def table(found: list[dict]) -> str:
    """What `ckptfs status` prints: a block per mount."""
    if not found:
        return "no ckptfs mounts"
    blocks = []
    for m in found:
        mode = "writable" if m["writable"] else "read-only"
        if m["edits_waiting"]:
            mode += ", edits waiting to be written (ckptfs commit or umount writes them)"
        elif m["writable"] and m["edits_waiting"] is False:
            mode += ", no edits"
        if m["daemon_running"] is False:
            daemon = f"gone: a stale mount (ckptfs umount {m['mountpoint']} clears it)"
        else:
            daemon = str(m["pid"]) if m["pid"] else "unknown (another user's mount)"
        rows = [("source", m["source"]), ("format", m["format"] or "unknown"), ("mode", mode), ("daemon", daemon)]
        if m["output"]:
            rows.insert(3, ("output", f"{m['output']} (written at unmount; the source stays as it is)"))
        if m["log"]:
            rows.append(("log", m["log"]))
        blocks.append("\n".join([m["mountpoint"]] + [f"  {name:<7} {value}" for name, value in rows]))
    return "\n".join(blocks)
