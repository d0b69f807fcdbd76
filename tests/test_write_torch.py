"""Edits of torch.save checkpoints that change their objects (tensors added,
removed, reshaped; YAML views of pickled values), through real FUSE, read
back with torch.load, tarfile and Lightning."""

import gzip
import io
import os
import shutil
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from .conftest import FIXTURES, run_ckptfs, sha256, tar_members, umount, write_refused

NEMO = FIXTURES / "nemo" / "tiny.nemo"
LIGHTNING = FIXTURES / "lightning" / "tiny.ckpt"


def _loads(path):
    """The checkpoint as torch.load gives it: plain, memory-mapped, and with weights_only."""
    return [torch.load(path, weights_only=False), torch.load(path, weights_only=False, mmap=True),
            torch.load(path, weights_only=True)]


def _assert_storages_aligned(path) -> None:
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        assert archive.testzip() is None  # every CRC matches
        for info in archive.infolist():
            f.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", f.read(4))
            start = info.header_offset + 30 + name_length + extra_length
            assert start % 64 == 0, info.filename


@pytest.fixture
def state_pt(tmp_path):
    torch.manual_seed(0)
    state = {
        "model": {
            "enc.w": torch.nn.Parameter(torch.randn(3, 4)),
            "enc.b": torch.zeros(4),
            "dec.w": torch.randn(2, 3).to(torch.bfloat16),
            "head": torch.randn(5),
        },
        "optimizer": {"state": {0: {"exp_avg": torch.randn(1 << 18)}}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        "step": 3,
        "lr": 0.01,
    }
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return path, state


def test_tensors_added_removed_reshaped_and_values_edited_in_a_pt(mount, state_pt):
    path, state = state_pt
    size_before = path.stat().st_size
    mnt = mount(path)
    np.save(mnt / "model" / "enc" / "w.npy", np.full((2, 2), 7, dtype=np.float64))  # a new shape and dtype
    os.unlink(mnt / "model" / "dec" / "w.npy")
    np.save(mnt / "model" / "new.npy", np.arange(5, dtype=np.int16))
    np.save(mnt / "model" / "head.npy", np.arange(5, dtype=np.float16))  # a new dtype
    shutil.rmtree(mnt / "optimizer")
    (mnt / "step.yaml").write_text("4\n")
    (mnt / "lr.yaml").write_text("1e-4\n")  # a string to YAML 1.1; stays a float
    (mnt / "epoch.yaml").write_text("7\n")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert path.stat().st_size < size_before - (1 << 20)  # the optimizer's storage is gone from the file
    _assert_storages_aligned(path)
    for loaded in _loads(path):
        assert list(loaded) == ["model", "step", "lr", "epoch"]
        model = loaded["model"]
        assert list(model) == ["enc.w", "enc.b", "head", "new"]
        assert isinstance(model["enc.w"], torch.nn.Parameter) and model["enc.w"].requires_grad
        assert model["enc.w"].dtype == torch.float64 and model["enc.w"].tolist() == [[7, 7], [7, 7]]
        assert torch.equal(model["enc.b"], state["model"]["enc.b"])
        assert model["head"].dtype == torch.float16 and model["head"].tolist() == [0, 1, 2, 3, 4]
        assert model["new"].dtype == torch.int16 and model["new"].tolist() == [0, 1, 2, 3, 4]
        assert (loaded["step"], loaded["lr"], loaded["epoch"]) == (4, 1e-4, 7) and type(loaded["lr"]) is float


def test_a_float8_tensor_and_a_tensor_inside_a_list(mount, tmp_path):
    path = tmp_path / "f8.pt"
    torch.save({"scales": [torch.ones(2), torch.zeros(3)], "q": torch.zeros(4, dtype=torch.float8_e4m3fn)}, path)
    mnt = mount(path)
    np.save(mnt / "q.npy", np.arange(6, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn))  # '|V1': stays float8
    np.save(mnt / "scales" / "1.npy", np.full(2, 3, dtype=np.float32))
    os.unlink(mnt / "scales" / "0.npy")
    assert umount(mnt).returncode == 0
    for loaded in _loads(path):
        assert loaded["q"].dtype == torch.float8_e4m3fn and loaded["q"].float().tolist() == [0, 1, 2, 3, 4, 5]
        assert [t.tolist() for t in loaded["scales"]] == [[3, 3]]


def test_edits_of_a_legacy_torch_save_file_stay_in_the_legacy_format(mount, tmp_path):
    path = tmp_path / "legacy.pth"
    state = {"w": torch.nn.Parameter(torch.arange(6.0).reshape(2, 3)), "b": torch.ones(3), "gone": torch.zeros(4), "step": 3}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    mnt = mount(path)
    np.save(mnt / "w.npy", np.full((3, 3), 2, dtype=np.float64))
    os.unlink(mnt / "gone.npy")
    np.save(mnt / "new.npy", np.arange(4, dtype=np.int32))
    write_refused(mnt / "step.yaml", b"fast\n")  # checked on close, as in a zip
    (mnt / "step.yaml").write_text("4\n")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert not zipfile.is_zipfile(path)  # still the legacy layout
    for loaded in (torch.load(path, weights_only=False), torch.load(path, weights_only=True)):
        assert list(loaded) == ["w", "b", "step", "new"]
        assert isinstance(loaded["w"], torch.nn.Parameter) and loaded["w"].dtype == torch.float64
        assert loaded["w"].tolist() == [[2] * 3] * 3 and torch.equal(loaded["b"], state["b"])
        assert loaded["new"].tolist() == [0, 1, 2, 3] and loaded["step"] == 4


def test_a_renamed_parameter_stays_a_parameter(mount, state_pt):
    path, state = state_pt
    mnt = mount(path)
    os.rename(mnt / "model" / "enc" / "w.npy", mnt / "model" / "enc" / "weight.npy")
    assert umount(mnt).returncode == 0
    for loaded in _loads(path):
        assert list(loaded["model"]) == ["enc.b", "dec.w", "head", "enc.weight"]
        renamed = loaded["model"]["enc.weight"]
        assert isinstance(renamed, torch.nn.Parameter) and torch.equal(renamed, state["model"]["enc.w"])


def test_bad_edits_are_refused_by_name_and_kept(mount, state_pt):
    path, _ = state_pt
    digest = sha256(path)
    mnt = mount(path, log_errors_expected=True)
    write_refused(mnt / "lr.yaml", b"fast\n")
    write_refused(mnt / "step.yaml", b"[unclosed\n")
    write_refused(mnt / "model" / "head.npy", b"not an array")
    assert "lr.yaml: was a float (0.01); 'fast'" in os.getxattr(mnt / "lr.yaml", "user.ckptfs.problem").decode()
    (mnt / "notes.txt").write_text("hello")  # refused at repack: a torch.save checkpoint holds no plain files
    done = umount(mnt)
    assert done.returncode == 1
    for problem in ("lr.yaml: was a float (0.01); 'fast' would change its type", "step.yaml: not valid YAML",
                    "model/head.npy: not an NPY file", "notes.txt: a new file must be a tensor"):
        assert problem in done.stderr
    assert "recover" in done.stderr and sha256(path) == digest
    assert run_ckptfs("recover", path, "--discard").returncode == 0


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "gzip"])
def test_structural_edits_inside_a_nemo(mount, tmp_path, compressed):
    nemo = tmp_path / "model.nemo"
    if compressed:  # NeMo before 1.7
        with gzip.GzipFile(nemo, "wb", mtime=0) as gz:
            gz.write(NEMO.read_bytes())
    else:
        shutil.copy(NEMO, nemo)
    original = tar_members(nemo)
    mnt = mount(nemo)
    weights = mnt / "model_weights.ckpt"
    tensors = sorted(p.relative_to(weights) for p in weights.rglob("*.npy"))
    gone = tensors[0]
    os.unlink(weights / gone)
    np.save(weights / "added.npy", np.ones((2, 2), dtype=np.float32))
    config = (mnt / "model_config.yaml").read_text()
    (mnt / "model_config.yaml").write_text(config + "edited: true\n")
    assert umount(mnt).returncode == 0
    members = tar_members(nemo)
    assert list(members) == list(original)  # same members, same order
    changed = sorted(n for n in members if members[n] != original[n])
    assert changed == ["./model_config.yaml", "./model_weights.ckpt"]
    before = torch.load(io.BytesIO(original["./model_weights.ckpt"]), weights_only=False)
    after = torch.load(io.BytesIO(members["./model_weights.ckpt"]), weights_only=False)
    gone_key = ".".join(gone.with_suffix("").parts)
    assert list(after) == [k for k in before if k != gone_key] + ["added"]
    assert all(torch.equal(after[k], before[k]) for k in before if k != gone_key)
    assert after["added"].tolist() == [[1, 1], [1, 1]]
    assert (nemo.read_bytes()[:2] == b"\x1f\x8b") == compressed


