"""`ckptfs doctor`: what a mount needs on this machine, each need a small
check that says what it found and, where something is missing, the one
command that fixes it.

A check never mounts and never waits: it reads /proc, /sys and a few small
files (each read bounded), opens /dev/fuse and closes it (what libfuse does
first; nothing is mounted until a mount point is handed to the kernel), and
imports or looks up Python packages. Credentials are looked for where the
storage libraries look (the environment, ~/.aws/, the Hub's token file) and
named by where they were found, never by their value.

Statuses: "ok"; "note": nothing a mount needs, worth knowing (a feature
that is not set up); "warn": a mount works, but something costs or is
missing; "fail": a mount cannot work here until it is fixed.
"""

from __future__ import annotations

import configparser
import errno
import grp
import importlib
import importlib.util
import os
import pwd
import re
import shutil
import stat
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CkptfsError
from .humanize import human_size, plural
from .mount import mounts
from .sources.cachedir import default_cache_dir

STATUSES = ("ok", "note", "warn", "fail")
#: the most bytes read of a configuration file (/etc/fuse.conf, ~/.aws/credentials): they are a few lines
MAX_CONFIG = 1 << 20
#: the clone ckptfs runs from, if it runs from one (vendor/pyfuse3/install.sh, pyproject.toml's extras)
REPO = Path(__file__).resolve().parents[1]
#: module -> what pip installs it as: pyproject.toml's dependencies (tests/test_doctor.py keeps them equal)
DEPENDENCIES = {"trio": "trio", "yaml": "pyyaml", "numpy": "numpy", "rapidgzip": "rapidgzip"}
if sys.version_info < (3, 14):
    DEPENDENCIES["backports.zstd"] = "backports.zstd"
#: scheme -> the modules its store needs (sources/stores/), all from the remote extra, each pip's name too
REMOTE_SCHEMES = {"s3": ("fsspec", "s3fs"), "https": ("fsspec", "aiohttp"), "http": ("fsspec", "aiohttp"),
                  "hf": ("fsspec", "aiohttp")}
#: the FUSE device's numbers (the kernel's Documentation/admin-guide/devices.txt)
FUSE_DEVICE = (10, 229)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Check:
    """One need of a mount: what was found, and the one line that fixes it (None when ok)."""

    name: str
    status: str
    found: str
    fix: str | None = None


@dataclass(frozen=True)
class Asked:
    """What the user means to mount with: `-o allow_other`, a remote source."""

    allow_other: bool = False
    source: str | None = None

    @property
    def scheme(self) -> str | None:
        if self.source is None:
            return None
        match = _URL.match(self.source)
        if not match:
            raise CkptfsError(f"--source {self.source}: not a URL (s3://, https://, hf://, or another fsspec "
                              "protocol); a local checkpoint needs nothing remote")
        return match[1].lower()


@dataclass(frozen=True)
class Helper:
    """What `ckptfs install-helper` would write, as the command knows it."""

    path: str  # /sbin/mount.fuse.ckptfs
    mark: str  # the line that says install-helper wrote it
    expected: str | None  # the text it would write now (None: this ckptfs's command is not found)
    install: str  # the command that writes it


def can_mount(checks: list[Check]) -> bool:
    return not any(c.status == "fail" for c in checks)


def report(checks: list[Check]) -> dict:
    """The `--json` answer."""
    return {"ok": can_mount(checks), "checks": [asdict(c) for c in checks]}


