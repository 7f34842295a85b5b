"""Fits of profiled kernel timings that are physically sensible and cheap to query.

Why piecewise-linear interpolation of monotone knots, not a parametric or learned model:

- The profiles are dense (token ops every 8 to 256 tokens, decode attention at every batch size
  1..128 and every 32 to 64 context tokens, prefill every 16 to 64 chunk and context tokens), so
  interpolating between measured neighbours is more accurate than any smooth global form: kernel
  times have steps (GEMM tile and wave quantisation, FlashAttention's 64/128-row tiles, split-KV
  heuristics) that a low-order formula smooths away.
- Monotone by construction: knot values are replaced by their weighted isotonic (pool adjacent
  violators) regression, so measurement noise (a few microseconds on 5 to 20 microsecond kernels)
  never makes more work cheaper. A 2-D table is made monotone along both axes.
- Outside the profiled range: constant below the smallest knot (a kernel never gets cheaper than
  its launch-bound floor) and linear above the largest, with the least-squares slope of the last
  quarter of the range (clipped at >= 0). Linear is what the physics says beyond the range for
  every op here: GEMMs, norms and element-wise ops are linear in tokens once the GPU is full, and
  attention is linear in context (bytes read, or FLOPs, per context token). The one quadratic
  term, causal attention among a prefill chunk's own tokens, is handled by `PrefillAttention`.
- Fast: a query is a bisect and a handful of float operations, in plain Python for one step or
  a few (`Grid.along_y`), numpy for a long vector of steps, with the same operations in the same
  order, so they agree bit for bit (the simulator relies on that; see `CalibratedCostModel`).
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

TAIL = 0.25  # extrapolation slopes are fitted on the last quarter of an axis' range


def isotonic(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of `y` (pool adjacent violators)."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    vals: list[float] = []
    wts: list[float] = []
    lens: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist()):
        vals.append(yi)
        wts.append(wi)
        lens.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, n2 = vals.pop(), wts.pop(), lens.pop()
            wsum = wts[-1] + w2
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / wsum
            wts[-1] = wsum
            lens[-1] += n2
    return np.repeat(np.array(vals), lens)


def tail_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope over the last quarter of x's range (at least the last two points), >= 0."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    m = x >= x[-1] - TAIL * (x[-1] - x[0])
    if m.sum() < 2:
        m[-2:] = True
    xs, ys = x[m], y[m]
    dx = xs - xs.mean()
    return max(0.0, float((dx * (ys - ys.mean())).sum() / (dx * dx).sum()))


def _group_mean(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    return xs.astype(np.float64), np.bincount(inv, weights=t) / cnt, cnt.astype(np.float64)


class Curve:
    """f(x) through monotone knots: linear between, constant below, linear with `slope` above."""

    def __init__(self, xs, ys, slope: float) -> None:
        self.xs = np.asarray(xs, dtype=np.float64)
        self.ys = np.asarray(ys, dtype=np.float64)
        self.slope = float(slope)
        self._x = self.xs.tolist()
        self._y = self.ys.tolist()

    @classmethod
    def fit(cls, x, t) -> "Curve":
        xs, means, cnt = _group_mean(np.asarray(x), np.asarray(t, dtype=np.float64))
        ys = isotonic(means, cnt)
        return cls(xs, ys, tail_slope(xs, ys))

    def __call__(self, x: float) -> float:
        xs, ys = self._x, self._y
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1] + self.slope * (x - xs[-1])
        i = bisect_right(xs, x) - 1
        x0, y0 = xs[i], ys[i]
        return y0 + (ys[i + 1] - y0) * ((x - x0) / (xs[i + 1] - x0))

    def eval(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return np.where(x <= xs[0], ys[0], ys[0] + self.slope * (x - xs[0]))
        i = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2)
        x0, y0 = xs[i], ys[i]
        mid = y0 + (ys[i + 1] - y0) * ((x - x0) / (xs[i + 1] - x0))
        return np.where(x <= xs[0], ys[0], np.where(x >= xs[-1], ys[-1] + self.slope * (x - xs[-1]), mid))

    @staticmethod
    def total(terms: list[tuple[float, "Curve"]]) -> "Curve":
        """sum(w * c(x)) as one curve. Exact: on the union of the knots every term is linear
        between knots, and beyond the largest knot every term is in its linear extrapolation."""
        xs = np.unique(np.concatenate([c.xs for _, c in terms]))
        ys = sum(w * c.eval(xs) for w, c in terms)
        return Curve(xs, ys, sum(w * c.slope for w, c in terms))


def _locate(knots: list[float], gaps: list[float], v: float) -> tuple[int, int, float, float]:
    """(i0, i1, weight of i1, distance beyond the last knot) for piecewise-linear lookup."""
    n = len(knots)
    if v <= knots[0]:
        return 0, 0, 0.0, 0.0
    if v >= knots[-1]:
        return n - 1, n - 1, 0.0, v - knots[-1]
    i = bisect_right(knots, v) - 1
    return i, i + 1, (v - knots[i]) / gaps[i], 0.0


class Grid:
    """g(x, y) on a rectangular table, monotone in both; bilinear inside, constant below the first
    knots, linear beyond the last ones with slopes `sx[j]` (along x, at ys[j]) and `sy[i]` (along
    y, at xs[i]), both >= 0 and non-decreasing along the other axis so that monotonicity holds in
    the extrapolated regions too."""

    def __init__(self, xs, ys, table, sx, sy) -> None:
        self.xs, self.ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        self.table = np.asarray(table, dtype=np.float64)  # [len(xs), len(ys)]
        self.sx, self.sy = np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)
        # Differences between neighbouring knots, computed once and used by both query paths.
        self.ygap = np.append(np.diff(self.ys), 1.0)  # [len(ys)]; the last entry is never used
        self.dtable = np.append(np.diff(self.table, axis=1), np.zeros((len(self.xs), 1)), axis=1)
        self.dsx = np.append(np.diff(self.sx), 0.0)
        self._x, self._y = self.xs.tolist(), self.ys.tolist()
        self._xgap, self._ygap = np.append(np.diff(self.xs), 1.0).tolist(), self.ygap.tolist()
        self._t, self._dt = self.table.tolist(), self.dtable.tolist()
        self._sx, self._dsx, self._sy = self.sx.tolist(), self.dsx.tolist(), self.sy.tolist()

    @classmethod
    def fit(cls, x, y, t, row_slopes=None, transform=None) -> "Grid":
        """Knots are the distinct x and y of the data. A cell with no measurement is filled along
        its row: interpolated between measured neighbours, constant before the first, and beyond
        the last extended with `row_slopes[i]` (default: the row's tail slope). `transform`, if
        given, maps the filled table before it is made monotone."""
        x, y, t = np.asarray(x), np.asarray(y), np.asarray(t, dtype=np.float64)
        xs, xi = np.unique(x, return_inverse=True)
        ys, yi = np.unique(y, return_inverse=True)
        xs, ys = xs.astype(np.float64), ys.astype(np.float64)
        total = np.zeros((len(xs), len(ys)))
        count = np.zeros((len(xs), len(ys)))
        np.add.at(total, (xi, yi), t)
        np.add.at(count, (xi, yi), 1.0)
        table = np.empty_like(total)
        for i in range(len(xs)):
            have = count[i] > 0
            yk, tk = ys[have], total[i, have] / count[i, have]
            s = tail_slope(yk, isotonic(tk)) if row_slopes is None else float(row_slopes[i])
            row = np.interp(ys, yk, tk)
            beyond = ys > yk[-1]
            row[beyond] = tk[-1] + s * (ys[beyond] - yk[-1])
            table[i] = row
        if transform is not None:
            table = transform(table)
        weight = np.maximum(count, 1e-3)  # filled cells follow the measured ones
        for i in range(len(xs)):
            table[i] = isotonic(table[i], weight[i])
        for j in range(len(ys)):
            table[:, j] = isotonic(table[:, j], weight[:, j])
        table = np.maximum.accumulate(table, axis=1)  # keeps the columns monotone (max of monotone)
        sx = np.maximum.accumulate([tail_slope(xs, table[:, j]) for j in range(len(ys))])
        if row_slopes is None:
            sy = [tail_slope(ys, table[i]) for i in range(len(xs))]
        else:
            sy = np.maximum(np.asarray(row_slopes, dtype=np.float64), 0.0)
        return cls(xs, ys, table, sx, np.maximum.accumulate(sy))

    def __call__(self, x: float, y: float) -> float:
        i0, i1, wx, ex = _locate(self._x, self._xgap, x)
        j0, _, wy, ey = _locate(self._y, self._ygap, y)
        sy = self._sy
        r0 = self._t[i0][j0] + wy * self._dt[i0][j0] + sy[i0] * ey
        r1 = self._t[i1][j0] + wy * self._dt[i1][j0] + sy[i1] * ey
        sxy = self._sx[j0] + wy * self._dsx[j0]
        return r0 + wx * (r1 - r0) + sxy * ex

    def along_y(self, x: float, ys) -> list[float]:
        """[g(x, y) for y in ys] in plain Python: `__call__`'s operations with x located once.
        For a few points (a short decode stretch) it is several times faster than `eval_y`,
        whose NumPy calls cost a microsecond or more each whatever the length."""
        i0, i1, wx, ex = _locate(self._x, self._xgap, x)
        t0, t1, dt0, dt1 = self._t[i0], self._t[i1], self._dt[i0], self._dt[i1]
        sy0, sy1, sx, dsx = self._sy[i0], self._sy[i1], self._sx, self._dsx
        knots, gaps = self._y, self._ygap
        first, last, n = knots[0], knots[-1], len(knots)
        out = []
        j = 0  # the cell of the previous y: a decode stretch's ys only grow, so the walk is short
        for y in ys:
            # `_locate(knots, gaps, y)` inlined, its bisection replaced by a walk from cell j
            # (the same cell: the largest j with knots[j] <= y, when first < y < last).
            if y <= first:
                j0, wy, ey = 0, 0.0, 0.0
            elif y >= last:
                j0, wy, ey = n - 1, 0.0, y - last
            else:
                if y < knots[j]:
                    j = bisect_right(knots, y) - 1  # ys fell back: locate afresh
                while knots[j + 1] <= y:
                    j += 1
                j0, wy, ey = j, (y - knots[j]) / gaps[j], 0.0
            r0 = t0[j0] + wy * dt0[j0] + sy0 * ey
            r1 = t1[j0] + wy * dt1[j0] + sy1 * ey
            out.append(r0 + wx * (r1 - r0) + (sx[j0] + wy * dsx[j0]) * ex)
        return out

    def eval_y(self, x: float, y: np.ndarray) -> np.ndarray:
        """g(x, y) for one x and many y: the same operations as __call__, element by element.
        Terms that are exactly zero here (no extrapolation, x on a knot) are skipped: adding a
        +0.0 or -0.0 to a positive value leaves it bit for bit unchanged."""
        i0, i1, wx, ex = _locate(self._x, self._xgap, x)
        y = np.asarray(y, dtype=np.float64)
        ys = self.ys
        j0 = np.searchsorted(ys, y, side="right") - 1
        inside = len(ys) > 1 and y.min() > ys[0] and y.max() < ys[-1]
        if inside:
            wy = (y - ys[j0]) / self.ygap[j0]
            ey = None
        else:
            below, beyond = y <= ys[0], y >= ys[-1]
            j0 = np.where(below, 0, np.where(beyond, len(ys) - 1, j0))
            wy = np.where(below | beyond, 0.0, (y - ys[j0]) / self.ygap[j0])
            ey = np.where(beyond, y - ys[-1], 0.0)
        r0 = self.table[i0][j0] + wy * self.dtable[i0][j0]
        if ey is not None:
            r0 = r0 + self.sy[i0] * ey
        if wx != 0.0:
            r1 = self.table[i1][j0] + wy * self.dtable[i1][j0]
            if ey is not None:
                r1 = r1 + self.sy[i1] * ey
            r0 = r0 + wx * (r1 - r0)
        if ex != 0.0:
            r0 = r0 + (self.sx[j0] + wy * self.dsx[j0]) * ex
        return r0


def affine_fit(x, t) -> tuple[float, float]:
    """t = a + b x by least squares, with b >= 0 and a >= 0 (a constant, or a line through the
    origin, when the free fit says otherwise)."""
    x, t = np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64)
    if len(np.unique(x)) < 2:
        return float(t.mean()), 0.0
    b, a = np.polyfit(x, t, 1)
    if b < 0:
        return float(t.mean()), 0.0
    if a < 0:
        return 0.0, float((x * t).sum() / (x * x).sum())
    return float(a), float(b)
