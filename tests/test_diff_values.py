"""`ckptfs diff` sees everything two checkpoints hold, not only their
tensors: the non-tensor values of a pickle, of a safetensors header, of GGUF
metadata and of a distributed checkpoint, each by its path and both values;
every other file, added, removed or changed (text as a unified diff); and
"the same" (exit 0) only when nothing differs. The text, --json and the
exit status agree."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants
from safetensors.numpy import save_file

import ckptfs
from ckptfs import compare
from ckptfs.commands import arguments, build_parser

from .conftest import FIXTURES, run_ckptfs, write_safetensors

NEMO = FIXTURES / "nemo" / "tiny.nemo"
LIGHTNING = FIXTURES / "lightning" / "tiny.ckpt"
HF = FIXTURES / "hf" / "bert_tiny_sharded"


def _diff(a: Path, b: Path, *options: str) -> tuple[int, dict, list[str]]:
    """Exit status, the --json report and the text, checked to agree (the
    text made in this process from the report `ckptfs diff --json` gives,
    as the command makes it, to keep to one command per comparison)."""
    done = run_ckptfs("diff", "--json", *options, a, b)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["same"] == (done.returncode == 0)
    args = build_parser().parse_args(["diff", *options, str(a), str(b)])
    here = compare.compare(ckptfs.open(a), ckptfs.open(b), arguments.prefix_maps(args.map), args.include, args.exclude,
                           args.tensors_only)
    assert compare.json_safe(here) == report
    text = compare.text(here).splitlines()
    assert text[-1].endswith("; the checkpoints are the same") == report["same"], text
    return done.returncode, report, text


def _same_with_itself(path: Path) -> None:
    status, report, _ = _diff(path, path)
    assert status == 0 and report["values"] == [] and not any(report["files"].values()), report


def _lightning_like(epoch: int, lr: float) -> dict:
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return {"epoch": epoch, "global_step": 12 * epoch, "state_dict": {"net.0.weight": weight},
            "optimizer_states": [{"param_groups": [{"lr": lr, "betas": (0.9, 0.999), "params": [0]}],
                                  "state": {0: {"exp_avg": torch.zeros(2, 3)}}}]}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_two_pt_files_whose_epoch_and_lr_differ(tmp_path, zip_format):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(_lightning_like(3, 0.1), a, _use_new_zipfile_serialization=zip_format)
    torch.save(_lightning_like(4, 0.01), b, _use_new_zipfile_serialization=zip_format)
    status, report, text = _diff(a, b)
    assert status == 1 and report["equal"] == 2 and not any(report["files"].values())
    assert report["values"] == [{"path": "epoch", "a": "3", "b": "4"},
                                {"path": "global_step", "a": "36", "b": "48"},
                                {"path": "optimizer_states/0/param_groups/0/lr", "a": "0.1", "b": "0.01"}]
    assert "value: optimizer_states/0/param_groups/0/lr: 0.1 -> 0.01" in text and "value: epoch: 3 -> 4" in text
    assert text[-1] == "2 tensors bit-equal"
    _same_with_itself(a)
    # --include and --exclude choose values by path, as they choose tensors by name
    status, report, _ = _diff(a, b, "--exclude", "optimizer_states.*", "--exclude", "global_step")
    assert status == 1 and [v["path"] for v in report["values"]] == ["epoch"] and report["equal"] == 1
    status, report, _ = _diff(a, b, "--include", "state_dict.*")
    assert status == 0 and report["equal"] == 1
    status, report, _ = _diff(a, b, "--tensors-only")
    assert status == 0 and report["equal"] == 2


def test_a_lightning_checkpoint_whose_hyper_parameters_and_optimizer_differ(tmp_path):
    """The bundled Lightning 2.4 checkpoint, an omegaconf DictConfig in its
    hyper-parameters, saved again with other values."""
    checkpoint = torch.load(LIGHTNING, weights_only=False)
    checkpoint["hyper_parameters"]["cfg"]["model"]["dims"][1] = 32
    checkpoint["hyper_parameters"]["name"] = "run3"
    checkpoint["optimizer_states"][0]["param_groups"][1]["lr"] = 0.0007
    checkpoint["optimizer_states"][0]["param_groups"][1]["betas"] = (0.8, 0.999)
    del checkpoint["hparams_name"]
    torch.save(checkpoint, tmp_path / "tuned.ckpt")
    status, report, text = _diff(LIGHTNING, tmp_path / "tuned.ckpt")
    assert status == 1 and report["equal"] == 17 and report["files"]["changed"] == []
    assert report["files"]["removed"] == ["hparams_name.yaml"]
    assert report["values"] == [
        {"path": "hyper_parameters/cfg/model/dims/1", "a": "16", "b": "32"},
        {"path": "hyper_parameters/name", "a": "run2", "b": "run3"},
        {"path": "optimizer_states/0/param_groups/1/lr", "a": "0.0005", "b": "0.0007"},
        {"path": "optimizer_states/0/param_groups/1/betas/0", "a": "0.9", "b": "0.8"},
    ]
    assert "file only in A: hparams_name.yaml" in text
    _same_with_itself(LIGHTNING)


def _sentence_transformers(folder: Path, max_length: int, pooling: bool) -> Path:
    """A Hugging Face folder as sentence-transformers saves one: the model,
    a tokenizer config, and the pooling module's folder."""
    shutil.copytree(HF, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "model_max_length": max_length, "tokenizer_class": "BertTokenizer"}, indent=2) + "\n")
    (folder / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "Transformer"}]\n')
    if pooling:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 32}\n')
        (folder / "1_Pooling" / "extra.bin").write_bytes(bytes(range(256)))
    return folder