# ---------------------------------------------------------------- Lightning


def _lightning_module():
    import lightning.pytorch as pl

    class Lit(pl.LightningModule):  # the module of fixtures/make/mklightning.py
        def __init__(self, cfg, lr=1e-2, name="tiny"):
            super().__init__()
            self.save_hyperparameters()
            hidden = cfg.model.hidden
            self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
            self.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))

        def training_step(self, batch, i):
            x, y = batch
            self.steps_seen += 1
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            groups = [{"params": self.net[0].parameters(), "lr": self.hparams.lr},
                      {"params": self.net[2].parameters(), "lr": self.hparams.lr / 10}]
            optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)]

    return Lit


def _trainer(root, epochs: int):
    import lightning.pytorch as pl

    return pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, default_root_dir=root, accelerator="cpu")


def _data():
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(64, 8, generator=generator), torch.randn(64, 1, generator=generator)),
                      batch_size=16)


@pytest.fixture(params=["fixture", "fresh"])
def lightning_ckpt(request, tmp_path):
    """The Lightning 2.4 fixture, and one written now by the installed Lightning."""
    path = tmp_path / "tiny.ckpt"
    if request.param == "fixture":
        shutil.copy(LIGHTNING, path)
        path.chmod(0o644)
        return path
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": {"hidden": 16, "act": "tanh"}, "data": {"path": "${oc.env:HOME}/data"}})
    trainer = _trainer(tmp_path, 3)
    trainer.fit(_lightning_module()(cfg, lr=0.01, name="fresh"), _data())
    trainer.save_checkpoint(path)
    return path


