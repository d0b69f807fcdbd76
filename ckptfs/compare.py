"""`ckptfs diff A B`: two checkpoints compared tensor by tensor, across
formats and layouts, and everything else they hold file by file and value
by value (compare_files.py).

Tensors are matched by dotted name (after `--map OLD=NEW` prefix rewrites
of A's names) and compared one pair at a time, in chunks: memory stays
within a chunk for memory-mapped tensors and within the pair for tensors
that are read (`Checkpoint.tensor`), whatever the checkpoints hold. Two
tensors are the same when their bits are; otherwise the report counts the
elements whose bits differ and, where NumPy knows the dtype (bfloat16 and
float8 with ml_dtypes), gives the largest absolute and relative difference
and the cosine similarity (None where either tensor is all zeros: no angle
is defined). Without ml_dtypes those types are compared bit for bit only
(docs/cli.md).
"""

from __future__ import annotations

import fnmatch
import io
import math

import numpy as np

from .api import Checkpoint, TensorInfo
from .compare_files import compare_files
from .humanize import plural
from .report import diff_page, grouping
from .write.export import rename_prefix

try:  # where installed, NumPy then knows bfloat16 and float8, to measure them
    import ml_dtypes  # noqa: F401
except ImportError:
    pass

#: elements compared at a time
CHUNK = 1 << 20


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    """A tensor's dotted name, or a file's or value's path, written with
    `/` or with `.`, matched against the globs."""
    forms = {name, name.replace("/", ".")}

    def matches(globs):
        return any(fnmatch.fnmatchcase(form, g) for form in forms for g in globs)

    return (not include or matches(include)) and not matches(exclude)


def _raw(ckpt: Checkpoint, info: TensorInfo) -> np.ndarray:
    """A tensor's stored bytes, as rows of its element size (for dtypes
    NumPy does not know)."""
    data = ckpt.read(info.path)
    header = 10 + int.from_bytes(data[8:10], "little")
    return np.frombuffer(data, np.uint8, offset=header)


def _array(ckpt: Checkpoint, info: TensorInfo, dequantized: bool) -> np.ndarray | None:
    try:
        return ckpt.tensor(info.name, dequantized).reshape(-1)
    except (TypeError, ValueError):  # a dtype NumPy does not know (bfloat16 without ml_dtypes)
        return None


def tensor_difference(x: np.ndarray, y: np.ndarray) -> dict:
    """Counts and measures of two arrays of one shape and dtype, chunk by chunk."""
    size = x.dtype.itemsize
    differing = 0
    numeric = x.dtype.kind in "biufc" or x.dtype.name in ("bfloat16",) or x.dtype.name.startswith("float8")
    max_abs = max_rel = 0.0
    dot = 0.0
    norm_x, norm_y, norm_d = _Norm(), _Norm(), _Norm()
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
                norm_d.add(delta)
                rel = np.where(delta == 0, 0.0, delta / np.maximum(np.abs(fa[unequal]), np.abs(fb[unequal])))
                max_abs = _larger(max_abs, np.max(delta, initial=0.0))
                max_rel = _larger(max_rel, np.max(rel, initial=0.0))
                dot += float(np.real(np.vdot(fa, fb)))
                norm_x.add(fa)
                norm_y.add(fb)
    result: dict = {"elements": int(x.size), "differing": differing}
    if numeric:
        norms = norm_x.value * norm_y.value
        result.update(max_abs_diff=max_abs, max_rel_diff=max_rel, cosine=dot / norms if norms else None)
        result.update(_change(norm_x.value, norm_d.value))
    return result


class _Norm:
    """‖v‖₂ of the chunks added, kept as scale · sqrt(ssq) as BLAS's nrm2
    does: values of 1e154 and more, whose squares overflow, and of 1e-162
    and less, whose squares underflow, still give the right norm. A chunk
    whose plain sum of squares is neither takes the fast path (one dot)."""

    #: a sum of squares at least this large lost nothing to underflow
    SAFE = 1e-250

    def __init__(self):
        self.scale, self.ssq, self.special = 0.0, 0.0, 0.0  # special: inf or NaN found

    def add(self, v: np.ndarray) -> None:
        plain = float(np.real(np.vdot(v, v)))
        if math.isfinite(plain) and plain >= self.SAFE:
            self._combine(1.0, plain)
            return
        largest = float(np.max(np.abs(v), initial=0.0))
        if not math.isfinite(largest):
            self.special = math.nan if math.isnan(largest) or math.isnan(self.special) else math.inf
        elif largest > 0:
            scaled = v / largest
            self._combine(largest, float(np.real(np.vdot(scaled, scaled))))

    def _combine(self, scale: float, ssq: float) -> None:
        if scale > self.scale:
            self.scale, self.ssq = scale, ssq + self.ssq * (self.scale / scale) ** 2
        else:
            self.ssq += ssq * (scale / self.scale) ** 2

    @property
    def value(self) -> float:
        return self.special if self.special else self.scale * math.sqrt(self.ssq)


