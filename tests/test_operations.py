"""The FUSE operations without a mount (as s3ql's t3 tests do), and the one
robustness case that needs a mount: a source that changes underneath."""

import errno
import os
from pathlib import Path

import numpy as np
import pyfuse3
import pytest
import torch
import trio
from safetensors.torch import save_file

from ckptfs.errors import CkptfsError
from ckptfs.formats import open_checkpoint
from ckptfs.fuse.operations import Operations, Ownership
from ckptfs.tree.checkpoint import VIEW_NAME
from ckptfs.tree.nodes import Content, Dir, File, LazyDir
from ckptfs.view import metaview


def _call(coro_fn, *args):
    return trio.run(coro_fn, *args)


@pytest.fixture(params=["zero-message opens", "opens answered"])
def ops(request, tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"enc.w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "enc.b": torch.ones(2)}, str(path))
    ckpt = open_checkpoint(str(path), str(tmp_path / "cache"))
    ckpt.root.add(VIEW_NAME, metaview.build(ckpt))

    class Exploding(Content):
        def read(self, offset, length):
            raise RuntimeError("boom")

    ckpt.root.add("broken.bin", File(Exploding([b"12345"])))
    ops = Operations(ckpt.root, Ownership.of(os.stat(path)))
    assert ops.zero_message_opens and ops.zero_message_opendirs  # pyfuse3 has vendor/pyfuse3's patch
    ops.zero_message_opens = ops.zero_message_opendirs = request.param == "zero-message opens"  # as with a stock pyfuse3
    return ops


def _open(ops, inode: int) -> int:
    """The handle reads of `inode` get: from open, or (a read-only mount
    with zero-message opens) the inode itself, after open said ENOSYS."""
    if not ops.zero_message_opens:
        return _call(ops.open, inode, os.O_RDONLY, None).fh
    with pytest.raises(pyfuse3.FUSEError) as err:
        _call(ops.open, inode, os.O_RDONLY, None)
    assert err.value.errno == errno.ENOSYS
    return inode


def _lookup(ops, *parts):
    inode = pyfuse3.ROOT_INODE
    for part in parts:
        inode = _call(ops.lookup, inode, part.encode(), None).st_ino
    return inode


def test_lookup_getattr_read(ops):
    inode = _lookup(ops, "enc", "w.npy")
    attr = _call(ops.getattr, inode, None)
    fh = _open(ops, inode)
    data = _call(ops.read, fh, 0, attr.st_size + 100)
    assert len(data) == attr.st_size
    header_len = data.index(b"\n") + 1
    assert np.frombuffer(data[header_len:], np.float32).tolist() == [0, 1, 2, 3, 4, 5]
    assert _call(ops.read, fh, attr.st_size, 10) == b""


def test_errno_at_the_boundary(ops):
    with pytest.raises(pyfuse3.FUSEError) as err:
        _call(ops.lookup, pyfuse3.ROOT_INODE, b"missing", None)
    assert err.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as err:
        _call(ops.getattr, 10**9, None)
    assert err.value.errno == errno.ENOENT
    inode = _lookup(ops, "enc", "w.npy")
    # with zero-message opens the kernel refuses writes itself (the mount is ro)
    refused = errno.ENOSYS if ops.zero_message_opens else errno.EROFS
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(pyfuse3.FUSEError) as err:
            _call(ops.open, inode, flags, None)
        assert err.value.errno == refused
    with pytest.raises(pyfuse3.FUSEError) as err:
        _call(ops.opendir, inode, None)
    assert err.value.errno == (errno.ENOSYS if ops.zero_message_opens else errno.ENOTDIR)
    with pytest.raises(pyfuse3.FUSEError) as err:
        _call(ops.getxattr, inode, b"user.nothing", None)
    assert err.value.errno == pyfuse3.ENOATTR


def test_an_unexpected_exception_becomes_eio_and_is_logged(ops, caplog):
    inode = _lookup(ops, "broken.bin")
    fh = _open(ops, inode)
    with pytest.raises(pyfuse3.FUSEError) as err:
        _call(ops.read, fh, 0, 5)
    assert err.value.errno == errno.EIO
    assert "boom" in caplog.text
    assert _call(ops.getattr, inode, None).st_size == 5  # the operations still answer


def test_xattrs(ops):
    inode = _lookup(ops, "enc", "b.npy")
    names = _call(ops.listxattr, inode, None)
    assert set(names) == {b"user.ckptfs." + k for k in (b"name", b"dtype", b"shape", b"source", b"range")}
    assert _call(ops.getxattr, inode, b"user.ckptfs.dtype", None) == b"float32"


def test_inodes_are_stable_and_unique(ops):
    first = [_lookup(ops, "enc", n) for n in ("w.npy", "b.npy")]
    assert first == [_lookup(ops, "enc", n) for n in ("w.npy", "b.npy")]
    numbered = [n for n in ops.nodes if n is not None]
    assert len({id(n) for n in numbered}) == len(numbered) == len(ops.nodes) - 1  # inode 0 is never given


def test_a_lazy_folder_is_filled_once_on_first_use_and_stat_needs_no_fill(tmp_path):
    fills = []

    def fill(folder):
        fills.append(folder)
        folder.subdir(["a", "b"]).add("x.bin", File(Content([b"xyz"])))
        folder.add("c", Dir())
        folder.add("top.bin", File(Content([b"1"])))

    root = Dir()
    root.add("lazy", LazyDir(fill, subdirs=2))
    ops = Operations(root, Ownership.of(os.stat(tmp_path)))
    lazy = _lookup(ops, "lazy")
    assert _call(ops.getattr, lazy, None).st_nlink == 4 and not fills  # a stat does not fill
    inode = _lookup(ops, "lazy", "a", "b", "x.bin")
    assert _call(ops.read, _open(ops, inode), 0, 10) == b"xyz"
    assert _call(ops.getattr, lazy, None).st_nlink == 4
    assert len(fills) == 1 and sorted(root.children["lazy"].children) == ["a", "c", "top.bin"]


def test_source_truncated_under_the_mount_gives_eio_not_a_dead_mount(mount, tmp_path):
    path = tmp_path / "shrinks.safetensors"
    save_file({"a": torch.ones(1000), "b": torch.zeros(1000)}, str(path))
    mnt = Path(mount(path, log_errors_expected=True))
    os.truncate(path, os.path.getsize(path) - 3000)
    with pytest.raises(OSError) as err:
        (mnt / "b.npy").read_bytes()
    assert err.value.errno == errno.EIO
    assert sorted(os.listdir(mnt)) == [".ckptfs", "a.npy", "b.npy"]
    assert "format: safetensors" in (mnt / ".ckptfs" / "info.yaml").read_text()
    log = next(tmp_path.glob("daemon*.log")).read_text()
    assert "truncated or replaced while mounted" in log


def test_uid_gid_and_masks_shown_as_mount_options_say(tmp_path):
    """`-o uid=,gid=,fmask=,dmask=` as parsed, applied to what getattr says:
    owner and group replaced, mode bits only ever taken away."""
    from ckptfs.fuse.operations import Shown
    from ckptfs.mount import options

    opts = options.parse(["ro,uid=1234,gid=567,umask=027,dmask=002"], options.MountOptions())
    assert (opts.uid, opts.gid, opts.fmask, opts.dmask) == (1234, 567, 0o027, 0o002)
    assert {"nosuid", "nodev"} == options.ALWAYS and "suid" not in options.parse(["suid,dev"], options.MountOptions()).fuse
    with pytest.raises(CkptfsError, match="octal mask"):
        options.parse(["umask=999"], options.MountOptions())
    path = tmp_path / "m.safetensors"
    save_file({"enc.w": torch.ones(2)}, str(path))
    os.chmod(path, 0o644)
    ckpt = open_checkpoint(str(path), str(tmp_path / "cache"))
    ops = Operations(ckpt.root, Ownership.of(os.stat(path)), shown=Shown(opts.uid, opts.gid, opts.fmask, opts.dmask))
    folder = _call(ops.getattr, _lookup(ops, "enc"), None)
    tensor = _call(ops.getattr, _lookup(ops, "enc", "w.npy"), None)
    assert (tensor.st_uid, tensor.st_gid, tensor.st_mode & 0o777) == (1234, 567, 0o444 & ~0o027)
    assert (folder.st_uid, folder.st_gid, folder.st_mode & 0o777) == (1234, 567, 0o555 & ~0o002)