def test_hugging_face_folders_whose_tokenizer_config_and_pooling_differ(tmp_path):
    a = _sentence_transformers(tmp_path / "a", 512, pooling=True)
    b = _sentence_transformers(tmp_path / "b", 128, pooling=False)
    status, report, text = _diff(a, b)
    assert status == 1 and report["equal"] == 39 and report["values"] == []
    assert report["files"]["removed"] == ["1_Pooling/"] and report["files"]["added"] == []
    [change] = report["files"]["changed"]
    assert change["path"] == "tokenizer_config.json" and change["a"]["sha256"] != change["b"]["sha256"]
    assert '-  "model_max_length": 512,\n+  "model_max_length": 128,\n' in change["diff"]
    assert "file only in A: 1_Pooling/" in text and "+++ B/tokenizer_config.json" in text
    _same_with_itself(a)
    # a binary file: its size and hash
    (b / "1_Pooling").mkdir()
    shutil.copy(a / "1_Pooling" / "config.json", b / "1_Pooling")
    (b / "1_Pooling" / "extra.bin").write_bytes(bytes(range(255)))
    status, report, text = _diff(a, b)
    assert report["files"]["removed"] == [] and [c["path"] for c in report["files"]["changed"]] == [
        "1_Pooling/extra.bin", "tokenizer_config.json"]
    binary = report["files"]["changed"][0]
    assert "diff" not in binary and (binary["a"]["size"], binary["b"]["size"]) == (256, 255)
    assert binary["a"]["sha256"] != binary["b"]["sha256"]
    assert any(line.startswith("file differs: 1_Pooling/extra.bin: 256 bytes, sha256 ") for line in text)


