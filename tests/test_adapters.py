"""PEFT LoRA adapters: the folder as it is, and `merged/`, its base with
the adapter merged on read, against PEFT's own `merge_and_unload` on CPU
in float32 (formats/adapter.py, formats/lora_merge.py).

LoRA, rsLoRA, rank and alpha patterns, an embedding, fan_in_fan_out (with
lora_bias), modules_to_save and adapters saved as adapter_model.bin are
bit-exact: the tests' ranks are small, and NumPy's float32 B·A then sums
the rank's products as torch does. DoRA divides by
each row's norm, which torch sums in its own vectorised order: within 4
units in the last place of float32 (measured: 1).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
import yaml

from .conftest import run_ckptfs

#: PEFT and transformers warn of their own deprecations, and of what the
#: tests ask on purpose (fan_in_fan_out, an embedding saved with its adapter)
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
IDS = [[1, 5, 7, 11, 42, 3, 99, 0]]


def _llama(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _gpt2(folder: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def _adapter(base: Path, folder: Path, seed: int = 1, safe_serialization: bool = True, **settings) -> Path:
    """A LoRA adapter of `base` with random (nonzero) A and B, as PEFT saves it."""
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    config = peft.LoraConfig(init_lora_weights=False, **settings)
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():  # a trained magnitude (DoRA's starts as the base's own norms)
        for name, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(torch.rand_like(p) + 0.5)
    peft_model.save_pretrained(folder, safe_serialization=safe_serialization)
    return folder


def _merged_by_peft(base: Path, adapter: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return peft.PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


def _tensors_below(folder: Path) -> dict[str, np.ndarray]:
    return {".".join(p.relative_to(folder).with_suffix("").parts): np.load(p) for p in folder.rglob("*.npy")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    llama, gpt2 = _llama(root / "llama"), _gpt2(root / "gpt2")
    return {
        "llama": llama, "gpt2": gpt2,
        "lora": _adapter(llama, root / "lora", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"],
                         modules_to_save=["lm_head"], rank_pattern={"model.layers.1.self_attn.q_proj": 3},
                         alpha_pattern={"v_proj": 5}),
        "rslora": _adapter(llama, root / "rslora", r=4, lora_alpha=6, use_rslora=True,
                           target_modules=["o_proj", "gate_proj", "down_proj"]),
        "dora": _adapter(llama, root / "dora", r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "up_proj"]),
        "torch-saved": _adapter(llama, root / "torch-saved", r=4, lora_alpha=8, target_modules=["k_proj", "lm_head"],
                                safe_serialization=False),
        "conv1d": _adapter(gpt2, root / "conv1d", r=4, lora_alpha=8, fan_in_fan_out=True, lora_bias=True,
                           target_modules=["c_attn", "c_proj"]),
    }


def _check_merged(mnt: Path, reference) -> None:
    """Every tensor of merged/ is the reference model's (the state dict
    after merge_and_unload), bit for bit, and no tensor of it is missing."""
    got = _tensors_below(mnt / "merged")
    want = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    tied = {k for k in want if k not in got and k == "lm_head.weight"}  # tied to the embedding: not stored
    assert set(got) == set(want) - tied
    for name, values in got.items():
        assert values.dtype == want[name].dtype and values.shape == want[name].shape, name
        np.testing.assert_array_equal(values, want[name], err_msg=name)


@pytest.mark.parametrize("kind", ["lora", "rslora", "conv1d", "torch-saved"])
def test_merged_is_peft_merge_and_unload_bit_for_bit(kind, models, mount):
    base = models["gpt2" if kind == "conv1d" else "llama"]
    mnt = mount(models[kind], "-o", f"base={base}")
    _check_merged(mnt, _merged_by_peft(base, models[kind]))
    assert (mnt / "adapter_config.json").read_bytes() == (models[kind] / "adapter_config.json").read_bytes()
    stored = _tensors_below(mnt / ("adapter_model.bin" if kind == "torch-saved" else "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") for name in stored)


def test_unadapted_tensors_are_the_bases_bytes_and_adapted_ones_say_what_made_them(models, mount):
    mnt = mount(models["lora"], "-o", f"base={models['llama']}")
    norm = mnt / "merged" / "model" / "norm" / "weight.npy"
    assert os.getxattr(norm, "user.ckptfs.source").decode() == str(models["llama"] / "model.safetensors")
    q = mnt / "merged" / "model" / "layers" / "1" / "self_attn" / "q_proj" / "weight.npy"
    made = os.getxattr(q, "user.ckptfs.merged_from").decode()
    assert "q_proj.lora_A.weight" in made and made.endswith(f"× {8 / 3!r}")  # rank_pattern's r=3
    lm_head = mnt / "merged" / "lm_head" / "weight.npy"  # modules_to_save: the adapter's copy, where it lies
    assert os.getxattr(lm_head, "user.ckptfs.source").decode() == str(models["lora"] / "adapter_model.safetensors")
    assert json.loads((mnt / "merged" / "config.json").read_text())["hidden_size"] == 32
    with pytest.raises(OSError) as refused:
        q.write_bytes(b"x")
    assert refused.value.errno in (errno.EROFS, errno.EACCES)


def test_a_partial_read_of_a_merged_weight_is_its_rows(models, mount):
    mnt = mount(models["lora"], "-o", f"base={models['llama']}")
    path = mnt / "merged" / "model" / "embed_tokens" / "weight.npy"  # transposed delta, the adapter's base copy
    whole = path.read_bytes()
    with open(path, "rb") as f:
        f.seek(len(whole) - 1000)
        assert f.read(777) == whole[-1000:-223]


def test_dora_within_four_units_in_the_last_place(models, mount):
    mnt = mount(models["dora"], "-o", f"base={models['llama']}")
    reference = _merged_by_peft(models["llama"], models["dora"])
    got = _tensors_below(mnt / "merged")
    for name, want in reference.state_dict().items():
        np.testing.assert_array_max_ulp(got[name], want.numpy(), maxulp=4)
    q = reference.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    base = transformers.AutoModelForCausalLM.from_pretrained(models["llama"]).state_dict()
    assert not torch.equal(q, base["model.layers.0.self_attn.q_proj.weight"])


def test_the_base_is_found_in_the_hugging_face_cache(models, mount, tmp_path, monkeypatch):
    adapter = shutil.copytree(models["lora"], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-org/tiny-llama"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing-here"))
    mnt = mount(adapter)
    assert not (mnt / "merged").exists()
    info = (mnt / ".ckptfs" / "info.yaml").read_text()
    assert "tiny-org/tiny-llama" in info and "-o base=PATH" in info
    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(models["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _check_merged(mount(adapter), _merged_by_peft(models["llama"], models["lora"]))


def test_export_of_the_merged_model_loads_with_from_pretrained_and_gives_peft_s_logits(models, tmp_path, mount):
    out = tmp_path / "merged-model"
    done = run_ckptfs("export", models["lora"], out, "--to", "hf", "--base", models["llama"])
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").read_bytes() == (models["llama"] / "config.json").read_bytes()
    view = mount(models["lora"], "-o", f"base={models['llama']}") / ".ckptfs" / "export" / "merged" / "hf"
    assert sorted(p.name for p in view.iterdir()) == sorted(p.name for p in out.iterdir())
    assert all((view / p.name).read_bytes() == p.read_bytes() for p in out.iterdir())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = _merged_by_peft(models["llama"], models["lora"])
    with torch.no_grad():
        assert torch.equal(loaded(torch.tensor(IDS)).logits, reference(torch.tensor(IDS)).logits)


def test_an_adapter_that_does_not_fit_its_base_is_refused_file_by_file(models, mount, tmp_path):
    wider = _adapter(_llama(tmp_path / "wider", hidden=48), tmp_path / "wide-lora", r=4, lora_alpha=8,
                     target_modules=["q_proj"])
    mnt = mount(wider, "-o", f"base={models['llama']}", log_errors_expected=True)
    q = mnt / "merged" / "model" / "layers" / "0" / "self_attn" / "q_proj" / "weight.npy"
    with pytest.raises(OSError) as failed:
        q.read_bytes()
    assert failed.value.errno == errno.EIO
    problem = os.getxattr(q, "user.ckptfs.problem").decode()
    assert "\n" not in problem and "fits neither the base tensor's [32, 32]" in problem
    assert np.load(mnt / "merged" / "model" / "norm" / "weight.npy").shape == (32,)  # the rest is served
    assert "not merged" in (mnt / ".ckptfs" / "info.yaml").read_text()
    done = run_ckptfs("export", wider, tmp_path / "out", "--to", "hf", "--base", models["llama"])
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot be written" in done.stderr and not (tmp_path / "out").exists()


def test_base_is_refused_in_one_line_for_what_is_no_adapter(models, mnt):
    done = run_ckptfs("mount", models["llama"], mnt, "-o", f"base={models['llama']}", "--foreground")
    assert done.returncode == 1 and "-o base= is for a PEFT adapter" in done.stderr
    assert "Traceback" not in done.stderr


def test_hostile_keys_and_ranks_break_only_their_own_module(models, mount, tmp_path):
    """A key that climbs with ../ names no base tensor (a note); a rank the
    tensors do not have refuses its module's file; nothing else moves."""
    from safetensors.numpy import load_file, save_file

    adapter = shutil.copytree(models["lora"], tmp_path / "hostile")
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["base_model.model.../../etc/passwd.lora_A.weight"] = np.ones((4, 32), np.float32)
    tensors["base_model.model.../../etc/passwd.lora_B.weight"] = np.ones((32, 4), np.float32)
    save_file(tensors, adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["rank_pattern"]["model.layers.0.self_attn.v_proj"] = 1 << 20
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    mnt = mount(adapter, "-o", f"base={models['llama']}", log_errors_expected=True)
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert any("passwd.weight to merge it into" in n for n in notes), notes
    assert len([n for n in notes if "not merged" in n]) == 1, notes
    v = mnt / "merged" / "model" / "layers" / "0" / "self_attn" / "v_proj" / "weight.npy"
    assert "the config's rank for it is 1048576" in os.getxattr(v, "user.ckptfs.problem").decode()
    want = _merged_by_peft(models["llama"], models["lora"]).state_dict()
    got = np.load(mnt / "merged" / "model" / "layers" / "1" / "self_attn" / "v_proj" / "weight.npy")
    np.testing.assert_array_equal(got, want["model.layers.1.self_attn.v_proj.weight"].numpy())
    assert not list(tmp_path.rglob("passwd*"))


def test_edits_go_to_the_adapter_and_merged_stays_out_of_it(models, mount, tmp_path):
    from safetensors.numpy import load_file

    adapter = shutil.copytree(models["lora"], tmp_path / "edited")
    before = load_file(adapter / "adapter_model.safetensors")
    mnt = mount(adapter, "-o", f"base={models['llama']}")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    path = mnt.joinpath(*key.split(".")[:-1], "weight.npy")
    np.save(path, np.zeros_like(before[key]))
    done = run_ckptfs("umount", mnt, "--timeout", "60")
    assert done.returncode == 0, done.stderr
    after = load_file(adapter / "adapter_model.safetensors")
    assert set(after) == set(before) and not after[key].any()
    assert sorted(p.name for p in adapter.iterdir()) == sorted(p.name for p in models["lora"].iterdir())


def test_a_bfloat16_base_is_rounded_once_from_float32(models, mount, tmp_path):
    """The merge in float32 of the base's bfloat16 values, rounded to
    nearest even once; PEFT rounds the delta to bfloat16 before adding it,
    so the two differ by at most one unit in bfloat16's last place."""
    model = transformers.AutoModelForCausalLM.from_pretrained(models["llama"], dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    mnt = mount(models["lora"], "-o", f"base={tmp_path / 'bf16'}")
    name = "model.layers.0.self_attn.q_proj.weight"
    data = mnt.joinpath("merged", *name.split(".")[:-1], "weight.npy").read_bytes()[-32 * 32 * 2:]  # after the header
    got = torch.frombuffer(bytearray(data), dtype=torch.bfloat16).reshape(32, 32)
    lora = peft.PeftModel.from_pretrained(model, models["lora"])
    module = lora.base_model.model.model.layers[0].self_attn.q_proj
    w = module.base_layer.weight.float()
    delta = (module.lora_B["default"].weight @ module.lora_A["default"].weight).float() * module.scaling["default"]
    assert torch.equal(got, (w + delta).to(torch.bfloat16))
    peft_merged = lora.merge_and_unload().state_dict()[name]
    ulps = (got.view(torch.int16).int() - peft_merged.view(torch.int16).int()).abs()
    assert ulps.max() <= 1


def test_the_base_may_be_a_hub_repository(models, mount, tmp_path, monkeypatch):
    from .remote_servers import HubServer

    hub = HubServer(models["llama"])
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        mnt = mount(models["lora"], "-o", "base=hf://org/model@main")
        _check_merged(mnt, _merged_by_peft(models["llama"], models["lora"]))
    finally:
        hub.close()


def test_a_factor_past_what_a_merge_holds_is_refused_for_its_module(models, tmp_path, monkeypatch):
    from ckptfs.formats import lora_merge, open_checkpoint

    monkeypatch.setattr(lora_merge, "MAX_FACTOR_BYTES", 4 * 32 * 4 - 1)  # one byte short of a 4 x 32 lora_A
    merged = open_checkpoint(str(models["rslora"]), str(tmp_path), str(models["llama"])).merged
    refused = [n for n in merged.notes if "not merged" in n]
    assert len(refused) == 6 and all("of float32 ckptfs holds to merge one module" in n for n in refused), refused


def test_the_api_gives_the_merged_model(models):
    import ckptfs

    merged = ckptfs.open(models["lora"], base=models["llama"]).merged
    want = _merged_by_peft(models["llama"], models["lora"]).state_dict()
    name = "model.layers.1.self_attn.q_proj.weight"
    np.testing.assert_array_equal(merged.tensor(name), want[name].numpy())
    assert ckptfs.open(models["llama"]).merged is None


def test_trainable_tokens_refuse_their_embedding_rather_than_show_it_unchanged(models, mount, tmp_path):
    """PEFT's trainable tokens replace rows of an embedding, which ckptfs
    does not merge: merged/'s embedding fails to read with the reason,
    never the base's rows shown as if merged."""
    adapter = _adapter(models["llama"], tmp_path / "tokens", r=4, lora_alpha=8, target_modules=["q_proj"],
                       trainable_token_indices=[3, 5])
    mnt = mount(adapter, "-o", f"base={models['llama']}", log_errors_expected=True)
    embedding = mnt / "merged" / "model" / "embed_tokens" / "weight.npy"
    with pytest.raises(OSError) as failed:
        embedding.read_bytes()
    assert failed.value.errno == errno.EIO
    assert "trainable tokens" in os.getxattr(embedding, "user.ckptfs.problem").decode()
    assert np.load(mnt / "merged" / "model" / "norm" / "weight.npy").shape == (32,)  # the rest is served
