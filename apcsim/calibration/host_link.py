"""The host link's measured copy times (written by `python -m engine.host_link`) fitted into the
host tier's link model: time = latency + bytes / bandwidth, per direction, by least squares.

The CSV has one row per measurement: `direction` (load: host -> device; store: device -> host),
`num_blocks`, `bytes`, `time_ms` (the fastest of the repeats). `cpu_tier.link_profile=PATH` makes
a run use the fit instead of the hardware preset's datasheet figures.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apcsim.calibration.fit import affine_fit
from apcsim.errors import ConfigError

FIELDS = ("direction", "num_blocks", "bytes", "time_ms")
DIRECTIONS = ("load", "store")


@dataclass(frozen=True)
class LinkFit:
    bw_gbps: float
    latency_us: float


def fit_link(bytes_: np.ndarray, time_ms: np.ndarray) -> LinkFit:
    """Least squares of time on bytes (`affine_fit`: a negative intercept, noise at small sizes,
    gives a line through the origin)."""
    intercept, slope = affine_fit(bytes_, np.asarray(time_ms, dtype=float) * 1e-3)
    if not slope > 0:
        raise ValueError("copy time does not grow with bytes")
    return LinkFit(bw_gbps=1.0 / slope / 1e9, latency_us=intercept * 1e6)


def read_link_profile(path: str | Path) -> dict[str, LinkFit]:
    """{direction: fit} of a link profile; ConfigError naming the file on anything wrong."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cpu_tier.link_profile: no such file {p}")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    try:
        for d in DIRECTIONS:
            sel = [r for r in rows if r["direction"] == d]
            if len({r["bytes"] for r in sel}) < 2:
                raise ValueError(f"fewer than two sizes measured for {d}")
            out[d] = fit_link(np.array([float(r["bytes"]) for r in sel]), np.array([float(r["time_ms"]) for r in sel]))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"cpu_tier.link_profile {p}: {e} (expected columns {', '.join(FIELDS)})") from None
    return out


def write_link_profile(path: str | Path, rows: list[dict]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return p
