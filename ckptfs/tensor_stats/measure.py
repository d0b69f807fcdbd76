"""One tensor's measures, a chunk of values at a time: counts, extremes and
float64 moments pooled by Chan's formula, and the histogram's bins."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass
class Moments:
    """Counts, extremes and float64 moments of the values seen so far."""

    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0  # the sum of squared deviations from the mean
    low: float | int | None = None
    high: float | int | None = None
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    zeros: int = 0

    def add(self, values: np.ndarray) -> np.ndarray:
        """Count a chunk of values in; returns its finite ones (for the histogram)."""
        if values.size == 0:
            return values
        self.zeros += int(np.count_nonzero(values == 0))  # -0.0 too; four times faster than counting nonzeros
        low, high = values.min(), values.max()
        if values.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):  # NaN wins min and max
            nan = np.isnan(values)
            self.nan += int(np.count_nonzero(nan))
            self.posinf += int(np.count_nonzero(values == np.inf))
            self.neginf += int(np.count_nonzero(values == -np.inf))
            values = values[np.isfinite(values)]
            if values.size == 0:
                return values
            low, high = values.min(), values.max()
        self._extremes(low.item(), high.item())
        wide = values.astype(np.float64)
        with np.errstate(all="ignore"):  # a sum past float64's range is inf, as NumPy's mean is: no warning
            mean = float(wide.sum()) / wide.size
            wide -= mean
            self._combine(wide.size, mean, float(np.dot(wide, wide)))
        return values

    def _extremes(self, low, high) -> None:
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    def _combine(self, count: int, mean: float, m2: float) -> None:
        """Chan, Golub and LeVeque's update of the pooled mean and M2. The
        first chunk's are taken as they are (its delta from the empty 0.0
        squares to inf beyond 1.3e154, times no elements is NaN), and the
        cross term is multiplied in an order that overflows only where the
        pooled M2 does (then std is inf, as NumPy's)."""
        total = self.finite + count
        if self.finite == 0:
            self.mean, self.m2, self.finite = mean, m2, total
            return
        delta = mean - self.mean
        if np.isfinite(delta):
            self.mean += delta * count / total
        else:  # means of opposite signs beyond 9e307: their weighted sum, which does not overflow
            self.mean = self.mean * (self.finite / total) + mean * (count / total)
        self.m2 += m2 + delta * (delta * (self.finite / total) * count)
        self.finite = total

    def report(self) -> dict:
        seen = self.finite > 0
        return {"min": self.low, "max": self.high, "mean": self.mean if seen else None,
                "std": math.sqrt(self.m2 / self.finite) if seen else None,
                "nan": self.nan, "posinf": self.posinf, "neginf": self.neginf, "zeros": self.zeros}


#: elements binned at a time: the work arrays stay in the processor's cache
BIN_BLOCK = 1 << 16


def bin_counts(values: np.ndarray, lo: np.float64, hi: np.float64, bins: int) -> np.ndarray:
    """`np.histogram(values, bins, (lo, hi))[0]`, in half its time: each
    value's bin is guessed from its position, (v - lo) * bins / (hi - lo),
    and only a value whose guess lies within rounding of a bin's border is
    placed by comparing it with the edges, which decide (edges[i] <= v <
    edges[i + 1], the last bin closed) as they decide for NumPy. Where
    that arithmetic would overflow (a subnormal range, whose bins/(hi - lo)
    is inf) or lose its precision, NumPy bins them its own way."""
    with np.errstate(over="ignore"):
        scale = bins / (hi - lo)
    if not np.isfinite(scale):  # a range of subnormals
        return np.histogram(values, bins, (lo, hi))[0]
    # how far a guess may stray from the true position, in bins: a few roundings of the largest magnitude
    tolerance = 1e-9 + 8 * np.finfo(np.float64).eps * bins * max(abs(lo), abs(hi)) / (hi - lo)
    if not tolerance <= 0.25:  # a range within rounding of its magnitude: NumPy's own way
        return np.histogram(values, bins, (lo, hi))[0]
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, np.int64)
    size = min(BIN_BLOCK, values.size)
    position, index, stray = np.empty(size), np.empty(size, np.intp), np.empty(size)
    for start in range(0, values.size, BIN_BLOCK):
        block = values[start:start + BIN_BLOCK]
        guess, bin_of, off = position[:block.size], index[:block.size], stray[:block.size]
        np.subtract(block, lo, out=guess, dtype=np.float64)
        guess *= scale
        bin_of[:] = guess  # truncated: every value is at least lo
        np.rint(guess, out=off)
        off -= guess
        np.abs(off, out=off)
        near = np.flatnonzero(off < tolerance)
        if near.size:
            bin_of[near] = np.searchsorted(edges, block[near].astype(np.float64), side="right") - 1
        np.minimum(bin_of, bins - 1, out=bin_of)
        counts += np.bincount(bin_of, minlength=bins)
    return counts


