"""Scale, not speed: a checkpoint of 100,000 tensors mounts, lists whole
and reads right, within a bound on the daemon's memory. Timings are the
benchmarks' business (bench/scale.py)."""

import json
import os
import random
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ckptfs.tree import names

from .conftest import CKPTFS, TIMEOUT, daemon_pid, is_mounted

COUNT = 100_000
#: the daemon's resident memory after a walk of every entry: measured
#: 204-207 MiB read-only and 224-228 MiB writable here (29 MiB of it the
#: interpreter and its imports), 357 and 405 MiB before issue 13
RSS_BOUND_MIB = 260


def _moe_names(count: int) -> list[str]:
    """Named as Mixture-of-Experts models name them: three tensors to a folder."""
    out = []
    for i in range(count):
        expert, proj = divmod(i, 3)
        layer, expert = divmod(expert, 64)
        out.append(f"model.layers.{layer}.mlp.experts.{expert}.{('down', 'gate', 'up')[proj]}_proj.weight")
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("scale") / "moe.safetensors"
    tensor_names = sorted(_moe_names(COUNT))
    header = {n: {"dtype": "F32", "shape": [2], "data_offsets": [8 * i, 8 * i + 8]} for i, n in enumerate(tensor_names)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = np.repeat(np.arange(COUNT, dtype=np.float32), 2)  # tensor i holds [i, i]
    path.write_bytes(struct.pack("<Q", len(text)) + text + data.tobytes())
    return path, tensor_names


def _daemon_rss_mib(mnt: Path) -> float:
    status = Path(f"/proc/{daemon_pid(mnt)}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.timeout(600)
@pytest.mark.parametrize("options", [("-o", "ro"), ()], ids=["read-only", "writable"])
def test_100k_tensors_list_whole_and_read_right_in_bounded_memory(checkpoint, mount, options):
    path, tensor_names = checkpoint
    mnt = mount(path, *options)
    listed = subprocess.run(["find", str(mnt), "-path", str(mnt / ".ckptfs"), "-prune", "-o", "-type", "f", "-print"],
                            capture_output=True, text=True, timeout=500, check=True).stdout.splitlines()
    expected = {"/".join(names.tensor_path(n)) for n in tensor_names}
    assert {os.path.relpath(p, mnt) for p in listed} == expected
    assert len(listed) == COUNT
    rss = _daemon_rss_mib(mnt)
    assert rss < RSS_BOUND_MIB, f"daemon holds {rss:.0f} MiB after listing {COUNT} tensors"

    reference = load_file(str(path))  # what safetensors itself reads
    for name in random.Random(0).sample(tensor_names, 300):
        served = np.load(mnt / "/".join(names.tensor_path(name)))
        assert served.dtype == reference[name].dtype and served.tobytes() == reference[name].tobytes()
    index = tensor_names.index("model.layers.1.mlp.experts.0.up_proj.weight")
    assert np.load(mnt / "model/layers/1/mlp/experts/0/up_proj/weight.npy").tolist() == [index, index]
    tsv = (mnt / ".ckptfs" / "tensors.tsv").read_text().splitlines()
    assert sorted(row.split("\t")[1] for row in tsv[1:]) == tensor_names
    assert is_mounted(mnt)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_more_shard_files_than_the_usual_open_files_limit(tmp_path, mnt):
    """1,100 `.distcp` files (a save of one file per item; 2,048 ranks write
    as many) held open under the usual soft limit of 1,024 open files."""
    import resource

    import torch
    import torch.distributed.checkpoint as dcp

    source = tmp_path / "many"
    dcp.save({f"w{i}": torch.full((2,), float(i)) for i in range(1100)},
             storage_writer=dcp.FileSystemWriter(str(source), single_file_per_rank=False), no_dist=True)
    assert len(list(source.glob("*.distcp"))) == 1100
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.fail(f"the hard limit of open files here is {hard}; the test needs room above 1,100")

    def ckptfs(*args):
        return subprocess.run([*CKPTFS, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))

    info = ckptfs("info", "--json", source)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["tensors"] == 1100
    scanned = ckptfs("scan", source)
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    mounted = ckptfs("mount", "-o", "ro", source, mnt)
    assert mounted.returncode == 0, mounted.stderr
    assert np.load(mnt / "w1099.npy").tolist() == [1099.0, 1099.0]
    assert ckptfs("umount", mnt).returncode == 0
