"""`ckptfs stats` and `ckptfs.stats`: every measure equal to NumPy's on the
same values (min, max and counts exactly, mean and std to float64 rounding,
the histogram bin for bin as `np.histogram` makes it), over every format of
the samples, bfloat16 and float8 decoded without ml_dtypes, quantized
weights by their dequantized values; sampled reads; per-tensor errors; and
memory bounded under an address-space limit on a tensor of 8 GB."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter, quants
from safetensors.numpy import save_file

import ckptfs
from ckptfs.compare import json_safe
from ckptfs.errors import CkptfsError
from ckptfs.tensor_stats import decode, measure, table, tensor

from .conftest import CKPTFS, FIXTURES, REPO, run_ckptfs

SAMPLES = [FIXTURES / "nemo" / "tiny.nemo", FIXTURES / "lightning" / "tiny.ckpt", FIXTURES / "hf" / "bert_tiny_sharded",
           FIXTURES / "dcp" / "fsdp2_2rank", FIXTURES / "pt2" / "tiny.pt2"]
FLOAT8 = ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"]


def expected(array: np.ndarray, bins: int = 32) -> dict:
    """The measures of `array` as NumPy gives them (complex: of the magnitudes)."""
    values = np.abs(array) if array.dtype.kind == "c" else array.astype(np.uint8) if array.dtype == bool else array
    wide = values.astype(np.float64).ravel()
    finite = np.isfinite(wide)
    kept = values.ravel()[finite]
    out = {"elements": array.size, "counted": array.size, "nan": int(np.isnan(wide).sum()),
           "posinf": int((wide == np.inf).sum()), "neginf": int((wide == -np.inf).sum()), "zeros": int((wide == 0).sum())}
    if not kept.size:
        return {**out, "min": None, "max": None, "mean": None, "std": None, "histogram": None}
    counts, edges = np.histogram(wide[finite], bins)
    return {**out, "min": kept.min().item(), "max": kept.max().item(), "mean": np.mean(wide[finite]),
            "std": np.std(wide[finite]), "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def assert_measured(got: dict, array: np.ndarray, bins: int = 32) -> None:
    want = expected(array, bins)
    assert got["error"] is None, got["error"]
    for key in ("elements", "counted", "nan", "posinf", "neginf", "zeros", "min", "max", "histogram"):
        assert got[key] == want[key], (got["name"], key, got[key], want[key])
    for key in ("mean", "std"):
        if want[key] is None:
            assert got[key] is None
        else:  # float64 sums of the same values in another order
            scale = max(abs(want["min"]), abs(want["max"]), 1e-300)
            assert abs(got[key] - want[key]) <= 1e-12 * scale, (got["name"], key, got[key], want[key])


def planted() -> dict[str, np.ndarray]:
    """Every numeric dtype the dtype table serves as NPY, NaN, ±inf and zeros planted."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((40, 30)) * 3
    base[0, :3] = [np.nan, np.inf, -np.inf]
    base[1, :4] = 0
    tensors = {name: base.astype(name) for name in ("float16", "float32", "float64")}
    tensors["bfloat16"] = base.astype(ml_dtypes.bfloat16)
    tensors |= {name: base.astype(getattr(ml_dtypes, name)) for name in FLOAT8 if name != "float8_e8m0fnu"}
    tensors["float8_e8m0fnu"] = np.abs(base[2:]).astype(ml_dtypes.float8_e8m0fnu)  # positive powers of two
    tensors |= {name: rng.integers(np.iinfo(name).min, np.iinfo(name).max, 999, dtype=name, endpoint=True)
                for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")}
    tensors["bool"] = rng.random(77) < 0.3
    tensors["complex64"] = (base[2:] + 1j * base[2:].T[:38].T).astype(np.complex64)
    tensors["all_nan"] = np.full(5, np.nan, np.float32)
    tensors["constant"] = np.full((3, 3), 2.5, np.float32)
    tensors["on_edges"] = np.repeat(np.linspace(-3, 5, 33), 5)  # every value on a border of the bins
    tensors["empty"] = np.zeros((0, 4), np.float32)
    tensors["scalar"] = np.array(-1.25, np.float32)
    return tensors


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "planted.safetensors"
    save_file(planted(), str(path))
    return path


@pytest.mark.parametrize("name", FLOAT8)
def test_float8_tables_hold_the_values_ml_dtypes_gives(name):
    want = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name)).astype(np.float32)
    got = decode.float8_table(name)
    assert np.array_equal(got, want, equal_nan=True)
    numbers = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))  # negative zero is kept


