"""The system side of a mount: the kernel's mount table, fusermount3, the
per-mount state file that lets `ckptfs umount` find and wait for its daemon."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass

from ..errors import CkptfsError


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (proc(5)), its paths as Python gives
    file names: bytes that are not UTF-8 as surrogate escapes (os.fsdecode)."""

    mountpoint: str
    fstype: str
    device: str  # "major:minor"
    source: str = ""
    options: tuple[str, ...] = ()  # the mount's own: rw, nosuid, ...
    super_options: tuple[str, ...] = ()  # the file system's: user_id=0, ...


def unescape_mountinfo(field: bytes) -> str:
    """The kernel writes space, tab, newline and backslash as octal escapes
    and every other byte as it is; the field is read as bytes, so a name that
    is not UTF-8 comes back as the path Python gives for it."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8) & 0xFF]), field))


def mount_table() -> list[MountEntry]:
    """The mounts this process sees, in the kernel's order (the last of
    mounts stacked on one point is the one in use). Read as bytes and split
    on ASCII spaces only: a name may hold any byte but the ones escaped."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    table = []
    for line in lines:
        fields = line.split(b" ")
        sep = fields.index(b"-", 6)
        table.append(MountEntry(
            unescape_mountinfo(fields[4]), os.fsdecode(fields[sep + 1]), os.fsdecode(fields[2]),
            unescape_mountinfo(fields[sep + 2]), tuple(os.fsdecode(fields[5]).split(",")),
            tuple(os.fsdecode(fields[sep + 3]).split(",")),
        ))
    return table


def mounted_at(mountpoint: str) -> MountEntry | None:
    """The mount whose mount point is exactly `mountpoint`, if any (the last
    one when mounts are stacked)."""
    found = None
    for entry in mount_table():
        if entry.mountpoint == mountpoint:
            found = entry
    return found


def raise_read_ahead(entry: MountEntry, kb: int) -> bool:
    """Let the kernel send larger read requests (root only); False if not allowed."""
    try:
        with open(f"/sys/class/bdi/{entry.device}/read_ahead_kb", "w") as f:
            f.write(str(kb))
        return True
    except OSError:
        return False


def unmount(mountpoint: str, lazy: bool = False) -> tuple[bool, str]:
    """`fusermount3 -u`; returns (done, fusermount's message)."""
    import subprocess  # only umount needs it; keeps `ckptfs mount` quick to start

    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return False, "fusermount3 not found (install Debian's fuse3 package)"
    return done.returncode == 0, done.stderr.strip()


def state_dir() -> str:
    """Where mounts keep their state, logs and locks: `/run/ckptfs` for root,
    else `$XDG_RUNTIME_DIR/ckptfs`, else `/tmp/ckptfs-UID`. It is made
    private (0700) and used only while it is a directory of this user's that
    nobody else can write into and not a link: in a shared /tmp another user
    could have made it first, to read or redirect what is written there."""
    for base in ("/run" if os.geteuid() == 0 else None, os.environ.get("XDG_RUNTIME_DIR")):
        if base and os.access(base, os.W_OK):
            return _private(os.path.join(base, "ckptfs"))
    return _private(os.path.join(os.environ.get("TMPDIR") or "/tmp", f"ckptfs-{os.geteuid()}"))


class StateFolderError(CkptfsError):
    """The state folder cannot be made (`ckptfs doctor` says it its own way)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: cannot make the state folder ({reason}); set XDG_RUNTIME_DIR (or TMPDIR) to a"
                         " folder of yours that you can write")
        self.path, self.reason = path, reason


def _private(path: str) -> str:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise StateFolderError(path, e.strerror) from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise CkptfsError(f"{path}: not a directory of this user's (a link, or another user's); remove it, or set"
                          " XDG_RUNTIME_DIR to a directory of your own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def escaped_path(path: str) -> str:
    """A file name for a mount point, as systemd names its mount units:
    `/mnt/my-model` becomes `mnt-my\\x2dmodel`, so each mount point has its
    own name and a person can tell which is which. A name too long for the
    kernel keeps its head and a hash of the whole."""
    out = []
    for i, byte in enumerate(os.fsencode(path.strip("/"))):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in "_" or (char == "." and i)):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    name = "".join(out) or "-"
    if len(name) > 160:
        name = name[:140] + "~" + hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return name


@dataclass(frozen=True)
class Record:
    """What `ckptfs status` shows of a mount beside the kernel's mount table."""

    source: str
    format: str
    writable: bool
    log: str  # the log file's path, or where else the log goes
    #: whether edits wait to be written (from the start with `mount --resume`)
    edits: bool = False
    #: where the edits are written at unmount (`mount --output`); None: over the source
    output: str | None = None


