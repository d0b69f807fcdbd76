"""`ckptfs doctor` through the real CLI, with each gap made on purpose: no
/dev/fuse access for a test user, no user_allow_other (a private mount
namespace with a fuse.conf of the test's bound over /etc/fuse.conf), a stock
pyfuse3 in a virtualenv, state and cache folders that cannot be written,
credentials that must be named and never printed. Where the system has its
own answer (the kernel opening /dev/fuse, fusermount3 refusing allow_other,
botocore finding credentials, the pyfuse3 the virtualenv imports), the
doctor's verdict is checked against it."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from ckptfs import doctor

from .conftest import CKPTFS, FIXTURES, REPO, TIMED_APART, TIMEOUT, as_user, force_unmount, run_ckptfs, user_home

DEBIAN_PYTHON = "/usr/bin/python3"
#: the stock pyfuse3 is built from source once for the module, within the timeouts of its own steps
pytestmark = TIMED_APART
#: what a mount cannot do without (the rest are notes and warnings)
REQUIRED = ("user", "fuse module", "/dev/fuse", "fusermount3", "allow_other", "pyfuse3", "dependencies",
            "state folder")


def checks_of(text: str) -> dict[str, dict]:
    """The --json answer's checks by name."""
    return {c["name"]: c for c in json.loads(text)["checks"]}