def text(checks: list[Check]) -> str:
    """A line per check, its status first and aligned, the fix under it; then the verdict."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'FAIL' if c.status == 'fail' else c.status:<4}  {c.name:<{width}}  {c.found}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        lines.append(f"a mount cannot work here: {plural(failed, 'check')} failed")
    else:
        lines.append("a mount can work here" + (f" ({plural(warned, 'warning')})" if warned else ""))
    return "\n".join(lines)


def run(asked: Asked, helper: Helper) -> list[Check]:
    """Every check, in the order a mount meets its needs."""
    scheme = asked.scheme
    checks = [user(), fuse_module(), dev_fuse(), fusermount(), allow_other(asked.allow_other), pyfuse3(),
              dependencies(), ml_dtypes(), state_folder(), cache_folder(), mount_helper(helper)]
    if scheme is None:
        checks += [remote_extra(s, required=False) for s in ("s3", "https")]
        checks += [s3_credentials(required=False), hub_token(required=False)]
    else:
        checks.append(remote_extra(scheme, required=True))
        checks += [s3_credentials(required=True)] if scheme == "s3" else []
        checks += [hub_token(required=True)] if scheme == "hf" else []
    return checks


# ------------------------------------------------------------ the kernel and libfuse

def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def user() -> Check:
    uid = os.geteuid()
    if uid == 0:
        return Check("user", "ok", "root: mounts directly, and may raise the kernel's read-ahead")
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # fusermount3 names the user in the mount's options: it refuses
        return Check("user", "fail", f"uid {uid} has no passwd entry: fusermount3 refuses to mount for it (\"could "
                     "not determine username\")", f"sudo useradd --uid {uid} NAME, or run as a user the system knows")
    return Check("user", "ok", f"{name} (uid {uid}): mounts through fusermount3; the kernel's read-ahead stays as it "
                 "is (raising it needs root)")


def _read_bytes(path: str) -> bytes:
    """The first MAX_CONFIG bytes of a regular file. Opened without
    blocking and checked before reading: a named pipe (a secret manager's
    credentials, a FIFO over /etc/fuse.conf) would wait for a writer
    forever, a device would never end; either is an OSError here. A
    device that ends at once (/dev/null, the usual way to blank a config)
    is read as the empty file it is to fopen and fgets."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISCHR(mode) and _ends_at_once(fd):
            return b""
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        pieces, size = [], 0
        while size < MAX_CONFIG:  # /proc files come a page at a time
            piece = os.read(fd, MAX_CONFIG - size)
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)
    finally:
        os.close(fd)


def _ends_at_once(fd: int) -> bool:
    """Whether a device's first read (without blocking) says end of file."""
    try:
        return os.read(fd, 1) == b""
    except OSError:  # EAGAIN: a terminal with nothing typed, and the like
        return False


def _read_small(path: str) -> str:
    return _read_bytes(path).decode("utf-8", "replace")


def fuse_module() -> Check:
    try:
        known = any(line.split()[-1:] == ["fuse"] for line in _read_small("/proc/filesystems").splitlines())
    except OSError:
        known = False
    if known:
        return Check("fuse module", "ok", "fuse in /proc/filesystems")
    if os.path.isdir("/sys/module/fuse"):
        return Check("fuse module", "ok", "loaded (/sys/module/fuse)")
    return Check("fuse module", "fail", "the kernel knows no fuse file system (/proc/filesystems)",
                 "sudo modprobe fuse (in a container, the host loads it)")


def dev_fuse(path: str = "/dev/fuse") -> Check:
    """Opened read-write and closed, as libfuse opens it before mounting: that
    answers for the mode, the groups, ACLs and a container's device rules."""
    try:
        st = os.stat(path)
    except OSError as e:
        return Check(path, "fail", f"missing ({e.strerror})",
                     "sudo modprobe fuse (in a container: docker run --device /dev/fuse --cap-add SYS_ADMIN)")
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != FUSE_DEVICE:
        kind = f"character device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISCHR(st.st_mode) else \
            stat.filemode(st.st_mode)
        return Check(path, "fail", f"not the FUSE device ({kind}, not character device 10:229)",
                     f"sudo rm {path} && sudo mknod -m 0666 {path} c 10 229")
    group = _group_name(st.st_gid)
    mode = f"{stat.filemode(st.st_mode)} {_user_name(st.st_uid)}:{group}"
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK))
    except OSError as e:
        who = _user_name(os.geteuid())
        return Check(path, "fail", f"{mode}: {who} cannot open it ({e.strerror})", _dev_fuse_fix(path, st, group, e))
    return Check(path, "ok", f"{mode}, opened read-write")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _dev_fuse_fix(path: str, st: os.stat_result, group: str, error: OSError) -> str:
    if error.errno == 1:  # EPERM: a container's device rules, not the mode
        return "the container forbids the device: run it with --device /dev/fuse (docker, podman)"
    if st.st_mode & 0o060 == 0o060 and st.st_gid != 0:
        return f"sudo usermod -aG {group} {_user_name(os.geteuid())} (then log in again)"
    return f"sudo chmod 0666 {path} (Debian's udev rule makes it 0666 at boot: 50-udev-default.rules)"


