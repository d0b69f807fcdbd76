"""systemd: the notify protocol against a socket the test makes as
$NOTIFY_SOCKET (what systemd does for a Type=notify unit), the journal's
log format, and the shipped units through `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import CKPTFS, FIXTURES, REPO, TIMEOUT, is_mounted, reap, run_ckptfs


def _notify_socket(tmp_path: Path, abstract: bool) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"@ckptfs-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name[1:])
    else:
        name = str(tmp_path / "notify")
        sock.bind(name)
    sock.settimeout(TIMEOUT)
    return sock, name


def _messages_until(sock: socket.socket, field: str, seen: list[dict]) -> dict:
    """Receive messages (each a dict of its NAME=value lines) into `seen`
    until one holds `field`; returns that one."""
    while True:
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        seen.append(fields)
        if field in fields:
            return fields


@pytest.fixture
def nemo(tmp_path):
    path = tmp_path / "model.nemo"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", path)
    return path


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_type_notify_ready_status_and_clean_stop(nemo, mnt, tmp_path, abstract):
    """READY=1 once the mount answers; STOPPING=1 on SIGTERM; STATUS= lines
    with the repack's progress; exit 0 with the edit written back."""
    sock, name = _notify_socket(tmp_path, abstract)
    stderr = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen(CKPTFS + ["mount", "--foreground", str(nemo), str(mnt)], stderr=stderr,
                            env=dict(os.environ, NOTIFY_SOCKET=name))
    seen: list[dict] = []
    try:
        ready = _messages_until(sock, "READY", seen)
        assert ready["READY"] == "1" and f"serving {nemo} at {mnt} (writable)" in ready["STATUS"]
        assert is_mounted(mnt) and "model_config.yaml" in os.listdir(mnt)  # usable when READY arrives
        config = mnt / "model_config.yaml"
        config.write_text(config.read_text() + "# tuned\n")
        proc.send_signal(signal.SIGTERM)
        stopping = _messages_until(sock, "STOPPING", seen)
        assert stopping["STOPPING"] == "1" and "SIGTERM" in stopping["STATUS"]
        assert proc.wait(timeout=TIMEOUT) == 0
        sock.settimeout(0.5)
        try:
            while True:
                _messages_until(sock, "never", seen)
        except TimeoutError:
            pass
    finally:
        reap(proc)
        sock.close()
        stderr.close()
    statuses = [m["STATUS"] for m in seen if "STATUS" in m]
    progress = [m for m in seen if m.get("STATUS", "").startswith("writing the checkpoint:")]
    assert progress and all(m["EXTEND_TIMEOUT_USEC"] == "120000000" for m in progress), statuses
    assert statuses[-1].startswith(f"{nemo}: written with 1 changed path"), statuses
    with tarfile.open(nemo) as tf:
        assert tf.extractfile("./model_config.yaml").read().endswith(b"# tuned\n")
    assert not is_mounted(mnt)


def test_unmounted_from_outside_says_stopping_and_exits_0(nemo, mnt, tmp_path):
    sock, name = _notify_socket(tmp_path, abstract=False)
    proc = subprocess.Popen(CKPTFS + ["mount", "--foreground", "-o", "ro", str(nemo), str(mnt)],
                            stderr=subprocess.DEVNULL, env=dict(os.environ, NOTIFY_SOCKET=name))
    seen: list[dict] = []
    try:
        assert "(read-only)" in _messages_until(sock, "READY", seen)["STATUS"]
        assert subprocess.run(["fusermount3", "-u", str(mnt)], timeout=TIMEOUT).returncode == 0
        assert _messages_until(sock, "STOPPING", seen)["STATUS"] == "unmounted"
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        reap(proc)
        sock.close()


def test_a_background_mount_sends_nothing(nemo, mnt, tmp_path):
    """Only a foreground mount is the main process of a Type=notify unit; the
    daemon of a background mount would be a stranger to systemd."""
    sock, name = _notify_socket(tmp_path, abstract=False)
    sock.settimeout(1)
    try:
        done = subprocess.run(CKPTFS + ["mount", "-o", "ro", str(nemo), str(mnt)], capture_output=True, text=True,
                              timeout=TIMEOUT, env=dict(os.environ, NOTIFY_SOCKET=name))
        assert done.returncode == 0, done.stderr
        assert run_ckptfs("umount", mnt).returncode == 0
        with pytest.raises(TimeoutError):
            sock.recv(4096)
    finally:
        sock.close()


def test_logs_in_the_journals_format_when_stderr_is_the_journal(nemo, mnt, tmp_path):
    """systemd sets $JOURNAL_STREAM to the device:inode of the stream it
    gave as stderr; lines then carry sd-daemon priority prefixes."""
    err = tmp_path / "journal"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen(CKPTFS + ["mount", "-f", "-o", "ro", str(nemo), str(mnt)], stderr=f, env=env)
        try:
            deadline = time.monotonic() + TIMEOUT
            while "mounted at" not in err.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert run_ckptfs("umount", mnt).returncode == 0
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            reap(proc)
    lines = err.read_text().splitlines()
    assert f"<6>ckptfs.mount.daemon: mounted at {mnt}" in lines, lines
    assert all(line.startswith(("<3>", "<4>", "<6>", "<7>")) for line in lines), lines


def test_a_refused_mount_is_logged_and_said_once(tmp_path, mnt):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    log = tmp_path / "log"
    done = run_ckptfs("mount", bad, mnt, "--log-file", log)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and str(bad) in done.stderr
    assert "ERROR" in log.read_text() and "mount refused" in log.read_text()
    foreground = run_ckptfs("mount", "-f", bad, mnt)  # its log is stderr: said there once, as a log line
    assert foreground.returncode == 1 and foreground.stderr.count("\n") == 1 and "mount refused" in foreground.stderr
    assert not is_mounted(mnt)


@pytest.fixture
def unit_dir(tmp_path, installed_helper):
    """The shipped units, the template also under an instance's name."""
    units = tmp_path / "units"
    shutil.copytree(REPO / "systemd", units)
    (units / "ckptfs@mnt-model.service").symlink_to("ckptfs@.service")
    return units


def _verify(*units: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_shipped_units_pass_systemd_analyze_verify(unit_dir):
    for units in ([unit_dir / "ckptfs@mnt-model.service"], [unit_dir / "mnt-model.mount", unit_dir / "mnt-model.automount"]):
        done = _verify(*units)
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    service = (unit_dir / "ckptfs@.service").read_text()
    assert "Type=notify" in service and "--foreground" in service and "ExecStop" not in service
    # the check is worth something: a misspelt setting is reported
    (unit_dir / "ckptfs@.service").write_text(service.replace("Type=notify", "Type=notfy"))
    assert "notfy" in _verify(unit_dir / "ckptfs@mnt-model.service").stderr