def line_of(text: str, name: str) -> list[str]:
    """The line of a check in the text output, its runs of spaces as one
    (the columns are checked once, below), and the fix line under it if any."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line[6:].startswith(name + " "):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            fix = [following.strip()] if following.lstrip().startswith("fix: ") else []
            return [" ".join(line.split())] + fix
    raise AssertionError(f"no line for {name!r} in:\n{text}")


def _label(check: dict) -> str:
    return "FAIL" if check["status"] == "fail" else check["status"]


# ---------------------------------------------------------------- root, as installed here

def test_all_good_as_root_here_and_the_json_says_what_the_text_says():
    import pyfuse3

    done = run_ckptfs("doctor")
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    as_json = run_ckptfs("doctor", "--json")
    assert as_json.returncode == 0
    answer = json.loads(as_json.stdout)
    assert answer["ok"] is True and set(answer) == {"ok", "checks"}
    checks = checks_of(as_json.stdout)
    for name in REQUIRED:
        assert checks[name]["status"] == "ok" and checks[name]["fix"] is None, checks[name]
    assert checks["pyfuse3"]["found"].startswith(pyfuse3.__version__ + ", ckptfs's build")
    column = 6 + max(len(c["name"]) for c in answer["checks"]) + 2
    for line, check in zip([line for line in done.stdout.splitlines() if not line.startswith(" ")], answer["checks"]):
        assert [line[:6].rstrip(), line[6:column].rstrip()] == [_label(check), check["name"]], line
        assert line[column:] == check["found"], line
    for line in done.stdout.splitlines():
        assert not line.startswith(" ") or line.startswith(" " * column + "fix: "), line
    for check in answer["checks"]:
        assert check["status"] in doctor.STATUSES
        shown = line_of(done.stdout, check["name"])
        assert shown[0].split()[0] == _label(check) and shown[0].endswith(check["found"]), shown
        assert shown[1:] == ([f"fix: {check['fix']}"] if check["fix"] else []), shown
    assert done.stdout.splitlines()[-1].startswith("a mount can work here")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0] for r in requirements
            if "python_version < '3.14'" not in r or sys.version_info < (3, 14)}


def test_the_packages_checked_are_pyprojects():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert _names(project["dependencies"]) == set(doctor.DEPENDENCIES.values()) | {"pyfuse3"}
    assert {m for modules in doctor.REMOTE_SCHEMES.values() for m in modules} == \
        _names(project["optional-dependencies"]["remote"])


def test_a_source_that_is_no_url_is_refused_in_one_line():
    done = run_ckptfs("doctor", "--source", "model.nemo")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ckptfs: --source model.nemo: not a URL") and done.stderr.count("\n") == 1


def test_an_fsspec_protocol_without_its_package_fails_with_the_package_to_install():
    assert importlib.util.find_spec("gcsfs") is None, "gcsfs is installed here: pick another protocol"
    done = run_ckptfs("doctor", "--source", "gs://bucket/model.safetensors")
    assert done.returncode == 1
    assert line_of(done.stdout, "gs://") == [
        "FAIL gs:// fsspec reads it with gcsfs, which is missing",
        f"fix: {sys.executable} -m pip install gcsfs"]


def test_the_mount_helper_is_ok_once_install_helper_wrote_it(installed_helper):
    checks = checks_of(run_ckptfs("doctor", "--json").stdout)
    assert checks["mount helper"]["status"] == "ok"
    assert checks["mount helper"]["found"].startswith(f"{installed_helper} runs /")


def test_a_helper_written_by_another_or_for_another_ckptfs_warns(tmp_path):
    path = tmp_path / "mount.fuse.ckptfs"
    helper = doctor.Helper(str(path), "written by ckptfs install-helper", "#!/bin/sh\n# written by ckptfs "
                           "install-helper\nexec /opt/new/bin/ckptfs \"$@\"\n", "sudo ckptfs install-helper")
    assert doctor.mount_helper(helper).status == "note"
    path.write_text("#!/bin/sh\nexec /opt/old/bin/ckptfs \"$@\"\n")
    path.chmod(0o755)
    assert "was not written by ckptfs install-helper" in doctor.mount_helper(helper).found
    path.write_text(helper.expected.replace("/opt/new/", "/opt/old/"))
    assert doctor.mount_helper(helper).found == f"{path} runs /opt/old/bin/ckptfs, not this ckptfs"
    path.write_text(helper.expected)
    assert doctor.mount_helper(helper) == doctor.Check("mount helper", "ok", f"{path} runs /opt/new/bin/ckptfs")


def test_a_missing_dev_fuse_fails_with_modprobe(tmp_path):
    check = doctor.dev_fuse(str(tmp_path / "fuse"))
    assert check.status == "fail" and check.found == "missing (No such file or directory)"
    assert check.fix.startswith("sudo modprobe fuse (in a container: docker run --device /dev/fuse")


def test_a_dev_fuse_that_is_another_device_fails(tmp_path):
    """/dev/null bound over /dev/fuse in a private mount namespace: it opens
    read-write, but nothing could mount through it."""
    script = 'mount --bind /dev/null /dev/fuse && exec "$@"'
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           *CKPTFS, "doctor"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert line_of(done.stdout, "/dev/fuse") == [
        "FAIL /dev/fuse not the FUSE device (character device 1:3, not character device 10:229)",
        "fix: sudo rm /dev/fuse && sudo mknod -m 0666 /dev/fuse c 10 229"]


# ---------------------------------------------------------------- credentials

SECRETS = ("SECRETVALUE", "hf_SECRETTOKEN", "FILESECRET", "AKIDEXAMPLE")


def _doctor_env(tmp_path: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_"))}
    return {**clean, "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true", **env}


def _doctor(env: dict, *args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "ckptfs", "doctor", *args]
    text = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    as_json = subprocess.run(command + ["--json"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    return text, as_json


def _botocore_method(env: dict) -> str | None:
    """How botocore itself finds credentials in this environment (no request made)."""
    code = "import botocore.session as s; c = s.Session().get_credentials(); print(c.method if c else None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_credentials_are_named_where_found_and_never_printed(tmp_path):
    env = _doctor_env(tmp_path, AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="SECRETVALUE",
                      HF_TOKEN="hf_SECRETTOKEN")
    assert _botocore_method(env) == "env"
    text, as_json = _doctor(env, "--source", "s3://bucket/model.safetensors")
    assert text.returncode == 0 and as_json.returncode == 0, text.stdout + text.stderr
    for secret in SECRETS:
        assert secret not in text.stdout + text.stderr + as_json.stdout + as_json.stderr
    checks = checks_of(as_json.stdout)
    assert checks["s3 credentials"] == {"name": "s3 credentials", "status": "ok", "fix": None,
                                        "found": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"}
    hub, _ = _doctor(env, "--source", "hf://org/model")
    assert line_of(hub.stdout, "hf token") == ["ok hf token HF_TOKEN in the environment"]
    assert not any(secret in hub.stdout for secret in SECRETS)


def test_a_profile_in_the_shared_file_is_named_by_file_and_section(tmp_path):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("[default]\naws_access_key_id = AKIDEXAMPLE\n"
                                     "[ci]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = FILESECRET\n")
    env = _doctor_env(tmp_path, AWS_PROFILE="ci")
    assert _botocore_method(env) == "shared-credentials-file"
    text, as_json = _doctor(env, "--source", "s3://bucket/model.safetensors")
    assert checks_of(as_json.stdout)["s3 credentials"]["found"] == f"[ci] in {aws / 'credentials'}"
    assert text.returncode == 0 and not any(secret in text.stdout + as_json.stdout for secret in SECRETS)


def test_half_a_key_pair_fails_an_s3_source_and_is_not_printed(tmp_path):
    env = _doctor_env(tmp_path, AWS_SECRET_ACCESS_KEY="SECRETVALUE")
    text, as_json = _doctor(env, "--source", "s3://bucket/model.safetensors")
    assert text.returncode == 1 and json.loads(as_json.stdout)["ok"] is False
    assert line_of(text.stdout, "s3 credentials") == [
        "FAIL s3 credentials AWS_SECRET_ACCESS_KEY in the environment without AWS_ACCESS_KEY_ID",
        "fix: export AWS_ACCESS_KEY_ID as well, or unset AWS_SECRET_ACCESS_KEY"]
    assert "SECRETVALUE" not in text.stdout + as_json.stdout
    plain, _ = _doctor(env)  # no S3 source asked for: a warning
    assert plain.returncode == 0 and line_of(plain.stdout, "s3 credentials")[0].startswith("warn")


def test_a_hub_token_file_is_named_and_its_token_never_printed(tmp_path):
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    (hf_home / "token").write_text("hf_SECRETTOKEN")
    text, as_json = _doctor(_doctor_env(tmp_path, HF_HOME=str(hf_home)), "--source", "hf://org/model")
    assert text.returncode == 0
    check = checks_of(as_json.stdout)["hf token"]
    assert check["status"] == "warn" and str(hf_home / "token") in check["found"]
    assert check["fix"] == f'export HF_TOKEN="$(cat {hf_home / "token"})"'
    assert "hf_SECRETTOKEN" not in text.stdout + as_json.stdout


# ---------------------------------------------------------------- a user's virtualenv with a stock pyfuse3

@pytest.fixture(scope="module")
def stock(shared_dir) -> tuple[Path, Path]:
    """(python, ckptfs's folder): a virtualenv of Debian's python3 every user
    can run, with pip's stock pyfuse3 built from source and ckptfs's other
    dependencies, and a copy of this ckptfs (the clone may sit in a folder
    private to root) to put on PYTHONPATH."""
    assert os.access(DEBIAN_PYTHON, os.X_OK), "Debian's python3 is missing: make test installs python3-venv"
    venv = shared_dir / "stock-venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-binary", "pyfuse3", "pyfuse3==3.5.0",
                    *doctor.DEPENDENCIES.values()], check=True, timeout=600, capture_output=True)
    source = shared_dir / "src"
    shutil.copytree(REPO / "ckptfs", source / "ckptfs", ignore=shutil.ignore_patterns("__pycache__"))
    return python, source


def test_a_stock_pyfuse3_warns_with_what_it_costs_and_a_mount_still_can_work(stock):
    python, source = stock
    stock_build = subprocess.run([str(python), "-c", "import pyfuse3; print(pyfuse3.__version__, "
                                  "hasattr(pyfuse3, 'FAST_LOOP'), hasattr(pyfuse3, 'NO_OPEN_FH_IS_INODE'))"],
                                 capture_output=True, text=True, timeout=TIMEOUT)
    assert stock_build.stdout.split() == ["3.5.0", "False", "False"], stock_build.stderr
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(source), "HOME": str(source.parent)}
    done = subprocess.run([str(python), "-m", "ckptfs", "doctor"], capture_output=True, text=True, env=env,
                          cwd=source, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    found, fix = line_of(done.stdout, "pyfuse3")
    assert found.startswith("warn pyfuse3 3.5.0, stock: no zero-message opens (4 requests a folder")
    assert "no read interrupts" in found and "no fast loop (about twice the daemon's CPU per request)" in found
    # an installed ckptfs (no clone around it) says where the patched build comes from
    assert fix == f"fix: in a clone of ckptfs: bash vendor/pyfuse3/install.sh {python}"
    assert line_of(done.stdout, "s3://") == ["note s3:// fsspec, s3fs missing: s3:// sources cannot be read",
                                             f"fix: {python} -m pip install fsspec s3fs"]
    assert done.stdout.splitlines()[-1].startswith("a mount can work here (")


def test_without_ml_dtypes_it_warns_that_numpy_refuses_bfloat16_as_numpy_does(stock, tmp_path):
    import ckptfs

    python, source = stock
    weight = tmp_path / "weight.npy"  # a bfloat16 tensor as a mount serves it
    weight.write_bytes(ckptfs.open(FIXTURES / "nemo" / "tiny.nemo").read("model_weights.ckpt/emb/weight.npy"))
    refused = subprocess.run([str(python), "-c", f"import numpy; numpy.load({str(weight)!r})"], capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert refused.returncode == 1 and "'bfloat16'" in refused.stderr, refused.stderr
    done = subprocess.run([str(python), "-m", "ckptfs", "doctor"], capture_output=True, text=True, cwd=source,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(source), "HOME": str(source)},
                          timeout=TIMEOUT)
    found, fix = line_of(done.stdout, "ml_dtypes")
    assert found.startswith("warn ml_dtypes not installed: np.load refuses bfloat16 and float8 .npy files")
    assert fix == f"fix: {python} -m pip install ml_dtypes"


@pytest.fixture
def dev_fuse_mode():
    """Sets /dev/fuse's mode for the test; the mode found is put back."""
    found = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    yield lambda mode: os.chmod("/dev/fuse", mode)
    os.chmod("/dev/fuse", found)


def _user_env(home: Path, source: Path) -> dict:
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.chown(runtime, home.stat().st_uid, home.stat().st_gid)
    return {"PYTHONPATH": str(source), "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}


def test_a_user_without_dev_fuse_access_is_told_to_chmod_it(users, shared_dir, stock, dev_fuse_mode):
    python, source = stock
    user = users[0]
    env = _user_env(user_home(shared_dir, user), source)
    dev_fuse_mode(0o600)
    assert as_user(user, ["sh", "-c", "exec 3<>/dev/fuse"]).returncode != 0  # the kernel refuses the user
    done = as_user(user, [python, "-m", "ckptfs", "doctor"], env, cwd=env["HOME"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert line_of(done.stdout, "/dev/fuse") == [
        f"FAIL /dev/fuse crw------- root:root: {user.pw_name} cannot open it (Permission denied)",
        "fix: sudo chmod 0666 /dev/fuse (Debian's udev rule makes it 0666 at boot: 50-udev-default.rules)"]
    assert done.stdout.splitlines()[-1] == "a mount cannot work here: 1 check failed"
    dev_fuse_mode(0o666)
    assert as_user(user, ["sh", "-c", "exec 3<>/dev/fuse"]).returncode == 0
    done = as_user(user, [python, "-m", "ckptfs", "doctor", "--json"], env, cwd=env["HOME"])
    checks = checks_of(done.stdout)
    assert done.returncode == 0 and checks["/dev/fuse"]["status"] == "ok", done.stdout
    assert checks["user"]["found"].startswith(f"{user.pw_name} (uid {user.pw_uid}): mounts through fusermount3")


def _users_copy(home: Path) -> Path:
    """A small checkpoint the user owns (the clone may sit in a folder private to root)."""
    path = home / "tiny.nemo"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", path)
    os.chown(path, home.stat().st_uid, home.stat().st_gid)
    return path


def test_folders_the_user_cannot_write_fail_the_state_and_warn_the_cache(users, shared_dir, stock):
    python, source = stock
    user = users[0]
    home = user_home(shared_dir, user)
    locked = shared_dir / "locked"  # root's, 0755: the user reads it and writes nothing there
    locked.mkdir(mode=0o755, exist_ok=True)
    env = {"PYTHONPATH": str(source), "HOME": str(home), "TMPDIR": str(locked),
           "XDG_CACHE_HOME": str(locked / "cache")}
    done = as_user(user, [python, "-m", "ckptfs", "doctor"], env, cwd=home)
    assert done.returncode == 1, done.stdout + done.stderr
    assert line_of(done.stdout, "state folder") == [
        f"FAIL state folder {locked}/ckptfs-{user.pw_uid}: Permission denied: no mount can record itself",
        "fix: export XDG_RUNTIME_DIR (or TMPDIR) naming a folder of yours that you can write"]
    found, fix = line_of(done.stdout, "cache folder")
    assert found.startswith(f"warn cache folder {locked}/cache/ckptfs: {locked}: Permission denied: gzip")
    assert fix == "fix: export XDG_CACHE_HOME naming a folder you can write, or mount with --cache-dir PATH"
    # what the mount itself says in the same place
    mnt = home / "mnt-locked"
    mnt.mkdir(exist_ok=True)
    os.chown(mnt, user.pw_uid, user.pw_gid)
    mounted = as_user(user, [python, "-m", "ckptfs", "mount", _users_copy(home), mnt], env, cwd=home)
    force_unmount(mnt)
    assert (mounted.returncode, mounted.stderr) == (1, (
        f"ckptfs: {locked}/ckptfs-{user.pw_uid}: cannot make the state folder (Permission denied); "
        "set XDG_RUNTIME_DIR (or TMPDIR) to a folder of yours that you can write\n"))


# ---------------------------------------------------------------- /etc/fuse.conf, in a mount namespace of its own

def _in_namespace(conf: Path, user, command: list, env: dict, **options) -> subprocess.CompletedProcess:
    """`command` run as `user` in a private mount namespace where /etc/fuse.conf is `conf`."""
    as_them = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
               "env", "-i", "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in env.items()), *map(str, command)]
    script = 'mount --bind "$0" /etc/fuse.conf && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(conf),
                           *as_them], capture_output=True, text=True, cwd=env["HOME"],
                          **{"timeout": TIMEOUT, **options})


def _end_daemons(state: Path) -> None:
    """A mount the test expected refused that was made anyway: its daemon,
    in a namespace no unmount reaches, is killed, and its mount goes with
    the namespace."""
    for record in state.glob("*.json"):
        try:
            os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
        except (ProcessLookupError, ValueError, KeyError):
            pass


def test_allow_other_without_user_allow_other_fails_as_fusermount3_does(users, shared_dir, stock, dev_fuse_mode):
    python, source = stock
    user = users[0]
    home = user_home(shared_dir, user)
    env = _user_env(home, source)
    dev_fuse_mode(0o666)
    conf = shared_dir / "fuse.conf"
    conf.write_text("# mount_max = 1000\n#user_allow_other\n")
    conf.chmod(0o644)
    done = _in_namespace(conf, user, [python, "-m", "ckptfs", "doctor", "--allow-other"], env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert line_of(done.stdout, "allow_other") == [
        "FAIL allow_other no user_allow_other in /etc/fuse.conf: mounts with -o allow_other are refused",
        "fix: echo user_allow_other | sudo tee -a /etc/fuse.conf"]
    plain = _in_namespace(conf, user, [python, "-m", "ckptfs", "doctor"], env)
    assert plain.returncode == 0 and line_of(plain.stdout, "allow_other")[0].startswith("note allow_other ")
    # fusermount3 refuses the mount itself, for the reason the doctor gave
    mnt = home / "mnt-other"
    mnt.mkdir(exist_ok=True)
    os.chown(mnt, user.pw_uid, user.pw_gid)
    try:
        mounted = _in_namespace(conf, user, [python, "-m", "ckptfs", "mount", "-o", "ro,allow_other",
                                             _users_copy(home), mnt], env)
    finally:
        _end_daemons(Path(env["XDG_RUNTIME_DIR"]) / "ckptfs")
    assert mounted.returncode == 1 and "user_allow_other" in mounted.stderr, mounted.stderr
    conf.write_text("mount_max = 100\nuser_allow_other\n")
    done = _in_namespace(conf, user, [python, "-m", "ckptfs", "doctor", "--allow-other", "--json"], env)
    check = checks_of(done.stdout)["allow_other"]
    assert done.returncode == 0 and check == {"name": "allow_other", "status": "ok", "fix": None,
                                              "found": "user_allow_other in /etc/fuse.conf; mount_max = 100"}


def test_doctor_runs_where_nothing_is_installed_and_names_what_is_missing(plain_source):
    source = plain_source  # Debian's python3 has no pyfuse3, numpy, trio
    code = ("import importlib\nfor m in %r:\n  try: importlib.import_module(m)\n  except ImportError: print(m)"
            % list(doctor.DEPENDENCIES))
    lacking = subprocess.run([DEBIAN_PYTHON, "-c", code], capture_output=True, text=True, timeout=TIMEOUT).stdout.split()
    assert "numpy" in lacking, "Debian's python3 has numpy here: the test needs one without"
    done = subprocess.run([DEBIAN_PYTHON, "-m", "ckptfs", "doctor"], capture_output=True, text=True, cwd=source,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(source), "HOME": str(source)},
                          timeout=TIMEOUT)
    assert done.returncode == 1 and done.stderr == "", done.stderr
    # Debian's python3 is externally managed (PEP 668): pip refuses it, so every fix makes a virtualenv
    assert Path("/usr/lib/python3.11/EXTERNALLY-MANAGED").is_file()
    refused = subprocess.run([DEBIAN_PYTHON, "-m", "pip", "install", "--dry-run", "ml_dtypes"], capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr
    venv = f"{DEBIAN_PYTHON} -m venv ~/.venvs/ckptfs && "
    found, fix = line_of(done.stdout, "pyfuse3")
    assert found == "FAIL pyfuse3 not installed"
    assert fix == f"fix: in a clone of ckptfs: {venv}bash vendor/pyfuse3/install.sh ~/.venvs/ckptfs/bin/python"
    packages = [doctor.DEPENDENCIES[m] for m in lacking]
    found = "; ".join(f"{package} not installed" for package in packages)
    everything = " ".join(doctor.DEPENDENCIES.values())
    assert line_of(done.stdout, "dependencies") == [f"FAIL dependencies {found}", (
        f"fix: {venv}~/.venvs/ckptfs/bin/python -m pip install {everything}, then run ~/.venvs/ckptfs/bin/python "
        f"-m ckptfs (pip may not install into {DEBIAN_PYTHON}: PEP 668)")]
    assert line_of(done.stdout, "ml_dtypes")[1] == (
        f"fix: {venv}~/.venvs/ckptfs/bin/python -m pip install {everything} ml_dtypes, then run "
        f"~/.venvs/ckptfs/bin/python -m ckptfs (pip may not install into {DEBIAN_PYTHON}: PEP 668)")


@pytest.fixture(scope="module")
def plain_source(shared_dir) -> Path:
    """A copy of this ckptfs every user can read, for Debian's python3 (doctor needs no package)."""
    source = shared_dir / "src-plain"
    shutil.copytree(REPO / "ckptfs", source / "ckptfs", ignore=shutil.ignore_patterns("__pycache__"))
    return source


def _fusermount3_allows_other(conf: Path, user, env: dict, mnt: Path,
                              options: str = "allow_other,ro") -> subprocess.CompletedProcess:
    """The real fusermount3 asked, as `user`, for a mount with `options`
    (as libfuse asks it: the device comes back over _FUSE_COMMFD); a mount
    it makes dies with its namespace, and the device with our socket."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        return _in_namespace(conf, user, ["/usr/bin/fusermount3", "-o", f"{options},fsname=doctor-test", "--",
                                          mnt], {**env, "_FUSE_COMMFD": str(theirs.fileno())},
                             pass_fds=[theirs.fileno()])


FUSE_CONFS = {  # libfuse 3.14's read_conf: cut at '#', stripped, lines of 255 bytes at most, the last one ended
    "inline comment": (b"user_allow_other  # for ckptfs\n", 0o644, "ok", None),
    "blanks around": (b"# a comment\n\n \t user_allow_other \t\n", 0o644, "ok", None),
    "no final newline": (b"mount_max = 10\nuser_allow_other", 0o644, "fail", "echo | sudo tee -a /etc/fuse.conf"),
    "another last line": (b"user_allow_otherx\n#end", 0o644, "fail",
                          "printf '\\nuser_allow_other\\n' | sudo tee -a /etc/fuse.conf"),
    "line too long": (b"user_allow_other" + b" " * 300 + b"\n", 0o644, "fail",
                      "echo user_allow_other | sudo tee -a /etc/fuse.conf"),
    "unreadable": (b"user_allow_other\n", 0o600, "fail", "sudo chmod 644 /etc/fuse.conf"),
}


@pytest.mark.parametrize("case", FUSE_CONFS)
def test_fuse_conf_is_read_as_fusermount3_reads_it(case, users, shared_dir, plain_source, dev_fuse_mode):
    """The doctor's allow_other verdict equals the real fusermount3's, run
    as a test user on the same /etc/fuse.conf; each fix line is the one that
    file needs (an append starting on a line of its own after a last line
    with no newline; chmod where the user cannot read it)."""
    body, mode, status, fix = FUSE_CONFS[case]
    user = users[0]
    home = user_home(shared_dir, user)
    env = _user_env(home, plain_source)
    dev_fuse_mode(0o666)
    conf = shared_dir / f"fuse-{case.replace(' ', '-')}.conf"
    conf.write_bytes(body)
    conf.chmod(mode)
    mnt = home / "mnt-conf"
    mnt.mkdir(exist_ok=True)
    os.chown(mnt, user.pw_uid, user.pw_gid)
    mounted = _fusermount3_allows_other(conf, user, env, mnt)
    assert (mounted.returncode == 0) == (status == "ok"), mounted.stderr
    done = _in_namespace(conf, user, [DEBIAN_PYTHON, "-m", "ckptfs", "doctor", "--allow-other", "--json"], env)
    check = checks_of(done.stdout)["allow_other"]
    assert (check["status"], check["fix"]) == (status, fix), check
    if mode == 0o600:
        assert "Permission denied" in mounted.stderr and check["found"].startswith(
            "cannot read /etc/fuse.conf (Permission denied), as fusermount3 cannot")


def test_fuse_conf_linked_to_dev_null_is_read_as_empty_as_fusermount3_reads_it(users, shared_dir, plain_source,
                                                                               dev_fuse_mode):
    """/etc/fuse.conf a link to /dev/null: fusermount3 reads it as empty (a
    user mounts; allow_other is refused), so the doctor does: a note with no
    fix when allow_other is not asked for, with --allow-other a FAIL whose fix
    writes a file of its own (an append to /dev/null would change nothing)."""
    user = users[0]
    home = user_home(shared_dir, user)
    env = _user_env(home, plain_source)
    dev_fuse_mode(0o666)
    conf = shared_dir / "fuse-null.conf"
    conf.symlink_to("/dev/null")
    mnt = home / "mnt-null"
    mnt.mkdir(exist_ok=True)
    os.chown(mnt, user.pw_uid, user.pw_gid)
    assert _fusermount3_allows_other(conf, user, env, mnt, "ro").returncode == 0
    refused = _fusermount3_allows_other(conf, user, env, mnt)
    assert refused.returncode != 0 and "user_allow_other" in refused.stderr, refused.stderr
    plain = _in_namespace(conf, user, [DEBIAN_PYTHON, "-m", "ckptfs", "doctor", "--json"], env)
    found = "no user_allow_other in /etc/fuse.conf (a device, read as empty): mounts with -o allow_other are refused"
    assert checks_of(plain.stdout)["allow_other"] == {  # the exit status: that of a Python without pyfuse3
        "name": "allow_other", "status": "note", "found": found, "fix": None}
    asked = _in_namespace(conf, user, [DEBIAN_PYTHON, "-m", "ckptfs", "doctor", "--allow-other", "--json"], env)
    assert checks_of(asked.stdout)["allow_other"] == {
        "name": "allow_other", "status": "fail", "found": found, "fix": doctor.ALLOW_OTHER_FILE_FIX}


def test_user_allow_other_is_suggested_only_when_asked_for(tmp_path, monkeypatch):
    """A FIFO over /etc/fuse.conf stops every user's mount: FAIL either way,
    but its fix adds user_allow_other only with --allow-other; a file
    without it is a note with no fix unless asked."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
    read = {"fifo": doctor.fuse_conf(str(fifo)), "plain": doctor.FuseConf(("mount_max = 10",), None, None)}
    fixes = {}
    for case, conf in read.items():
        monkeypatch.setattr(doctor, "fuse_conf", lambda conf=conf: conf)
        fixes[case] = [(check.status, check.fix) for check in (doctor.allow_other(False), doctor.allow_other(True))]
    assert fixes["fifo"] == [("fail", "sudo mv /etc/fuse.conf /etc/fuse.conf.bad"),
                             ("fail", f"sudo mv /etc/fuse.conf /etc/fuse.conf.bad && {doctor.ALLOW_OTHER_FIX}")]
    assert fixes["plain"] == [("note", None), ("fail", doctor.ALLOW_OTHER_FIX)]


def test_a_pipe_where_a_file_is_read_is_not_waited_on(tmp_path):
    """A named pipe with no writer as the credentials file, the AWS config
    or /etc/fuse.conf used to block the doctor forever: now it is no
    regular file, not read (each run bounded by its timeout)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    env = _doctor_env(tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(fifo), AWS_CONFIG_FILE=str(fifo))
    done = subprocess.run([sys.executable, "-m", "ckptfs", "doctor", "--source", "s3://bucket/model.safetensors",
                           "--json"], capture_output=True, text=True, env=env, timeout=30)
    assert done.stderr == "" and checks_of(done.stdout)["s3 credentials"]["status"] == "warn"
    assert doctor.fuse_conf(str(fifo)).unreadable.strerror == "not a regular file"
    helper = doctor.Helper(str(fifo), "written by ckptfs install-helper", None, "sudo ckptfs install-helper")
    assert doctor.mount_helper(helper) == doctor.Check("mount helper", "warn", f"{fifo}: not a regular file",
                                                       "sudo ckptfs install-helper")


def test_a_uid_without_passwd_entry_or_home_is_told_what_fusermount3_and_the_cache_do(shared_dir, plain_source):
    """It used to be "uid N (uid N)", ok, and a cache folder "~/.cache/ckptfs"
    below the current folder, ok: fusermount3 refuses such a user (checked
    here), and `~` is no home."""
    uid = next(u for u in range(54321, 55321) if not _has_passwd_entry(u))
    cwd = shared_dir / f"cwd-{uid}"
    cwd.mkdir(exist_ok=True)
    os.chown(cwd, uid, uid)
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    ours, theirs = socket.socketpair()
    with ours, theirs:
        mounted = subprocess.run([*as_uid, "/usr/bin/fusermount3", "-o", "ro,fsname=doctor-test", "--", cwd],
                                 env={"_FUSE_COMMFD": str(theirs.fileno()), "PATH": "/usr/bin:/bin"},
                                 pass_fds=[theirs.fileno()], capture_output=True, text=True, timeout=TIMEOUT)
    assert mounted.returncode == 1 and "could not determine username" in mounted.stderr, mounted.stderr
    done = subprocess.run([*as_uid, "env", "-i", "PATH=/usr/bin:/bin", f"PYTHONPATH={plain_source}", DEBIAN_PYTHON,
                           "-m", "ckptfs", "doctor", "--json"], capture_output=True, text=True, cwd=cwd,
                          timeout=TIMEOUT)
    checks = checks_of(done.stdout)
    assert done.returncode == 1 and checks["user"] == {
        "name": "user", "status": "fail", "found": f'uid {uid} has no passwd entry: fusermount3 refuses to mount for '
        'it ("could not determine username")', "fix": f"sudo useradd --uid {uid} NAME, or run as a user the system knows"}
    assert checks["cache folder"]["status"] == "warn"
    assert checks["cache folder"]["found"] == ("~/.cache/ckptfs: no HOME and no home folder for this uid: a mount "
                                               f"would make it below the folder it starts in ({cwd}/~/.cache/ckptfs here)")


def _has_passwd_entry(uid: int) -> bool:
    try:
        return pwd.getpwuid(uid) is not None
    except KeyError:
        return False


def test_a_pipe_over_fuse_conf_fails_as_it_stops_fusermount3(users, shared_dir, plain_source, dev_fuse_mode):
    """fusermount3 opens /etc/fuse.conf blocking: a named pipe there makes
    every user's mount wait (the real one, bounded here by a timeout); the
    doctor fails it, even without --allow-other, and does not wait."""
    user = users[0]
    home = user_home(shared_dir, user)
    env = _user_env(home, plain_source)
    dev_fuse_mode(0o666)
    pipe = shared_dir / "fuse.conf.fifo"
    if not pipe.exists():
        os.mkfifo(pipe, 0o644)
    mnt = home / "mnt-pipe"
    mnt.mkdir(exist_ok=True)
    os.chown(mnt, user.pw_uid, user.pw_gid)
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(subprocess.TimeoutExpired):  # fusermount3 waits for a writer
        _in_namespace(pipe, user, ["/usr/bin/fusermount3", "-o", "ro,fsname=doctor-test", "--", mnt],
                      {**env, "_FUSE_COMMFD": str(theirs.fileno())}, pass_fds=[theirs.fileno()], timeout=5)
    done = _in_namespace(pipe, user, [DEBIAN_PYTHON, "-m", "ckptfs", "doctor", "--json"], env)
    assert checks_of(done.stdout)["allow_other"] == {
        "name": "allow_other", "status": "fail", "found": "/etc/fuse.conf: not a regular file: fusermount3 stops there "
        "(waits on a pipe, exits on a folder or a read error): no user can mount",
        "fix": "sudo mv /etc/fuse.conf /etc/fuse.conf.bad"}  # user_allow_other only when --allow-other asks
