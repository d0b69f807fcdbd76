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
        mean = float(wide.sum()) / wide.size
        wide -= mean
        self._combine(wide.size, mean, float(np.dot(wide, wide)))
        return values

    def _extremes(self, low, high) -> None:
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    def _combine(self, count: int, mean: float, m2: float) -> None:
        """Chan, Golub and LeVeque's update of the pooled mean and M2."""
        total = self.finite + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.finite * count / total
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
    edges[i + 1], the last bin closed) as they decide for NumPy."""
    edges = np.linspace(lo, hi, bins + 1)
    scale = bins / (hi - lo)
    # how far a guess may stray from the true position, in bins: a few roundings of the largest magnitude
    tolerance = 1e-9 + 8 * np.finfo(np.float64).eps * bins * max(abs(lo), abs(hi)) / (hi - lo)
    if not tolerance <= 0.25:  # a range within rounding of its magnitude: NumPy's own way
        return np.histogram(values, bins, (lo, hi))[0]
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


def histogram_range(low, high) -> tuple[np.float64, np.float64]:
    """[low, high] as float64 (so that `np.histogram` bins in float64
    whatever the data's type), widened by 0.5 each way when they are equal."""
    low, high = np.float64(low), np.float64(high)
    return (low - 0.5, high + 0.5) if low == high else (low, high)


def histogram(moments: Moments, finite: Iterable[np.ndarray], bins: int) -> dict:
    lo, hi = histogram_range(moments.low, moments.high)
    if moments.low == moments.high:  # one value: its bin, found without reading again
        counts = np.histogram(np.array([moments.low], np.float64), bins, (lo, hi))[0] * moments.finite
    else:
        counts = sum((bin_counts(values, lo, hi, bins) for values in finite), np.zeros(bins, np.int64))
    return {"edges": np.linspace(lo, hi, bins + 1).tolist(), "counts": counts.tolist()}


def finite(values: np.ndarray) -> np.ndarray:
    return values if values.dtype.kind != "f" else values[np.isfinite(values)]