def _change(norm_a: float, norm_diff: float) -> dict:
    """‖A‖₂, ‖B−A‖₂ (over the elements whose bits differ, as the other
    measures) and their ratio, the relative change: 0 where nothing moved,
    None where A is all zeros and B is not (no ratio is defined)."""
    if norm_a > 0 or math.isnan(norm_a):
        relative = norm_diff / norm_a
    else:
        relative = 0.0 if norm_diff == 0 else None
    return {"norm_a": norm_a, "norm_diff": norm_diff, "relative_change": relative}


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


def compare(a: Checkpoint, b: Checkpoint, maps: list[tuple[str, str]] = (), include: list[str] = (),
            exclude: list[str] = (), tensors_only: bool = False, dequantized: bool = False) -> Diff:
    """The report of `ckptfs diff --json` (docs/cli.md), as a Diff; with
    `dequantized`, quantized weights compared by their values
    (`api.Checkpoint.tensors`)."""
    def selected(name: str) -> bool:
        return _selected(name, list(include), list(exclude))

    left = {n: t for n, t in ((rename_prefix(t.name, list(maps)), t) for t in a.tensors(dequantized)) if selected(n)}
    right = {t.name: t for t in b.tensors(dequantized) if selected(t.name)}
    report: dict = {
        "removed": sorted(set(left) - set(right)),
        "added": sorted(set(right) - set(left)),
        "changed": [],
        "differing": {},
        "equal": 0,
    }
    compared: list[grouping.Compared] = []
    for name in sorted(set(left) & set(right)):
        ta, tb = left[name], right[name]
        if (ta.dtype, ta.shape) != (tb.dtype, tb.shape):
            report["changed"].append({"name": name, "a": {"dtype": ta.dtype, "shape": list(ta.shape)},
                                      "b": {"dtype": tb.dtype, "shape": list(tb.shape)}})
            continue
        x, y = _array(a, ta, dequantized), _array(b, tb, dequantized)
        if x is None or y is None:
            itemsize = max(1, ta.nbytes // max(1, math.prod(ta.shape)))
            x, y = _raw(a, ta).view(f"V{itemsize}"), _raw(b, tb).view(f"V{itemsize}")
        difference = tensor_difference(x, y)
        compared.append((name, difference.get("norm_a"), difference.get("norm_diff"), bool(difference["differing"])))
        if difference["differing"]:
            report["differing"][name] = difference
        else:
            report["equal"] += 1
    report["by_layer_module"] = grouping.grid(compared).as_dict()
    report["values"], report["files"] = ([], {"removed": [], "added": [], "changed": []}) if tensors_only else (
        compare_files(a._parsed, b._parsed, selected))
    report["same"] = not (report["removed"] or report["added"] or report["changed"] or report["differing"]
                          or report["values"] or any(report["files"].values()))
    return Diff(report, a.path, b.path)


class Diff(dict):
    """The report of `compare`, a dict as `--json` prints it (before
    json_safe), that a notebook shows as its summary and heatmap; `a` and
    `b` name the checkpoints compared."""

    def __init__(self, report: dict, a: str = "A", b: str = "B"):
        super().__init__(report)
        self.a, self.b = a, b

    def html(self) -> str:
        """The whole report as one self-contained HTML page (`ckptfs diff --html`)."""
        return diff_page.document(json_safe(self), self.a, self.b)

    def _repr_html_(self) -> str:
        return diff_page.fragment(json_safe(self), self.a, self.b)


#: the longest value `text` prints whole
SHOWN = 200


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
            cosine = "n/a (zero vector)" if d["cosine"] is None else f"{d['cosine']:.6f}"
            measures = f", max abs diff {d['max_abs_diff']:.6g}, max rel diff {d['max_rel_diff']:.6g}, cosine {cosine}"
        print(f"differs: {name}: {d['differing']:,} of {plural(d['elements'], 'element', spec=',')}{measures}",
              file=out)
    for value in report["values"]:
        print(f"value: {value['path']}: {_shown(value['a'])} -> {_shown(value['b'])}", file=out)
    for path in report["files"]["removed"]:
        print(f"file only in A: {path}", file=out)
    for path in report["files"]["added"]:
        print(f"file only in B: {path}", file=out)
    for change in report["files"]["changed"]:
        where = f" (first at byte {change['differs_at']:,})" if "differs_at" in change else ""
        print(f"file differs: {change['path']}: {_file(change['a'])} -> {_file(change['b'])}{where}", file=out)
        out.write(change.get("diff", ""))
    print(f"{plural(report['equal'], 'tensor', spec=',')} bit-equal"
          + ("; the checkpoints are the same" if report["same"] else ""), file=out)
    return out.getvalue().rstrip("\n")


def _shown(value: str | None) -> str:
    if value is None:
        return "(none)"
    return value if len(value) <= SHOWN else value[:SHOWN] + "..."


def _file(what: dict) -> str:
    if "link" in what:
        return f"a link to {what['link']}"
    size = plural(what['size'], 'byte', spec=',')
    return f"{size}, sha256 {what['sha256'][:16]}" if "sha256" in what else size