def fusermount() -> Check:
    """Users other than root mount through it (set-user-ID root); every
    user unmounts through it (`ckptfs umount`)."""
    path = shutil.which("fusermount3", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin"]))
    if path is None:
        return Check("fusermount3", "fail", "not found", "sudo apt install fuse3")
    st = os.stat(path)
    if os.geteuid() != 0 and not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        return Check("fusermount3", "fail", f"{path} is not set-user-ID root ({stat.filemode(st.st_mode)}): "
                     "users other than root cannot mount", f"sudo chmod u+s {path}")
    return Check("fusermount3", "ok", path)


#: the longest line of /etc/fuse.conf fusermount3 reads, its newline included (fgets into 256 bytes)
FUSE_CONF_LINE = 255


@dataclass(frozen=True)
class FuseConf:
    """/etc/fuse.conf as fusermount3 (libfuse 3.14's read_conf) reads it."""

    options: tuple[str, ...]  # the lines it parses: cut at '#', stripped, blanks left out
    last: str | None  # a last line with no newline, stripped, which it ignores ("missing newline")
    unreadable: OSError | None  # why the file could not be read (None: read, or there is none)
    device: bool = False  # a device read as empty (a link to /dev/null): an append cannot change it


def fuse_conf(path: str = "/etc/fuse.conf") -> FuseConf:
    """fusermount3 reads the file as the user, a line at a time into 256
    bytes: a line that does not fit is skipped whole, a last line without
    a newline is ignored, and each line is cut at '#' and stripped."""
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        return FuseConf((), None, None)
    except OSError as e:
        return FuseConf((), None, e)
    if not data and not os.path.isfile(path):
        return FuseConf((), None, None, device=True)
    options, whole, start = [], True, 0
    while start < len(data):
        end = data.find(b"\n", start, start + FUSE_CONF_LINE)
        piece = data[start:end + 1] if end >= 0 else data[start:start + FUSE_CONF_LINE]
        start += len(piece)
        piece = piece.split(b"\0")[0]  # C's strlen
        if whole and piece.endswith(b"\n"):
            options.append(_strip_conf_line(piece))
        whole = piece.endswith(b"\n")
    tail = data[data.rfind(b"\n") + 1:]
    last = _strip_conf_line(tail) if tail else None
    if last == "user_allow_other" and len(tail) >= FUSE_CONF_LINE:
        last = "a line too long"  # fusermount3 would skip it with a newline too
    return FuseConf(tuple(o for o in options if o), last, None)


def _strip_conf_line(line: bytes) -> str:
    """libfuse's strip_line: cut at '#', C's white space stripped both ends."""
    return line.split(b"#")[0].strip(b" \t\n\v\f\r").decode("utf-8", "replace")


#: the errors opening /etc/fuse.conf after which fusermount3 goes on, as if it said nothing (libfuse 3.14's
#: read_conf); any other stops every mount by a user, and so does a file that is no regular file
FUSE_CONF_BEARABLE = (errno.EACCES, errno.ELOOP, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EOVERFLOW)
#: the append that adds user_allow_other on a line of its own
ALLOW_OTHER_FIX = "echo user_allow_other | sudo tee -a /etc/fuse.conf"
#: a file of its own in place of a link to a device (/dev/null), with user_allow_other
ALLOW_OTHER_FILE_FIX = "sudo rm /etc/fuse.conf && echo user_allow_other | sudo tee /etc/fuse.conf"


def allow_other(asked: bool) -> Check:
    """fusermount3 lets users other than root mount with `-o allow_other`
    only when /etc/fuse.conf says `user_allow_other`, on a line it reads;
    root needs nothing. A fix that turns user_allow_other on (every user's
    mounts open to every other user) is given only when `asked`."""
    conf = fuse_conf()
    limit = next((m[1] for o in conf.options if (m := re.match(r"mount_max\s*=\s*([-+]?\w+)", o))), None)
    mounts_max = f"; mount_max = {limit}" if limit else ""
    if os.geteuid() == 0:
        return Check("allow_other", "ok", f"root mounts with -o allow_other whatever /etc/fuse.conf says{mounts_max}")
    if "user_allow_other" in conf.options:
        return Check("allow_other", "ok", f"user_allow_other in /etc/fuse.conf{mounts_max}")
    status = "fail" if asked else "note"
    refused = "mounts with -o allow_other are refused"
    if conf.unreadable is not None and conf.unreadable.errno not in FUSE_CONF_BEARABLE:
        move = "sudo mv /etc/fuse.conf /etc/fuse.conf.bad"
        return Check("allow_other", "fail", f"/etc/fuse.conf: {conf.unreadable.strerror}: fusermount3 stops there "
                     "(waits on a pipe, exits on a folder or a read error): no user can mount",
                     f"{move} && {ALLOW_OTHER_FIX}" if asked else move)
    if conf.unreadable is not None:
        found = f"cannot read /etc/fuse.conf ({conf.unreadable.strerror}), as fusermount3 cannot: {refused}"
        return Check("allow_other", status, found, "sudo chmod 644 /etc/fuse.conf")
    if conf.last == "user_allow_other":
        return Check("allow_other", status, "user_allow_other is the last line of /etc/fuse.conf, with no newline "
                     f"after it: fusermount3 ignores that line, and {refused}",
                     "echo | sudo tee -a /etc/fuse.conf" if asked else None)
    found = f"no user_allow_other in /etc/fuse.conf{' (a device, read as empty)' if conf.device else ''}: {refused}"
    return Check("allow_other", status, found + mounts_max, _allow_other_fix(conf) if asked else None)


def _allow_other_fix(conf: FuseConf) -> str:
    """The line that adds user_allow_other where fusermount3 reads it."""
    if conf.device:
        return ALLOW_OTHER_FILE_FIX
    if conf.last is not None:  # the append must start on a line of its own
        return "printf '\\nuser_allow_other\\n' | sudo tee -a /etc/fuse.conf"
    return ALLOW_OTHER_FIX


# ------------------------------------------------------------ Python packages

#: where the fixes make a virtualenv when this Python is the system's (PEP 668)
VENV = "~/.venvs/ckptfs"


def _externally_managed() -> bool:
    """PEP 668: a distribution's own Python (Debian's /usr/bin/python3) marks
    its standard library EXTERNALLY-MANAGED, and pip refuses to install into
    it; a virtualenv made from it is not marked."""
    marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
    return sys.prefix == sys.base_prefix and os.path.isfile(marker)


def _install(packages: list[str]) -> str:
    """The pip line that installs `packages` for this Python; where pip may
    not (PEP 668), a virtualenv of ckptfs's own with `packages`, ckptfs
    and its dependencies (from its clone when it runs from one)."""
    if not _externally_managed():
        return f"{sys.executable} -m pip install {' '.join(packages)}"
    if any(p.startswith("-e ") for p in packages):  # the clone, with an extra
        wanted = packages
    else:
        base = [f"-e '{REPO}'"] if (REPO / "pyproject.toml").is_file() else list(DEPENDENCIES.values())
        wanted = base + [p for p in packages if p not in base]
    return (f"{sys.executable} -m venv {VENV} && {VENV}/bin/python -m pip install {' '.join(wanted)}, then run "
            f"{VENV}/bin/python -m ckptfs (pip may not install into {sys.executable}: PEP 668)")


def _extra(name: str, packages: list[str]) -> str:
    """The pip line that installs an extra of ckptfs: from its clone when it
    runs from one, else the extra's `packages` themselves."""
    if (REPO / "pyproject.toml").is_file():
        return _install([f"-e '{REPO}[{name}]'"])
    return _install(packages)


def _patched_build() -> str:
    """vendor/pyfuse3/install.sh, which pip-installs the build into the
    Python it is given: a virtualenv's where this Python is the system's."""
    python = f"{VENV}/bin/python" if _externally_managed() else sys.executable
    venv = f"{sys.executable} -m venv {VENV} && " if _externally_managed() else ""
    script = REPO / "vendor" / "pyfuse3" / "install.sh"
    if script.is_file():
        return f"{venv}bash {script} {python}"
    return f"in a clone of ckptfs: {venv}bash vendor/pyfuse3/install.sh {python}"


#: what each patch of vendor/pyfuse3 saves, as its README measures it: (attribute, what a stock build costs)
PATCHES = (
    ("NO_OPEN_FH_IS_INODE", "no zero-message opens (4 requests a folder walked, not 2; listings not cached)"),
    ("READ_INTERRUPTS", "no read interrupts (a reader killed in a stalled remote read waits up to twice "
                        "stall_timeout, and so does an unmount)"),
    ("FAST_LOOP", "no fast loop (about twice the daemon's CPU per request)"),
)


def _import(name: str):
    """The module, or the one line that says why it does not import: a
    broken install fails in its own ways (a missing libfuse3, an ABI that
    does not match), and doctor is what runs when something is broken."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):  # it, or its namespace package
            return "not installed"
        return f"does not import ({e})"
    except Exception as e:  # each is reported, in one line
        return f"does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'})"


def pyfuse3() -> Check:
    module = _import("pyfuse3")
    if isinstance(module, str):
        return Check("pyfuse3", "fail", module, _patched_build())
    version = getattr(module, "__version__", "?")
    if _release(version) < (3, 3):
        return Check("pyfuse3", "fail", f"{version}: ckptfs needs 3.3 or later", _patched_build())
    missing = [cost for attribute, cost in PATCHES if not getattr(module, attribute, False)]
    if not missing:
        return Check("pyfuse3", "ok", f"{version}, ckptfs's build: zero-message opens, read interrupts, fast loop")
    kind = "stock" if len(missing) == len(PATCHES) else "partly patched"
    return Check("pyfuse3", "warn", f"{version}, {kind}: " + "; ".join(missing), _patched_build())


def _release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"(\d+)(?:\.(\d+))?", version)
    return tuple(int(n) for n in numbers.groups() if n is not None) if numbers else (0,)


def dependencies() -> Check:
    """pyproject.toml's dependencies, each imported as the mount imports it."""
    problems = {package: _import(module) for module, package in DEPENDENCIES.items()}
    problems = {package: why for package, why in problems.items() if isinstance(why, str)}
    if problems:
        found = "; ".join(f"{package} {why}" for package, why in problems.items())
        return Check("dependencies", "fail", found, _install(list(problems)))
    return Check("dependencies", "ok", ", ".join(DEPENDENCIES.values()))


def ml_dtypes() -> Check:
    """A mount serves bfloat16 and float8 bytes as they are without it;
    reading them as numbers needs it (docs/dtypes.md)."""
    module = _import("ml_dtypes")
    if not isinstance(module, str):
        return Check("ml_dtypes", "ok", "np.load reads bfloat16 and float8 .npy files as their types")
    return Check("ml_dtypes", "warn", f"{module}: np.load refuses bfloat16 and float8 .npy files (their bytes "
                 "read as integers: docs/dtypes.md), diff compares them bit for bit, fp8 quantized views cannot "
                 "be dequantized", _install(["ml_dtypes"]))


# ------------------------------------------------------------ folders

def _where(path: str) -> str:
    """The file system a path is on, and the room left there."""
    device = os.stat(path).st_dev
    name = f"{os.major(device)}:{os.minor(device)}"
    kinds = [entry.fstype for entry in mounts.mount_table() if entry.device == name]
    return f"{kinds[-1] if kinds else 'unknown file system'}, {human_size(shutil.disk_usage(path).free)} free"


def _writable(path: str) -> None:
    """A file made and removed: OSError where the folder takes none (modes, a read-only file system)."""
    fd, name = tempfile.mkstemp(prefix=".ckptfs-doctor-", dir=path)
    os.close(fd)
    os.unlink(name)


def state_folder() -> Check:
    """Where mounts record themselves and keep their logs (mount/mounts.py):
    made as a mount makes it, then written to."""
    fix = "export XDG_RUNTIME_DIR (or TMPDIR) naming a folder of yours that you can write"
    try:
        path = mounts.state_dir()
        _writable(path)
    except mounts.StateFolderError as e:
        return Check("state folder", "fail", f"{e.path}: {e.reason}: no mount can record itself", fix)
    except CkptfsError as e:
        return Check("state folder", "fail", str(e), fix)
    except OSError as e:
        return Check("state folder", "fail", f"{e.filename}: {e.strerror}: no mount can record itself", fix)
    return Check("state folder", "ok", f"{path}: {_where(path)}")


def cache_folder() -> Check:
    """Gzip seek indexes, the remote disk cache and remote sources' edits
    go there: a mount works without it, rebuilding and fetching again."""
    fix = "export XDG_CACHE_HOME naming a folder you can write, or mount with --cache-dir PATH"
    named = default_cache_dir()
    if not os.path.isabs(named):  # no HOME, and a uid with no passwd entry: "~" stays as it is
        return Check("cache folder", "warn", f"{named}: no HOME and no home folder for this uid: a mount would make "
                     f"it below the folder it starts in ({os.path.abspath(named)} here)", fix)
    path = os.path.abspath(named)
    existing = path
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            return Check("cache folder", "warn", f"{path}: {existing} is in the way, not a folder", fix)
        existing = os.path.dirname(existing)
    try:
        _writable(existing)
    except OSError as e:
        return Check("cache folder", "warn", f"{path}: {existing}: {e.strerror}: gzip seek indexes are built again "
                     "at every mount, remote sources have no disk cache nor a place for their edits", fix)
    made = "" if existing == path else f" (to be made in {existing})"
    return Check("cache folder", "ok", f"{path}{made}: {_where(existing)}")


def mount_helper(helper: Helper) -> Check:
    """/sbin/mount.fuse.ckptfs: what `mount -t fuse.ckptfs`, fstab and systemd run."""
    name = "mount helper"
    try:
        written = _read_small(helper.path)
    except FileNotFoundError:
        return Check(name, "note", f"{helper.path} missing: mount -t fuse.ckptfs, fstab lines and systemd .mount "
                     "units cannot mount (ckptfs mount can)", helper.install)
    except OSError as e:
        return Check(name, "warn", f"{helper.path}: {e.strerror}", helper.install)
    if helper.mark not in written:
        return Check(name, "warn", f"{helper.path} was not written by ckptfs install-helper",
                     f"sudo rm {helper.path} && {helper.install}")
    runs = next((line.split()[1] for line in written.splitlines() if line.startswith("exec ") and line.split()[1:]),
                "?")
    if not os.access(helper.path, os.X_OK):
        return Check(name, "warn", f"{helper.path} is not executable", helper.install)
    if helper.expected is not None and written != helper.expected:
        return Check(name, "warn", f"{helper.path} runs {runs}, not this ckptfs", helper.install)
    return Check(name, "ok", f"{helper.path} runs {runs}")


# ------------------------------------------------------------ remote sources

def remote_extra(scheme: str, required: bool) -> Check:
    """The packages a scheme's store imports; any other scheme is fsspec's,
    with the package fsspec names for it."""
    name = f"{scheme}://"
    if scheme in REMOTE_SCHEMES:
        missing = [m for m in REMOTE_SCHEMES[scheme] if importlib.util.find_spec(m) is None]
        if not missing:
            return Check(name, "ok", "installed: " + ", ".join(REMOTE_SCHEMES[scheme]))
        return Check(name, "fail" if required else "note",
                     f"{', '.join(missing)} missing: {scheme}:// sources cannot be read", _extra("remote", missing))
    if importlib.util.find_spec("fsspec") is None:
        return Check(name, "fail", "fsspec missing: only s3://, https:// and hf:// have stores of ckptfs's own",
                     _extra("fsspec", ["fsspec"]))
    from fsspec.registry import known_implementations, registry

    if scheme in registry:
        return Check(name, "ok", f"fsspec's {scheme} (registered)")
    entry = known_implementations.get(scheme)
    if entry is None:
        return Check(name, "fail", "no store of ckptfs's and no fsspec protocol of that name")
    top = entry["class"].split(".")[0]
    if importlib.util.find_spec(top) is None:
        return Check(name, "fail", f"fsspec reads it with {top}, which is missing", _install([top]))
    return Check(name, "ok", f"through fsspec ({top}), read-only")


def _ini(path: str) -> configparser.ConfigParser | None:
    """An AWS-style INI file, or None where there is none or it does not parse."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(_read_small(path))
    except (OSError, configparser.Error):
        return None
    return parser


def _aws_files(profile: str) -> list[str]:
    """The credentials the shared files hold for `profile`, each named by its file and section."""
    home = os.path.expanduser("~")
    found = []
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials")
    parsed = _ini(credentials)
    if parsed is not None and parsed.has_option(profile, "aws_access_key_id"):
        found.append(f"[{profile}] in {credentials}")
    config = os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")
    section = profile if profile == "default" else f"profile {profile}"
    parsed = _ini(config)
    kinds = ("aws_access_key_id", "credential_process", "sso_session", "sso_start_url", "role_arn",
             "web_identity_token_file")
    if parsed is not None and parsed.has_section(section):
        kind = next((k for k in kinds if parsed.has_option(section, k)), None)
        if kind:
            found.append(f"[{section}] in {config} ({kind})")
    return found


def s3_credentials(required: bool) -> Check:
    """Where botocore would find credentials, in its order, without asking
    the network (an EC2 instance's role is not asked for)."""
    env = os.environ
    name = "s3 credentials"
    pair = [key for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if env.get(key)]
    if len(pair) == 1:  # botocore refuses half a pair
        have, lack = pair[0], ({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} - set(pair)).pop()
        return Check(name, "fail" if required else "warn", f"{have} in the environment without {lack}",
                     f"export {lack} as well, or unset {have}")
    found = ["AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"] if pair else []
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        found.append("a web identity (AWS_WEB_IDENTITY_TOKEN_FILE)")
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        found.append("the container's credentials endpoint (AWS_CONTAINER_CREDENTIALS_*)")
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    found += _aws_files(profile)
    endpoint = " (AWS_ENDPOINT_URL set)" if env.get("AWS_ENDPOINT_URL") else ""
    if found:
        return Check(name, "ok", "; ".join(found) + endpoint)
    return Check(name, "warn" if required else "note", f"none found for profile {profile} in the environment or "
                 f"~/.aws{endpoint}: public buckets only (an EC2 instance role is not asked)",
                 "aws configure, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


def hub_token(required: bool) -> Check:
    """ckptfs sends HF_TOKEN, to the Hub's own host only; the token file
    the Hub's own tools write is not read by ckptfs."""
    if os.environ.get("HF_TOKEN"):
        return Check("hf token", "ok", "HF_TOKEN in the environment")
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    token_file = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    if os.path.isfile(token_file):
        return Check("hf token", "warn" if required else "note", f"no HF_TOKEN; {token_file} holds a token, which "
                     "ckptfs does not read: public repositories only", f'export HF_TOKEN="$(cat {token_file})"')
    return Check("hf token", "warn" if required else "note", "no HF_TOKEN: public repositories only",
                 "export HF_TOKEN=... (a token from https://huggingface.co/settings/tokens)")
