"""`ckptfs diff A B`: two checkpoints compared tensor by tensor, across
formats and layouts, and their configurations as a unified diff.

Tensors are matched by dotted name (after `--map OLD=NEW` prefix rewrites
of A's names) and compared one pair at a time, in chunks: memory stays
within a chunk for memory-mapped tensors and within the pair for tensors
that are read (`Checkpoint.tensor`), whatever the checkpoints hold. Two tensors are the same when their
bits are; otherwise the report counts the elements whose bits differ and,
where NumPy knows the dtype (bfloat16 and float8 with ml_dtypes), gives the
largest absolute and relative difference and the cosine similarity.
Without ml_dtypes those types are compared bit for bit only (docs/cli.md).
"""

from __future__ import annotations

import difflib
import fnmatch
import io
import math

import numpy as np

from .api import CONFIG_FILES, Checkpoint, TensorInfo
from .tree.nodes import File
from .write.export import rename_prefix

try:  # where installed, NumPy then knows bfloat16 and float8, to measure them
    import ml_dtypes  # noqa: F401
except ImportError:
    pass

#: elements compared at a time
CHUNK = 1 << 20


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    return (not include or any(fnmatch.fnmatchcase(name, g) for g in include)) and not any(
        fnmatch.fnmatchcase(name, g) for g in exclude)


def _raw(ckpt: Checkpoint, info: TensorInfo) -> np.ndarray:
    """A tensor's stored bytes, as rows of its element size (for dtypes
    NumPy does not know)."""
    data = ckpt.read(info.path)
    header = 10 + int.from_bytes(data[8:10], "little")
    return np.frombuffer(data, np.uint8, offset=header)


def _array(ckpt: Checkpoint, info: TensorInfo) -> np.ndarray | None:
    try:
        return ckpt.tensor(info.name).reshape(-1)
    except (TypeError, ValueError):  # a dtype NumPy does not know (bfloat16 without ml_dtypes)
        return None


def tensor_difference(x: np.ndarray, y: np.ndarray) -> dict:
    """Counts and measures of two arrays of one shape and dtype, chunk by chunk."""
    size = x.dtype.itemsize
    differing = 0
    numeric = x.dtype.kind in "biufc" or x.dtype.name in ("bfloat16",) or x.dtype.name.startswith("float8")
    max_abs = max_rel = 0.0
    dot = norm_x = norm_y = 0.0
    for start in range(0, x.size, CHUNK):
        a, b = np.ascontiguousarray(x[start:start + CHUNK]), np.ascontiguousarray(y[start:start + CHUNK])
        bits_a, bits_b = a.view(np.uint8).reshape(-1, size), b.view(np.uint8).reshape(-1, size)
        unequal = (bits_a != bits_b).any(axis=1)
        differing += int(unequal.sum())
        if numeric:
            wide = np.complex128 if a.dtype.kind == "c" else np.float64
            fa, fb = a.astype(wide), b.astype(wide)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                # over the elements whose bits differ: a NaN equal to itself is no difference
                delta = np.abs(fa[unequal] - fb[unequal])
                rel = np.where(delta == 0, 0.0, delta / np.maximum(np.abs(fa[unequal]), np.abs(fb[unequal])))
                max_abs = _larger(max_abs, np.max(delta, initial=0.0))
                max_rel = _larger(max_rel, np.max(rel, initial=0.0))
                dot += float(np.real(np.vdot(fa, fb)))
                norm_x += float(np.real(np.vdot(fa, fa)))
                norm_y += float(np.real(np.vdot(fb, fb)))
    result: dict = {"elements": int(x.size), "differing": differing}
    if numeric:
        norms = math.sqrt(norm_x) * math.sqrt(norm_y)
        result.update(max_abs_diff=max_abs, max_rel_diff=max_rel,
                      cosine=1.0 if norms == 0 and norm_x == norm_y else dot / norms if norms else 0.0)
    return result


def _larger(known: float, found) -> float:
    """The larger of two measures, NaN (a difference that has no size) winning."""
    found = float(found)
    return found if math.isnan(found) or found > known else known


def json_safe(value):
    """The report with NaN and infinities as the strings "nan", "inf",
    "-inf": JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _configs(a: Checkpoint, b: Checkpoint) -> str:
    """A unified diff of the configuration files both have at their root (a
    `.nemo`'s YAML and a Hugging Face `config.json` are not comparable
    line by line, so a file only one side has is not a difference)."""
    out = []
    for name in CONFIG_FILES:
        if not all(isinstance(c._parsed.root.children.get(name), File) for c in (a, b)):
            continue
        texts = [c.read(name).decode(errors="replace").splitlines(True) for c in (a, b)]
        out += difflib.unified_diff(*texts, f"A/{name}", f"B/{name}")
    return "".join(out)


def compare(a: Checkpoint, b: Checkpoint, maps: list[tuple[str, str]] = (), include: list[str] = (),
            exclude: list[str] = ()) -> dict:
    """The report of `ckptfs diff --json` (docs/cli.md)."""
    left = {rename_prefix(t.name, list(maps)): t for t in a.tensors()}
    right = {t.name: t for t in b.tensors()}
    left = {n: t for n, t in left.items() if _selected(n, list(include), list(exclude))}
    right = {n: t for n, t in right.items() if _selected(n, list(include), list(exclude))}
    report: dict = {
        "removed": sorted(set(left) - set(right)),
        "added": sorted(set(right) - set(left)),
        "changed": [],
        "differing": {},
        "equal": 0,
    }
    for name in sorted(set(left) & set(right)):
        ta, tb = left[name], right[name]
        if (ta.dtype, ta.shape) != (tb.dtype, tb.shape):
            report["changed"].append({"name": name, "a": {"dtype": ta.dtype, "shape": list(ta.shape)},
                                      "b": {"dtype": tb.dtype, "shape": list(tb.shape)}})
            continue
        x, y = _array(a, ta), _array(b, tb)
        if x is None or y is None:
            itemsize = max(1, ta.nbytes // max(1, math.prod(ta.shape)))
            x, y = _raw(a, ta).view(f"V{itemsize}"), _raw(b, tb).view(f"V{itemsize}")
        difference = tensor_difference(x, y)
        if difference["differing"]:
            report["differing"][name] = difference
        else:
            report["equal"] += 1
    report["config_diff"] = _configs(a, b)
    report["same"] = not (report["removed"] or report["added"] or report["changed"] or report["differing"]
                          or report["config_diff"])
    return report


def text(report: dict) -> str:
    out = io.StringIO()
    for name in report["removed"]:
        print(f"only in A: {name}", file=out)
    for name in report["added"]:
        print(f"only in B: {name}", file=out)
    for change in report["changed"]:
        a, b = change["a"], change["b"]
        print(f"changed: {change['name']}: {a['dtype']} {a['shape']} -> {b['dtype']} {b['shape']}", file=out)
    for name, d in report["differing"].items():
        measures = ""
        if "cosine" in d:
            measures = (f", max abs diff {d['max_abs_diff']:.6g}, max rel diff {d['max_rel_diff']:.6g}, "
                        f"cosine {d['cosine']:.6f}")
        print(f"differs: {name}: {d['differing']:,} of {d['elements']:,} elements{measures}", file=out)
    out.write(report["config_diff"])
    print(f"{report['equal']:,} tensors bit-equal" + ("; the checkpoints are the same" if report["same"] else ""),
          file=out)
    return out.getvalue().rstrip("\n")