@pytest.mark.filterwarnings("ignore")  # Lightning's own advice (workers, logging) is not what is tested
def test_lightning_loads_the_edited_hyper_parameters_and_resumes(mount, lightning_ckpt, tmp_path):
    saved = torch.load(lightning_ckpt, weights_only=False)
    mnt = mount(lightning_ckpt)
    hparams = (mnt / "hyper_parameters.yaml").read_text()
    assert "lr: 0.01" in hparams and "hidden: 16" in hparams
    name = saved["hyper_parameters"]["name"]
    (mnt / "hyper_parameters.yaml").write_text(hparams.replace("lr: 0.01", "lr: 1e-4").replace(f"name: {name}", "name: 7"))
    np.save(mnt / "state_dict" / "net" / "2" / "bias.npy", np.array([0.5], dtype=np.float32))
    os.unlink(mnt / "callbacks.yaml")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr

    edited = torch.load(lightning_ckpt, weights_only=False)
    assert "callbacks" not in edited and sorted(edited) == sorted(k for k in saved if k != "callbacks")
    assert edited["hyper_parameters"]["lr"] == 1e-4 and edited["hyper_parameters"]["name"] == "7"
    assert type(edited["hyper_parameters"]["cfg"]) is type(saved["hyper_parameters"]["cfg"])
    for key in ("loops", "optimizer_states", "lr_schedulers", "epoch", "global_step"):
        assert repr(edited[key]) == repr(saved[key]), key

    Lit = _lightning_module()
    model = Lit.load_from_checkpoint(lightning_ckpt, weights_only=False)
    assert model.hparams.lr == 1e-4 and model.hparams.name == "7" and model.hparams.cfg.model.hidden == 16
    assert model.net[2].bias.tolist() == [0.5]
    trainer = _trainer(tmp_path, 4)  # both were trained for 3 epochs: one more
    trainer.fit(model, _data(), ckpt_path=lightning_ckpt, weights_only=False)  # it holds a DictConfig
    steps_per_epoch = 4
    assert trainer.global_step == saved["global_step"] + steps_per_epoch
    optimizer_step = trainer.optimizers[0].state[model.net[0].weight]["step"]
    assert int(optimizer_step) == saved["global_step"] + steps_per_epoch  # AdamW's state came back
