"""The hostile corpus: files (and folders) of a few kilobytes made to hang a mount, take
gigabytes or break more than their own part, each mounted by a daemon
under a memory cap (RLIMIT_AS, set in the child) and a timeout. The
contract (docs/security.md): a file is refused with one line naming it and
nothing stays mounted, or it is served, every file of the tree readable or
its own EIO, within the budgets. The cases are in tests/hostile/, a module
for each kind of input."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from .conftest import CKPTFS, FIXTURES, as_user, force_unmount, is_mounted, require_fuse, run_ckptfs, user_home
from .hostile import corpus
from .remote_servers import Counts, _Files, _Server

#: what a daemon may use: far above a real mount of these files (about 120 MB,
#: 1.3 GB of address space with rapidgzip's threads), far below what they ask for
MEMORY_CAP = 2 << 30
#: seconds a mount, or reading every file of it, may take
TIME_CAP = 60
READ_BYTES = 1 << 16


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _mount_capped(source: Path, mnt: Path, *options: str) -> subprocess.CompletedProcess:
    require_fuse()
    mnt.mkdir()
    return subprocess.run([*CKPTFS, "mount", str(source), str(mnt), "-o", "ro", *options], capture_output=True,
                          text=True, timeout=TIME_CAP, preexec_fn=_cap_memory)


def _read_everything(mnt: Path) -> dict[str, str]:
    """Read the start of every file of the mount, links left unfollowed;
    returns the files that answered EIO, with their `user.ckptfs.problem`."""
    failed = {}
    for folder, _, files in os.walk(mnt):
        for name in files:
            path = Path(folder, name)
            if path.is_symlink():
                continue
            try:
                with open(path, "rb") as f:
                    f.read(READ_BYTES)
            except OSError as e:
                assert e.errno == errno.EIO, f"{path}: {e}"
                failed[str(path.relative_to(mnt))] = os.getxattr(path, "user.ckptfs.problem").decode()
    return failed


CORPUS = corpus()


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_hostile_file_is_refused_in_one_line_or_served_within_budget(name, tmp_path):
    case = CORPUS[name]
    source = case.make(tmp_path)
    before = _contents(source)
    mnt = tmp_path / "mnt"
    try:
        done = _mount_capped(source, mnt, *case.options)
        if case.outcome == "refused":
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1, done.stderr
            assert lines[0].startswith(f"ckptfs: {source}") and "internal error" not in lines[0], lines[0]
            assert case.says is None or case.says in lines[0], lines[0]
            assert not is_mounted(mnt)
        else:
            assert done.returncode == 0, done.stderr
            failed = _read_everything(mnt)
            assert sorted(failed) == sorted(case.broken), failed
            if case.says is not None:
                assert any(case.says in p.read_text() for p in mnt.rglob("*.yaml") if not p.is_symlink())
            if case.check is not None:
                case.check(mnt, source)
            assert run_ckptfs("umount", mnt, timeout=TIME_CAP).returncode == 0
        assert _contents(source) == before
    finally:
        force_unmount(mnt)


def _contents(source: Path) -> bytes | dict[str, bytes]:
    """A file's bytes; a folder's files and links (not followed), by relative path."""
    if not source.is_dir():
        return source.read_bytes()
    found = {}
    for folder, dirs, files in os.walk(source):
        for name in files + [d for d in dirs if Path(folder, d).is_symlink()]:
            path = Path(folder, name)
            if path.is_symlink():
                found[str(path.relative_to(source))] = os.readlink(path).encode()
            else:  # a FIFO is not read: nobody writes to it
                found[str(path.relative_to(source))] = path.read_bytes() if path.is_file() else b"(not a regular file)"
    return found


def test_a_shared_graph_is_shown_as_a_graph(tmp_path, mount):
    mnt = mount(CORPUS["30 levels of a list held twice"].make(tmp_path), "-o", "ro")
    assert os.readlink(mnt / "a" / "1") == "0" and os.readlink(mnt / "a" / "0" / "0" / "1") == "0"
    leaf = mnt / "a" / Path(*["1"] * 30) / "0.npy"  # through 30 links, to the one tensor
    assert leaf.read_bytes() == (mnt / "a" / Path(*["0"] * 30) / "0.npy").read_bytes()
    folders = [f for f, _, _ in os.walk(mnt / "a")]
    assert len(folders) == 31


# -- names from a remote listing: kept inside the folder they are written to

HOSTILE_NAMES = {"../../climbed.txt": b"climbed", "/absolute.txt": b"absolute", "a//b.txt": b"doubled",
                 "a/./dot.txt": b"dot"}
#: where each is kept (in the mount, and under the output folder): its offending parts escaped
KEPT_AS = {"../../climbed.txt": "%2E%2E/%2E%2E/climbed.txt", "/absolute.txt": "%/absolute.txt",
           "a//b.txt": "a/%/b.txt", "a/./dot.txt": "a/%2E/dot.txt"}


def _written_inside(tmp_path: Path, mount, url: str) -> None:
    """`url` mounted with a local --output folder two levels down: the
    mount shows every file under its kept name, the output folder holds them
    and the edit, and nothing was made anywhere else below the test's folder."""
    from ckptfs.tree import names

    out = tmp_path / "deep" / "er" / "out"
    out.parent.mkdir(parents=True)
    mnt = mount(url, "--output", out)
    for name, data in HOSTILE_NAMES.items():
        shown = mnt.joinpath(*names.file_parts(KEPT_AS[name]))
        assert shown.read_bytes() == data, name
    (mnt / "note.txt").write_text("edited")
    done = run_ckptfs("umount", mnt, "--timeout", "60")
    assert done.returncode == 0, done.stderr
    for name, data in HOSTILE_NAMES.items():
        assert out.joinpath(KEPT_AS[name]).read_bytes() == data, name
    assert (out / "note.txt").read_text() == "edited"
    made = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert {p for p in made if p.name.endswith(".txt")} == set(), made


