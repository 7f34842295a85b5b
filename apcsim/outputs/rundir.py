"""A run's output directory: held by one process at a time, its files replaced whole.

Two runs writing into one directory mix their outputs (metrics from one, requests.csv rows from
both). So a run holds its directory with an advisory lock (`flock` on `.apcsim.lock`, which holds
the holder's pid) from before Hydra writes anything there until the process ends; a second run
into it stops at once with exit status 2 and the holder's pid. The kernel drops the lock when the
holder dies, even by kill -9, so a crashed run never blocks the next one. Output files are
written to a temporary name and renamed (`write_text_atomic`): a crash leaves the previous
complete file or none, never half of one.

`apcsim.outputs.rundir_lock.RunDirLock` is the Hydra callback that takes the lock; this module
imports neither Hydra nor OmegaConf (the CLI's fast path holds the directory without them).
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from apcsim.errors import ConfigError, exit_bad_input

LOCK_FILE = ".apcsim.lock"

# Directories this process holds: path -> the open lock file's descriptor (the lock lives as long
# as the descriptor). Process-wide like the lock itself; a second hold by the same process is a no-op.
_HELD: dict[str, int] = {}


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a crash) sees the old file or the new, whole."""
    _write_atomic(path, text, "w", newline="")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`write_text_atomic` of bytes."""
    _write_atomic(path, data, "wb")


def _write_atomic(path: Path, data: str | bytes, mode: str, **open_kw) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, mode, **open_kw) as f:
        f.write(data)
    os.replace(tmp, path)


@contextmanager
def streamed(path: Path | None) -> Iterator[IO[str] | None]:
    """A text file written as a run goes (requests.csv rows as requests leave): it is `PATH.partial`
    until the block ends and is renamed to `path` only then, also after an interruption the
    block handled; an exception leaving the block keeps the `.partial` name, so a crashed run
    never leaves a file that looks complete. `path=None`: nothing is written (yields None)."""
    if path is None:
        yield None
        return
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as f:
        yield f
    os.replace(partial, path)


def _dir_problem(path: Path, key: str, e: OSError) -> ConfigError:
    """One line for a run directory that cannot be created or written."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == path else f"is under {parent}, which is a file"
            return ConfigError(f"{key}={path} {what}, not a directory; pick another {key}")
    reason = os.strerror(e.errno) if e.errno else str(e)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ConfigError(f"{key}={path} is not writable ({reason}); pick a directory you can write to")
    return ConfigError(f"{key}={path}: cannot create it ({reason})")


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def hold(path: Path, key: str = "hydra.run.dir") -> None:
    """Create `path` and hold it for this process; ConfigError (one line) if that cannot be done
    or another live process holds it. `key` names the option that chose the directory."""
    path = Path(path)
    name = os.path.abspath(path)
    if name in _HELD:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = _open_lock_file(path / LOCK_FILE)
    except OSError as e:
        raise _dir_problem(path, key, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"{key}={path} is in use by another run (pid {holder}); wait for it to finish "
                          f"or pick another {key}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[name] = fd


def release(path: Path) -> None:
    fd = _HELD.pop(os.path.abspath(path), None)
    if fd is not None:
        os.close(fd)


def hold_or_exit(path: Path, key: str, prog: str) -> None:
    """`hold`, or bad input's one line and exit status 2."""
    try:
        hold(path, key)
    except ConfigError as e:
        exit_bad_input(prog, str(e))