def edge_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin found by comparing it with the edges (edges[i] <= v
    < edges[i + 1], the last bin closed): for a range wider than float64
    holds (hi - lo overflows), where no position can be computed."""
    bin_of = np.searchsorted(edges, values.astype(np.float64), side="right") - 1
    return np.bincount(np.minimum(bin_of, len(edges) - 2), minlength=len(edges) - 1)


def histogram_range(low, high) -> tuple[np.float64, np.float64]:
    """[low, high] as float64 (so that `np.histogram` bins in float64
    whatever the data's type), widened by 0.5 each way when they are equal."""
    low, high = np.float64(low), np.float64(high)
    return (low - 0.5, high + 0.5) if low == high else (low, high)


def _too_wide(lo: np.float64, hi: np.float64) -> bool:
    with np.errstate(over="ignore"):
        return not np.isfinite(hi - lo)


def histogram_edges(lo: np.float64, hi: np.float64, bins: int) -> np.ndarray | None:
    """The `bins + 1` edges `np.histogram` makes over [lo, hi]; where hi - lo
    overflows (NumPy's fail: -1e308 to 1e308), the halves' edges doubled
    (exact); None where float64 holds no `bins` distinct equal bins (a
    range within rounding of its magnitude: int64 values near 2^63)."""
    if _too_wide(lo, hi):
        edges = 2 * np.linspace(lo / 2, hi / 2, bins + 1)
        return edges if np.all(edges[:-1] < edges[1:]) else None
    try:
        return np.histogram_bin_edges(np.empty(0), bins, (lo, hi))
    except ValueError:  # "Too many bins for data range"
        return None


def histogram(moments: Moments, finite: Iterable[np.ndarray], bins: int) -> dict | None:
    """The histogram of the finite values; a constant tensor's without
    reading again: NumPy's bins over [v - 0.5, v + 0.5], or, where v is too
    large for 0.5 to move it, one bin between v's float64 neighbours. None
    where no equal bins exist (`histogram_edges`)."""
    lo, hi = histogram_range(moments.low, moments.high)
    edges = histogram_edges(lo, hi, bins)
    if moments.low == moments.high and edges is None:
        return {"edges": _neighbours(lo), "counts": [moments.finite]}
    if moments.low == moments.high:  # its bin, found without reading again
        counts = np.histogram(np.array([moments.low], np.float64), bins, (lo, hi))[0] * moments.finite
    elif edges is None:
        return None
    elif not _too_wide(lo, hi):
        counts = sum((bin_counts(values, lo, hi, bins) for values in finite), np.zeros(bins, np.int64))
    else:
        counts = sum((edge_counts(values, edges) for values in finite), np.zeros(bins, np.int64))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _neighbours(value: np.float64) -> list[float]:
    """One bin holding `value` alone: from the float64 below it to the one
    above (to `value` itself at float64's ends, the last bin being closed)."""
    with np.errstate(over="ignore"):
        below, above = np.nextafter(value, -np.inf), np.nextafter(value, np.inf)
    return [float(below if np.isfinite(below) else value), float(above if np.isfinite(above) else value)]


def finite(values: np.ndarray) -> np.ndarray:
    return values if values.dtype.kind != "f" else values[np.isfinite(values)]