def test_bfloat16_decodes_bit_for_bit():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = decode.decoder("bfloat16").values(bits)
    assert np.array_equal(got, bits.view(ml_dtypes.bfloat16).astype(np.float32), equal_nan=True)


def test_every_dtype_measured_as_numpy_measures_it(planted_file):
    stats = ckptfs.stats(planted_file, bins=16)
    arrays = dict(sorted(planted().items()))  # the arrays written, in safetensors' order
    assert [t["name"] for t in stats] == list(arrays)
    for name, array in arrays.items():
        assert_measured(stats[name], array, 16)
        assert stats[name]["dtype"] == str(array.dtype) and stats[name]["shape"] == list(array.shape)


def test_chunks_combine_to_the_measures_of_the_whole(planted_file, monkeypatch):
    monkeypatch.setattr(tensor, "CHUNK_BYTES", 40)  # many chunks per tensor, and a second read for the bins
    stats = ckptfs.stats(planted_file, jobs=3)
    for name, array in planted().items():
        assert_measured(stats[name], array)


@pytest.mark.parametrize("source", SAMPLES, ids=lambda p: p.name)
def test_every_tensor_of_the_samples(source):
    ckpt = ckptfs.open(source)
    stats = ckptfs.stats(ckpt)
    infos = ckpt.tensors(dequantized=True)
    assert [t["name"] for t in stats] == [t.name for t in infos] and infos
    for info in infos:
        assert_measured(stats[info.name], np.asarray(ckpt.tensor(info.name, dequantized=True)))


