"""Where apcsim keeps what it can recompute (fitted cost models, report layouts): the user's own
directory, trusted like the installed code. $APCSIM_CACHE_DIR, else $XDG_CACHE_HOME/apcsim, else
~/.cache/apcsim."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def cache_dir() -> Path:
    if os.environ.get("APCSIM_CACHE_DIR"):
        return Path(os.environ["APCSIM_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "apcsim"


def store_atomic(entry: Path, data: bytes) -> None:
    """Write an entry through a temporary file and a rename, so that concurrent runs never read
    half of one; a directory that cannot be written leaves the entry unwritten (runs go on
    uncached).

    Not apcsim.outputs.rundir's writer, on purpose: an entry is made by mkstemp, so it is the
    user's alone (mode 0600: runs load pickled entries back) under a name no other
    writer shares, and a failed write leaves no temporary file; a run's output files keep the
    umask's mode (0644 by default) for whoever reads the results."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=entry.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def memoized(entry: Path, make: Callable[[], T], *, load: Callable[[bytes], T | None],
             dump: Callable[[T], bytes | None]) -> T:
    """The value stored at `entry`, else `make()`'s, then stored. `load(data)` turns an entry's
    bytes into the value, or returns None (or raises) for one that cannot be used (corrupt,
    truncated, of another layout): it is made again and rewritten. `dump(value)` gives the bytes
    to store, or None for a value that must not be cached. Errors of `make` pass through."""
    try:
        value = load(entry.read_bytes())
    except Exception:  # absent, unreadable or unusable: made again
        value = None
    if value is not None:
        return value
    value = make()
    data = dump(value)
    if data is not None:
        store_atomic(entry, data)
    return value