def test_an_s3_prefix_whose_keys_climb_out_is_written_inside_its_output(tmp_path, mount, monkeypatch):
    from safetensors.numpy import save

    from .remote_servers import S3Server

    s3 = S3Server()
    try:
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        client = s3.client()
        client.create_bucket(Bucket="ckpts")
        client.put_object(Bucket="ckpts", Key="m/model.safetensors", Body=save({"w": np.ones(3, dtype=np.float32)}))
        for name, data in HOSTILE_NAMES.items():
            client.put_object(Bucket="ckpts", Key="m/" + name, Body=data)
        client.put_object(Bucket="ckpts", Key="m/empty/", Body=b"")  # a folder marker, as "Create folder" makes
        listed = run_ckptfs("ls", "-R", "s3://ckpts/m/")  # a key starting with '/' made every command recurse
        assert listed.returncode == 0 and "climbed.txt" in listed.stdout, listed.stderr
        assert not any(line.startswith("empty") for line in listed.stdout.split()), listed.stdout
        _written_inside(tmp_path, mount, "s3://ckpts/m/")
    finally:
        s3.close()


class _HostileHub(_Files):
    """A Hub stand-in whose listing names files as no real Hub does (`../x`,
    `/x`, `a//b`): each is served, with ranges, at any URL that ends in its
    last part, since a client folds `..` away before it asks."""

    listed: dict[str, str]  # a name in the listing -> its file under root

    def do_GET(self) -> None:
        if self.path.startswith("/api/"):
            siblings = [{"rfilename": name, "size": (self.root / file).stat().st_size}
                        for name, file in self.listed.items()]
            body = json.dumps({"sha": "0" * 40, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        leaf = unquote(self.path.rpartition("/")[2])
        self.path = "/" + next((f for n, f in self.listed.items() if n.rpartition("/")[2] == leaf), "missing")
        super().do_GET()


def test_a_hub_whose_listing_climbs_out_is_written_inside_its_output(tmp_path, mount, monkeypatch):
    from safetensors.numpy import save

    served = tmp_path / "served"
    served.mkdir()
    (served / "model.safetensors").write_bytes(save({"w": np.ones(3, dtype=np.float32)}))
    listed = {"model.safetensors": "model.safetensors"}
    for n, (name, data) in enumerate(HOSTILE_NAMES.items()):
        (served / str(n)).write_bytes(data)
        listed[name] = str(n)
    handler = type("Hub", (_HostileHub,), {"root": served, "counts": Counts(), "listed": listed})
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        info = run_ckptfs("info", "hf://org/model")
        assert info.returncode == 0, info.stderr
        _written_inside(tmp_path, mount, "hf://org/model")
    finally:
        server.shutdown()
        server.server_close()


# -- what another user plants beside a source: refused in one line, never followed or resumed

@pytest.fixture
def sticky(shared_dir):
    """A folder anyone may create names in, as /tmp (mode 1777), with root's checkpoint in it."""
    folder = shared_dir / f"sticky-{os.urandom(4).hex()}"
    folder.mkdir()
    folder.chmod(0o1777)
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", folder / "model.nemo")
    return folder


@pytest.mark.parametrize("planted", [".model.nemo.ckptfs.lock", ".model.nemo.ckptfs"])
def test_a_link_planted_beside_a_source_is_never_followed(users, shared_dir, sticky, tmp_path, planted):
    attacker = users[1]
    source = sticky / "model.nemo"
    before = source.read_bytes()
    target = shared_dir / f"nologin-{os.urandom(4).hex()}"  # where root may write and the attacker may not
    assert as_user(attacker, ["ln", "-s", target, sticky / planted]).returncode == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = run_ckptfs("mount", source, mnt)
        assert done.returncode == 0 and done.stderr.count("\n") == 1, done.stderr
        assert f"{sticky / planted}: a symbolic link" in done.stderr and "mounted read-only" in done.stderr
        with pytest.raises(OSError) as refused:
            (mnt / "model_config.yaml").write_text("a: 1\n")
        assert refused.value.errno == errno.EROFS
        assert run_ckptfs("umount", mnt).returncode == 0
        for command in (["recover", source, "--resume"], ["recover", source, "--discard"]):
            done = run_ckptfs(*command)
            assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
            assert str(sticky / planted) in done.stderr and "symbolic link" in done.stderr
        assert not target.exists() and (sticky / planted).is_symlink() and source.read_bytes() == before
    finally:
        force_unmount(mnt)


def test_an_overlay_forged_by_another_user_is_never_resumed(users, sticky, tmp_path):
    """A complete overlay as ckptfs writes one (its state from a plain stat
    of the source, a journal with valid checksums, a file of the attacker's
    choice): root's mount does not offer to resume it, and neither mount
    --resume nor recover writes it into the checkpoint."""
    attacker = users[1]
    source = sticky / "model.nemo"
    before = source.read_bytes()
    forge = (
        "import json, os, zlib, sys\n"
        "src = sys.argv[1]; st = os.stat(src)\n"
        "ov = os.path.join(os.path.dirname(src), '.model.nemo.ckptfs')\n"
        "os.makedirs(os.path.join(ov, 'data'), 0o700)\n"
        "json.dump({'source': src, 'dev': st.st_dev, 'ino': st.st_ino, 'size': st.st_size,"
        " 'mtime_ns': st.st_mtime_ns, 'ignored': []}, open(os.path.join(ov, 'state.json'), 'w'))\n"
        "open(os.path.join(ov, 'data', '0'), 'wb').write(b'planted')\n"
        "body = json.dumps({'op': 'create', 'path': 'planted.txt', 'file': 0}, separators=(',', ':')).encode()\n"
        "open(os.path.join(ov, 'journal'), 'wb').write(b'%08x %s\\n' % (zlib.crc32(body), body))\n"
    )
    forged = as_user(attacker, ["/usr/bin/python3", "-c", forge, source])
    assert forged.returncode == 0, forged.stderr
    overlay = sticky / ".model.nemo.ckptfs"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = run_ckptfs("mount", source, mnt)
        assert done.returncode == 0 and done.stderr.count("\n") == 1, done.stderr
        assert f"{overlay}: belongs to user {attacker.pw_name}" in done.stderr and "recover" not in done.stderr
        assert not (mnt / "planted.txt").exists()
        assert run_ckptfs("umount", mnt).returncode == 0
        for command in (["mount", source, mnt, "--resume"], ["recover", source, "--resume"],
                        ["recover", source, "--discard"]):
            done = run_ckptfs(*command)
            assert done.returncode == 1 and done.stderr.count("\n") == 1, (command, done.stderr)
            assert f"{overlay}: belongs to user {attacker.pw_name}" in done.stderr
            assert not is_mounted(mnt)
        assert source.read_bytes() == before and (overlay / "journal").exists()
    finally:
        force_unmount(mnt)


def _folder_of(owner, path: Path) -> Path:
    """A Hugging Face folder owned by `owner`: a tensor, config.json, sub/x.json."""
    from safetensors.numpy import save_file

    (path / "sub").mkdir(parents=True)
    save_file({"w": np.ones(2, dtype=np.float32)}, path / "model.safetensors")
    (path / "config.json").write_text('{"a": 1}')
    (path / "sub" / "x.json").write_text('{"x": 1}')
    for p in [path, *path.rglob("*")]:
        os.chown(p, owner.pw_uid, owner.pw_gid)
    return path


def test_a_link_put_in_a_folder_while_root_repacks_it_changes_nothing_outside(users, shared_dir, tmp_path):
    """The folder's owner swaps a file for a link to a file only root may
    touch while root has it mounted: the repack neither links that file in,
    nor gives it away, nor opens it up."""
    owner = users[1]
    folder = _folder_of(owner, user_home(shared_dir, owner) / "m1")
    victim = shared_dir / f"victim-{os.urandom(4).hex()}"
    victim.write_text("root's")
    victim.chmod(0o600)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        assert run_ckptfs("mount", folder, mnt).returncode == 0
        (mnt / "config.json").write_text('{"a": 2}')
        swapped = as_user(owner, ["sh", "-c", f"rm {folder}/sub/x.json && ln -s {victim} {folder}/sub/x.json"])
        assert swapped.returncode == 0, swapped.stderr
        done = run_ckptfs("umount", mnt, "--timeout", "60")
        assert done.returncode == 0, done.stderr
    finally:
        force_unmount(mnt)
    st = victim.stat()
    assert (st.st_uid, st.st_mode & 0o7777, st.st_nlink, victim.read_text()) == (0, 0o600, 1, "root's")
    kept = folder / "sub" / "x.json"  # the file the mount showed, from the descriptor it read
    assert not kept.is_symlink() and kept.read_text() == '{"x": 1}' and kept.stat().st_uid == owner.pw_uid
    assert (folder / "config.json").read_text() == '{"a": 2}' and (folder / "config.json").stat().st_uid == owner.pw_uid
