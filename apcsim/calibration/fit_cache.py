"""An on-disk cache of fitted calibrated cost models, so that a short run (a sweep's small job)
neither re-reads its 2 MB profile nor re-fits it: 0.12 s of CPU for the bundled a100/llama3_8b
profile, 0.005 s from the cache (2-CPU dev VM, 2026-11-27).

An entry is keyed by the profile's bytes (sha256), the path the run names it by (the model keeps
it), the model's fields, and the code that reads and fits profiles (the sources of those modules,
and the Python and numpy versions the pickle depends on): a change to any of them is a miss, never
a stale hit. An entry holds the profile's identity as read from its rows (hardware, model, tp),
which the caller checks against the run exactly as for a freshly read profile, and the fitted
model. An entry that cannot be read or unpickled (corrupt, truncated, an older layout) is a miss
and is rewritten; a cache directory that cannot be written leaves the run uncached, with the same
results (apcsim.cachedir.store_atomic).

Where: `fits/` in apcsim.cachedir.cache_dir() (~/.cache/apcsim unless set otherwise).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from dataclasses import astuple
from pathlib import Path
from typing import Any, Callable

import numpy as np

from apcsim.cachedir import cache_dir, memoized
from apcsim.calibration import attention, decode_buckets, fit, profile
from apcsim.hardware import ModelConfig

# (hardware, model, tp) of a profile, as read from its rows.
Identity = tuple[str, str, int]
_LAYOUT = 1  # bump when an entry's pickled layout changes


def _code_version() -> bytes:
    """What a fitted model depends on besides its inputs: the modules that read and fit profiles."""
    from apcsim.calibration import cost_model  # not at import time: cost_model imports this module

    h = hashlib.sha256(f"{_LAYOUT} {sys.version} numpy {np.__version__}".encode())
    for module in (profile, fit, attention, decode_buckets, cost_model):
        h.update(Path(module.__file__).read_bytes())
    return h.digest()


def entry_key(path: Path, model: ModelConfig) -> str:
    h = hashlib.sha256(_code_version())
    h.update(repr((os.fspath(path), astuple(model))).encode())
    h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _load(data: bytes) -> tuple[Identity, Any]:
    identity, fitted = pickle.loads(data)  # raises on anything but a pair: a miss
    return identity, fitted


def cached_fit(path: Path, model: ModelConfig, fit_profile: Callable[[], tuple[Identity, Any]]) -> tuple[Identity, Any]:
    """The cached (identity, fitted model) of the profile at `path` for `model`, else
    `fit_profile()`'s, which is then stored. Errors of `fit_profile` pass through uncached."""
    entry = cache_dir() / "fits" / f"{entry_key(path, model)}.pickle"
    return memoized(entry, fit_profile, load=_load,
                    dump=lambda value: pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