def write_gguf(path):
    values = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    w = GGUFWriter(str(path), "llama")
    w.add_tensor("plain", values[:1])
    q = quants.quantize(values, GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.w", q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values, quants.dequantize(q, GGMLQuantizationType.Q8_0)


def test_quantized_weights_are_measured_by_their_values_or_their_parts(tmp_path):
    values, dequantized = write_gguf(tmp_path / "q.gguf")
    stats = ckptfs.stats(tmp_path / "q.gguf")
    assert [(t["name"], t["dequantized"]) for t in stats] == [("plain", False), ("blk.0.w", True)]
    assert_measured(stats["plain"], values[:1])
    assert_measured(stats["blk.0.w"], dequantized)  # bit for bit gguf's own dequantization
    raw = ckptfs.stats(tmp_path / "q.gguf", raw=True)
    assert all(not t["dequantized"] for t in raw) and [t["name"] for t in raw] == ["plain", "blk.0.w"]
    assert_measured(raw["plain"], values[:1])


def test_raw_says_what_a_gguf_block_tensor_is_and_paths_name_it(tmp_path):
    """--raw has no measure of a GGUF's Q8_0 blocks (no stored tensor holds
    them): the tensor is listed with its GGML type and why, not left out,
    and PATH names it (by name, or its raw.bin) as it names any tensor."""
    write_gguf(tmp_path / "q.gguf")
    why = "Q8_0 blocks: no raw measure; leave out --raw for its values"
    entry = ckptfs.stats(tmp_path / "q.gguf", raw=True)["blk.0.w"]
    assert (entry["dtype"], entry["shape"], entry["path"], entry["error"]) == ("Q8_0", [4, 64], "blk/0/w/raw.bin", why)
    for path in ("blk.0.w", "blk/0/w/raw.bin", "blk"):
        done = run_ckptfs("stats", tmp_path / "q.gguf", path, "--raw")
        assert (done.returncode, done.stderr) == (1, ""), done.stderr
        assert done.stdout.splitlines()[1].split() == ["blk.0.w", "Q8_0", "4x64", "error:", *why.split()]
    assert run_ckptfs("stats", tmp_path / "q.gguf", "plain", "--raw").returncode == 0


def test_the_cli_prints_the_api_report(planted_file):
    done = run_ckptfs("stats", "--json", "--bins", "8", planted_file)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads(json.dumps(json_safe(ckptfs.stats(planted_file, bins=8).as_dict())))
    assert (report["source"], report["format"], report["sample"], report["bins"]) == (
        str(planted_file), "safetensors", None, 8)
    text = run_ckptfs("stats", planted_file, "float32", "int8")
    rows = text.stdout.splitlines()
    assert text.returncode == 0 and rows[0].split() == list(table.COLUMNS)
    assert rows[1].startswith("! float32 ") and rows[2].startswith("  int8 ")
    assert rows[3] == "! 1 tensor with NaN or inf: float32"


def test_paths_name_tensors_files_and_folders():
    source = FIXTURES / "nemo" / "tiny.nemo"
    infos = {t.name: t.path for t in ckptfs.open(source).tensors()}
    name, path = next(iter(infos.items()))
    folder = path.rsplit("/", 2)[0]
    assert [t["name"] for t in ckptfs.stats(source, [name])] == [name]
    assert [t["name"] for t in ckptfs.stats(source, [path])] == [name]
    below = [n for n, p in infos.items() if p.startswith(folder + "/")]
    assert [t["name"] for t in ckptfs.stats(source, [folder + "/"])] == below and len(below) > 1
    assert [t["name"] for t in ckptfs.stats(source, exclude=["*.weight"])] == [
        n for n in infos if not n.endswith(".weight")]
    done = run_ckptfs("stats", source, "no.such.tensor")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"ckptfs: {source}: no.such.tensor: no such tensor, tensor file or folder of tensors\n"


def test_sampled_reads_are_spread_deterministic_and_measured_as_numpy(tmp_path, monkeypatch):
    array = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    array[::1000] = np.nan
    save_file({"w": array}, str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(tensor, "CHUNK_BYTES", 1000)
    first, again = (ckptfs.stats(tmp_path / "w.safetensors", sample=5000)["w"] for _ in range(2))
    assert first == again
    runs = tensor.runs(array.size, 10**9, 5000)
    assert len(runs) == tensor.SAMPLE_RUNS and runs[0][0] == 0 and sum(runs[-1]) == 100_000
    assert all(a + n < b for (a, n), (b, _) in zip(runs, runs[1:]))  # apart, spread from first to last element
    seen = np.concatenate([array[start:start + count] for start, count in runs])
    assert first["counted"] == seen.size == 5000 and first["elements"] == 100_000
    assert_measured({**first, "counted": seen.size, "elements": seen.size}, seen)
    whole = ckptfs.stats(tmp_path / "w.safetensors", sample=10**6)["w"]
    assert whole["counted"] == 100_000  # more asked for than there are: every element
    done = run_ckptfs("stats", "--sample", "100", tmp_path / "w.safetensors")
    assert "sampled: about 100 elements of each tensor, not all (--sample)" in done.stdout.splitlines()


def test_a_tensor_that_cannot_be_read_is_its_own_error(planted_file, tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(planted_file.read_bytes())
    ckpt = ckptfs.open(damaged)
    ends = data_ends(damaged)
    os.truncate(damaged, os.path.getsize(damaged) - 1)  # a shard damaged after it was opened
    stats = ckptfs.stats(ckpt)
    broken = [t for t in stats if t["error"] is not None]
    assert [t["name"] for t in broken] == [max(ends, key=ends.get)] and "\n" not in broken[0]["error"]
    assert str(damaged) in broken[0]["error"] and broken[0]["min"] is None and broken[0]["histogram"] is None
    for name, array in planted().items():
        if name != broken[0]["name"]:
            assert_measured(stats[name], array)
    assert table.text(stats).splitlines()[-1] == "1 tensor not measured (error above)"


def data_ends(path) -> dict[str, int]:
    """Where each tensor's bytes end in a safetensors file."""
    size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + size])
    return {k: v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"}


def test_hostile_arguments_are_one_line():
    source = FIXTURES / "nemo" / "tiny.nemo"
    for args, message in [(["--bins", "0"], "--bins: '0': give a whole number, 1 or more"),
                          (["--bins", "20000"], "--bins 20000: give between 1 and 10,000 bins")]:
        done = run_ckptfs("stats", source, *args)
        assert done.returncode in (1, 2) and message in done.stderr and "Traceback" not in done.stderr


def sparse_safetensors(path, elements: int) -> None:
    """One float32 tensor of zeros, its data a hole: `elements` × 4 bytes on no disk."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [elements], "data_offsets": [0, 4 * elements]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 4 * elements)


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.timeout(660)
@pytest.mark.parametrize("elements, sample", [(1 << 31, None), (1 << 31, 1_000_000)], ids=["exact-8GiB", "sampled-8GiB"])
def test_memory_stays_bounded_on_a_tensor_larger_than_the_limit(tmp_path, elements, sample):
    """8 GiB of float32 zeros (a sparse file) under a 1 GiB address-space
    limit: a map of the tensor fails, chunked reads do not. Every element
    (7 s on a quiet machine, about a minute on a busy one), then a sample."""
    path = tmp_path / "big.safetensors"
    sparse_safetensors(path, elements)
    options = [] if sample is None else ["--sample", str(sample)]
    done = subprocess.run(CKPTFS + ["stats", "--json", *options, str(path)], capture_output=True, text=True,
                          timeout=600, preexec_fn=_limited, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    (got,) = json.loads(done.stdout)["tensors"]
    counted = sample or elements
    assert (got["elements"], got["counted"], got["zeros"], got["min"], got["max"], got["mean"], got["std"]) == (
        elements, counted, counted, 0.0, 0.0, 0.0, 0.0)
    assert got["histogram"]["counts"][16] == counted and sum(got["histogram"]["counts"]) == counted
    mapped = subprocess.run([sys.executable, "-c", f"import numpy; numpy.memmap({str(path)!r}, 'f4', 'r')"],
                            capture_output=True, text=True, timeout=60, preexec_fn=_limited)
    assert mapped.returncode != 0 and ("MemoryError" in mapped.stderr or "mmap" in mapped.stderr)


@pytest.mark.parametrize("values", [
    np.random.default_rng(2).standard_normal(200_000).astype(np.float32),
    np.linspace(-1, 1, 70_001),  # values on the borders
    np.arange(-5000, 5000, dtype=np.int64),
    np.array([0, 1e-300, 1e300]),
    1e10 + np.linspace(0, 1e-2, 1000),  # a range near the rounding of its magnitude
    np.array([5e-324, 1e-310, -5e-324, 0.0, 3e-311]),  # subnormals: bins / (hi - lo) is inf
], ids=["normal", "borders", "integers", "wide", "narrow", "subnormal"])
@pytest.mark.parametrize("bins", [1, 7, 32, 100])
def test_bins_are_numpy_histograms(values, bins):
    lo, hi = np.float64(values.min()), np.float64(values.max())
    assert np.array_equal(measure.bin_counts(values, lo, hi, bins), np.histogram(values, bins, (lo, hi))[0])


def test_raw_byte_types_are_listed_unmeasured(tmp_path):
    """float4 (served as raw bytes, docs/dtypes.md) has no numbers to measure: no error, no measures."""
    header = json.dumps({"packed": {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]},
                         "w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "f4.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes([0x21, 0x43, 0x65, 0x87])
                     + np.array([1.5, -2], np.float32).tobytes())
    stats = ckptfs.stats(path)
    assert stats["packed"] == {
        "name": "packed", "path": "packed.npy", "dtype": "float4_e2m1fn", "shape": [2, 4], "elements": 8,
        "dequantized": False, "counted": 0, "min": None, "max": None, "mean": None, "std": None, "nan": 0,
        "posinf": 0, "neginf": 0, "zeros": 0, "histogram": None, "error": None}
    assert_measured(stats["w"], np.array([1.5, -2], np.float32))
    done = run_ckptfs("stats", path)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "served as raw bytes, not measured: packed"


def test_read_range_refuses_negative_offsets_and_lengths_and_stops_at_the_end(tmp_path):
    """`Checkpoint.read_range`, which stats reads through: a negative offset
    used to select the last piece of the file and return the source's
    header and other tensors' bytes; now it is refused, as is a negative
    length, and nothing past the end comes back."""
    source = tmp_path / "rr.safetensors"
    save_file({"a": np.arange(4, dtype=np.int32), "secret": np.full(4, 0x41414141, np.int32)}, str(source))
    ckpt = ckptfs.open(source)
    path = next(t.path for t in ckpt.tensors() if t.name == "a")
    whole = ckpt.read(path)
    assert ckpt.read_range(path, 0, len(whole) + 100) == whole
    assert ckpt.read_range(path, len(whole) - 4, 100) == whole[-4:]
    assert ckpt.read_range(path, len(whole) + 10, 5) == b""
    for offset, length in [(-16, 16), (-8, 100), (-1000, 1010), (0, -5)]:
        with pytest.raises(CkptfsError, match="must be 0 or more"):
            ckpt.read_range(path, offset, length)


@pytest.mark.parametrize("values", [
    np.array([1e160, 1.0000001e160, 1.0000002e160]),  # a mean whose square is past float64's range
    np.full(4, 1e308),  # a sum past float64's range: NumPy's mean and std are inf
    np.array([-1e308, 1e308, 0.0]),
], ids=["big-mean", "sum-overflows", "huge-range"])
@pytest.mark.parametrize("chunk", [1 << 20, 8], ids=["one-chunk", "chunks"])
def test_moments_of_huge_values_are_numpy_s_without_a_warning(tmp_path, monkeypatch, values, chunk):
    """The first chunk's mean and M2 used to be pooled with the empty start,
    inf x 0 = NaN for |mean| > 1.3e154; NumPy's overflow warnings reached
    stderr (here, with filterwarnings=error, they would raise)."""
    save_file({"w": values}, str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(tensor, "CHUNK_BYTES", chunk)
    got = ckptfs.stats(tmp_path / "w.safetensors")["w"]
    with np.errstate(all="ignore"):
        mean, std = np.mean(values), np.std(values)
    for key, want in (("mean", mean), ("std", std)):
        assert got[key] == want or abs(got[key] - want) <= 1e-12 * abs(want), (key, got[key], want)


def unbinnable() -> dict[str, np.ndarray]:
    return {"f32_min_mask": np.full((4, 4), np.finfo(np.float32).min, np.float32),  # v +- 0.5 == v
            "i64_sentinel": np.full(8, np.iinfo(np.int64).max),
            "f64_max": np.full(3, np.finfo(np.float64).max),
            "i64_near_max": np.iinfo(np.int64).max - np.arange(5, dtype=np.int64),  # distinct, equal in float64
            "subnormal": np.array([5e-324, 1e-310, -5e-324, 0.0]),
            "huge_range": np.array([1.7e308, -1.7e308, 0.0, 1.0, 1e307])}


def test_a_histogram_numpy_cannot_make_leaves_the_other_measures(tmp_path):
    """These tensors used to lose every measure to NumPy's "Too many bins"
    or bincount's "negative elements", and exit 1. A constant tensor gets
    one bin holding all its elements; a range float64 cannot split into K
    equal bins gets no histogram and a note; a subnormal range is binned
    as NumPy bins it; a range wider than float64 holds (hi - lo = inf,
    which NumPy refuses) by the halves' edges doubled, each value placed by
    comparison as `np.histogram` places values in those edges."""
    arrays = unbinnable()
    save_file(arrays, str(tmp_path / "u.safetensors"))
    stats = ckptfs.stats(tmp_path / "u.safetensors", bins=8)
    for name, array in arrays.items():
        got = stats[name]
        assert got["error"] is None and got["counted"] == array.size
        assert (got["min"], got["max"]) == (array.min().item(), array.max().item()), name
        with np.errstate(all="ignore"):
            assert got["std"] == np.std(array.astype(np.float64)) or abs(got["std"] - np.std(array)) <= 1e-12 * np.std(array)
    for name in ("f32_min_mask", "i64_sentinel", "f64_max"):
        (low, high), counts = stats[name]["histogram"]["edges"], stats[name]["histogram"]["counts"]
        value = float(arrays[name].flat[0])
        assert low < high and low <= value <= high and counts == [arrays[name].size], name
    assert stats["i64_near_max"]["histogram"] is None
    with pytest.raises(ValueError, match="Too many bins"):
        np.histogram(arrays["i64_near_max"].astype(np.float64), 8)
    assert_measured(stats["subnormal"], arrays["subnormal"], bins=8)
    huge = arrays["huge_range"]
    edges = 2 * np.histogram_bin_edges(huge / 2, 8)
    assert stats["huge_range"]["histogram"] == {"edges": edges.tolist(), "counts": np.histogram(huge, edges)[0].tolist()}
    done = run_ckptfs("stats", tmp_path / "u.safetensors", "--bins", "8")
    assert done.returncode == 0 and done.stderr == ""
    assert "no histogram (no 8 equal bins between min and max in float64): i64_near_max" in done.stdout.splitlines()


@pytest.mark.parametrize("elements, sample", [
    (elements, sample) for elements in (17, 10**6, 2**53 + 1, 2**60 + 12345, 2**62 + 7, 2**63 - 1)
    for sample in (1, 2, 15, 16, 17, 1000, 999_999) if sample < elements])  # else every element is read
def test_sample_runs_stay_inside_the_tensor_at_any_size(elements, sample):
    """Placed in integers: with a float gap, runs of tensors past 2^53
    elements ended past the tensor (a short read, a "truncated?" error).
    Nothing is read: the placement alone."""
    reads = tensor.runs(elements, 1 << 21, sample)
    assert reads[0][0] == 0 and (sample == 1 or sum(reads[-1]) == elements)  # from the first element to the last
    assert all(first + count <= after for (first, count), (after, _) in zip(reads, reads[1:]))
    assert sum(count for _, count in reads) == sample and all(count > 0 for _, count in reads)


def test_the_bins_default_is_the_api_s():
    """The CLI's `--bins` default is `tensor_stats.DEFAULT_BINS` (it was a
    second 32 of its own), and its help says that number."""
    import argparse

    from ckptfs.commands import stats as command
    from ckptfs.tensor_stats import DEFAULT_BINS

    parser = argparse.ArgumentParser()
    command._arguments(parser)
    assert parser.parse_args(["x"]).bins is None  # the default is decided where DEFAULT_BINS is
    assert f"(default {DEFAULT_BINS})" in " ".join(parser.format_help().split())
    path = FIXTURES / "nemo" / "tiny.nemo"
    done = run_ckptfs("stats", path, "--json")
    assert json.loads(done.stdout)["bins"] == DEFAULT_BINS == ckptfs.stats(path).bins