@dataclass(frozen=True)
class MountState:
    """Files that outlive the CLI: the daemon's pid, its exit status, its log,
    named after the mount point (`/run/ckptfs/mnt-model.log`)."""

    mountpoint: str
    #: the state directory (None: this user's, `state_dir()`)
    directory: str | None = None

    @property
    def stem(self) -> str:
        return os.path.join(self.directory or state_dir(), escaped_path(self.mountpoint))

    @property
    def log_file(self) -> str:
        return self.stem + ".log"

    def write(self, pid: int, record: Record) -> None:
        self._remove(".exit")
        self._remove(".discard")
        _write_json(self.stem + ".json", {"pid": pid, "mountpoint": self.mountpoint, **asdict(record)})

    def mounted(self) -> dict:
        """What `write` recorded: pid, mountpoint, the fields of Record and
        whether edits wait to be written ({} if nothing)."""
        return _read_json(self.stem + ".json") or {}

    def write_edits_waiting(self, waiting: bool) -> None:
        """Only the daemon writes this file, so reading and writing it back loses nothing."""
        doc = self.mounted()
        if doc and doc.get("edits") != waiting:
            _write_json(self.stem + ".json", {**doc, "edits": waiting})

    def write_exit(self, code: int, message: str = "") -> None:
        _write_json(self.stem + ".exit", {"exit": code, "message": message})

    def exit_message(self) -> str:
        doc = _read_json(self.stem + ".exit")
        return doc.get("message", "") if doc else ""

    def request_finish(self, discard: bool = False, backup: bool = False) -> None:
        """How the daemon ends its edits when unmounted (`umount --discard`, `--backup`)."""
        _write_json(self.stem + ".discard", {"discard": discard, "backup": backup})

    def finish_options(self) -> dict:
        return _read_json(self.stem + ".discard") or {}

    def write_progress(self, done: int, total: int) -> None:
        _write_json(self.stem + ".progress", {"done": done, "total": total})

    def progress(self) -> tuple[int, int] | None:
        doc = _read_json(self.stem + ".progress")
        return (doc["done"], doc["total"]) if doc else None

    def request_commit(self, force: bool = False, backup: bool = False) -> str:
        """Ask for a commit (`ckptfs commit`); returns the request's id."""
        request = f"{os.getpid()}-{time.monotonic_ns()}"
        _write_json(self.stem + ".commit", {"request": request, "force": force, "backup": backup})
        return request

    def commit_requested(self) -> dict | None:
        return _read_json(self.stem + ".commit")

    def write_commit_result(self, request: str, code: int, message: str) -> None:
        _write_json(self.stem + ".committed", {"request": request, "exit": code, "message": message})

    def commit_result(self, request: str) -> tuple[int, str] | None:
        doc = _read_json(self.stem + ".committed")
        return (doc["exit"], doc["message"]) if doc and doc.get("request") == request else None

    def pid(self) -> int | None:
        return self.mounted().get("pid")

    def exit_code(self) -> int | None:
        doc = _read_json(self.stem + ".exit")
        return doc["exit"] if doc else None

    def clear(self) -> None:
        for suffix in (".json", ".exit", ".discard", ".commit", ".committed", ".progress"):
            self._remove(suffix)

    def remove_log(self) -> None:
        self._remove(".log")

    def _remove(self, suffix: str) -> None:
        try:
            os.unlink(self.stem + suffix)
        except FileNotFoundError:
            pass


def _write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_exit(pid: int, timeout: float, progress=None) -> bool:
    """Wait for `pid` to exit; `progress()` is called while waiting."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        if progress is not None:
            progress()
        time.sleep(0.01)
    return True