def _nemo_with(path: Path, replace: dict[str, bytes], add: dict[str, bytes] = {}) -> Path:
    """The bundled .nemo with some members' bytes replaced and others added."""
    with tarfile.open(NEMO) as src, tarfile.open(path, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            for suffix, new in replace.items():
                if member.name.endswith(suffix):
                    data, member.size = new, len(new)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
        for name, data in add.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return path


def test_a_nemo_whose_artifacts_differ(tmp_path):
    changed = _nemo_with(tmp_path / "changed.nemo", {"_vocab.txt": b"[PAD]\n[UNK]\nhello\n"},
                         {"README.md": b"# a note\n"})
    status, report, text = _diff(NEMO, changed)
    assert status == 1 and report["equal"] == 8 and report["values"] == []
    assert report["files"]["added"] == ["README.md"]
    [change] = report["files"]["changed"]
    assert change["path"].endswith("_vocab.txt") and "+hello\n" in change["diff"]
    assert "file only in B: README.md" in text


def test_safetensors_metadata_and_a_gguf_s_metadata_and_quantized_tensor(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_file({"w": weight}, str(tmp_path / "a.safetensors"), metadata={"format": "pt", "step": "100"})
    save_file({"w": weight}, str(tmp_path / "b.safetensors"), metadata={"format": "pt", "step": "200"})
    status, report, text = _diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert status == 1 and report["equal"] == 1
    assert report["values"] == [{"path": "__metadata__/step", "a": "'100'", "b": "'200'"}]
    assert "value: __metadata__/step: '100' -> '200'" in text

    rows = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    for name, title, scale, quantized_scale in (("a", "tiny", 1, 1), ("b", "tinier", 1, 1), ("c", "tiny", 1, 3),
                                                 ("d", "tiny", 2, 1)):
        writer = GGUFWriter(str(tmp_path / f"{name}.gguf"), "llama")
        writer.add_string("general.name", title)
        writer.add_tensor("f", rows * scale)
        packed = quants.quantize(rows * quantized_scale, GGMLQuantizationType.Q8_0)
        writer.add_tensor("q", packed, raw_shape=packed.shape, raw_dtype=GGMLQuantizationType.Q8_0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    status, report, _ = _diff(tmp_path / "a.gguf", tmp_path / "b.gguf")
    assert status == 1 and report["equal"] == 1 and not any(report["files"].values())
    assert report["values"] == [{"path": "metadata/general.name", "a": '"tiny"', "b": '"tinier"'}]
    status, report, _ = _diff(tmp_path / "a.gguf", tmp_path / "c.gguf")  # the quantized tensor, by its stored bytes
    assert status == 1 and report["values"] == [] and [c["path"] for c in report["files"]["changed"]] == ["q/raw.bin"]
    status, report, _ = _diff(tmp_path / "a.gguf", tmp_path / "d.gguf")  # a float tensor: as a tensor, once
    assert status == 1 and list(report["differing"]) == ["f"] and not any(report["files"].values())
    _same_with_itself(tmp_path / "a.gguf")


def test_npz_members_that_are_no_tensors(tmp_path):
    np.savez(tmp_path / "a.npz", w=np.ones(3), names=np.array(["enc", "dec"]))
    np.savez(tmp_path / "b.npz", w=np.ones(3), names=np.array(["enc", "dex"]))
    status, report, text = _diff(tmp_path / "a.npz", tmp_path / "b.npz")
    assert status == 1 and report["equal"] == 1
    assert [c["path"] for c in report["files"]["changed"]] == ["names.npy"]


def test_a_distributed_checkpoint_whose_items_and_files_differ(tmp_path):
    import torch.distributed.checkpoint as dcp

    for name, step in (("a", 3), ("b", 4)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.distributed is disabled ... a single process"
            dcp.save({"model": {"w": torch.ones(3, 2)}, "extra": {"step": step, "note": io.BytesIO(b"seed 1")}},
                     checkpoint_id=tmp_path / name, no_dist=True)
    (tmp_path / "b" / "notes.txt").write_text("trained one more epoch\n")
    status, report, text = _diff(tmp_path / "a", tmp_path / "b")
    assert status == 1 and report["equal"] == 1
    assert report["values"] == [{"path": "extra/step", "a": "3", "b": "4"}]
    assert report["files"]["added"] == ["notes.txt"]
    _same_with_itself(tmp_path / "a")
    _same_with_itself(FIXTURES / "dcp" / "fsdp2_2rank")
    _same_with_itself(HF)
    _same_with_itself(NEMO)


def test_cosine_of_an_all_zero_tensor_is_undefined(tmp_path):
    zeros = np.zeros(4, np.float32)
    negative_zero = zeros.copy()
    negative_zero[1] = -0.0  # bits that differ, values that do not
    save_file({"one": zeros, "both": zeros, "signed": zeros, "equal": zeros}, str(tmp_path / "a.safetensors"))
    save_file({"one": np.array([0, 2, 0, 0], np.float32), "both": zeros, "signed": negative_zero,
               "equal": zeros.copy()}, str(tmp_path / "b.safetensors"))
    status, report, text = _diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert status == 1 and report["equal"] == 2  # "both" and "equal": all zero and bit-equal
    assert list(report["differing"]) == ["one", "signed"]
    assert report["differing"]["one"]["cosine"] is None and report["differing"]["signed"]["cosine"] is None
    assert report["differing"]["signed"]["max_abs_diff"] == 0
    assert "differs: one: 1 of 4 elements, max abs diff 2, max rel diff 1, cosine n/a (zero vector)" in text
    assert not any("0.000000" in line for line in text)
    save_file({"z": zeros}, str(tmp_path / "c.safetensors"))
    save_file({"z": zeros[:1]}, str(tmp_path / "d.safetensors"))
    status, report, text = _diff(tmp_path / "c.safetensors", tmp_path / "c.safetensors")
    assert status == 0 and text[-1] == "1 tensor bit-equal; the checkpoints are the same"
    save_file({"z": np.ones(1, np.float32)}, str(tmp_path / "e.safetensors"))
    status, report, text = _diff(tmp_path / "d.safetensors", tmp_path / "e.safetensors")
    assert text == ["differs: z: 1 of 1 element, max abs diff 1, max rel diff 1, cosine n/a (zero vector)",
                    "0 tensors bit-equal"]


def test_a_count_of_one_takes_the_singular(tmp_path):
    """"1 tensors" and its kin, in diff, info, the API and error messages."""
    save_file({"only": np.ones(3, np.float32)}, str(tmp_path / "one.safetensors"))
    status, _, text = _diff(tmp_path / "one.safetensors", tmp_path / "one.safetensors")
    assert text == ["1 tensor bit-equal; the checkpoints are the same"]
    info = run_ckptfs("info", tmp_path / "one.safetensors").stdout
    assert "tensors     1, 3 parameters, 12 bytes" in info and " 1 tensor " in info and "1 tensors" not in info
    assert repr(ckptfs.open(tmp_path / "one.safetensors")).endswith(": 1 tensor>")
    longer = write_safetensors(tmp_path / "longer.safetensors",
                               {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(5))
    done = run_ckptfs("info", longer)
    assert done.returncode == 1 and done.stderr == (
        f"ckptfs: {longer}: 1 byte after the last tensor's data; the data area must end the file\n")


def test_keys_that_read_alike_are_told_apart(tmp_path):
    torch.save({"w": torch.ones(2), "ids": {0: "pad", "0": "pad"}}, tmp_path / "a.pt")
    torch.save({"w": torch.ones(2), "ids": {0: "pad", "0": "unk"}}, tmp_path / "b.pt")
    status, report, text = _diff(tmp_path / "a.pt", tmp_path / "b.pt")
    assert status == 1 and report["values"] == [{"path": "ids/'0'", "a": "pad", "b": "unk"}]


def test_a_large_file_beside_the_weights_is_never_hashed_whole(tmp_path):
    """Files over 1 MiB of different sizes differ without a byte read; of one
    size, they are compared up to the first block that differs, and the
    answer says where."""
    sides = []
    for name, blob in (("a", b"\0" * (3 << 20)), ("b", b"\0" * (2 << 20) + b"\1" + b"\0" * ((1 << 20) - 1))):
        folder = tmp_path / name
        folder.mkdir()
        save_file({"w": np.ones(2, np.float32)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text('{"model_type": "bert"}')
        (folder / "same.bin").write_bytes(blob)
        (folder / "sized.bin").write_bytes(bytes((2 << 20) + {"a": 1, "b": 2}[name]))
        sides.append(folder)
    done = run_ckptfs("diff", *sides, "--json")
    assert done.returncode == 1, done.stderr
    changed = {c["path"]: c for c in json.loads(done.stdout)["files"]["changed"]}
    assert changed["same.bin"]["differs_at"] == 2 << 20
    assert changed["same.bin"]["a"] == {"size": 3 << 20}
    assert changed["sized.bin"]["a"] == {"size": (2 << 20) + 1} and "differs_at" not in changed["sized.bin"]
    text = run_ckptfs("diff", *sides).stdout
    assert "file differs: same.bin: 3,145,728 bytes -> 3,145,728 bytes (first at byte 2,097,152)" in text
