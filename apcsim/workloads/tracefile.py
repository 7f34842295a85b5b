"""Finding trace files and reporting their defects."""

from __future__ import annotations

import os
import pathlib
import sys

from apcsim.errors import TraceError

# The traces bundled with the package (see apcsim/traces/README.md for origins and licenses).
BUNDLED_TRACES = pathlib.Path(__file__).resolve().parents[1] / "traces"


def _original_cwd() -> pathlib.Path | None:
    """The directory the user ran from: Hydra may have chdir'ed into its output dir since."""
    if "hydra.core.hydra_config" not in sys.modules:  # Hydra never ran here (the CLI's fast path): no chdir
        return None
    try:
        from hydra.utils import get_original_cwd
    except ImportError:  # pragma: no cover - hydra is a dependency, but keep this usable without
        return None
    try:
        return pathlib.Path(get_original_cwd())
    except ValueError:  # Hydra is not initialised: plain Python or a test
        return None


def resolve_trace_path(path: str) -> pathlib.Path:
    """An absolute path as is; a relative one against the cwd, Hydra's original cwd, then the
    bundled traces directory (so `workload.path=mooncake/synthetic_trace.jsonl` works anywhere)."""
    p = pathlib.Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        candidates = [p]
    else:
        bases = [pathlib.Path.cwd()]
        orig = _original_cwd()
        if orig is not None and orig != bases[0]:
            bases.append(orig)
        bases.append(BUNDLED_TRACES)
        candidates = [b / p for b in bases]
    for c in candidates:
        if c.is_file():
            try:
                open(c, "rb").close()
            except OSError as e:
                raise TraceError(f"cannot read trace file {c}: {e.strerror or e}; check its permissions") from None
            return c
    dirs = [c for c in candidates if c.is_dir()]
    if dirs:
        raise TraceError(f"workload.path={path} is a directory ({dirs[0]}), not a trace file; name the file in it")
    looked = ", ".join(str(c.parent) for c in candidates)
    raise TraceError(f"trace file not found: {path} (looked in {looked})")


def trace_error(path: pathlib.Path, line: int | None, msg: str) -> TraceError:
    """Errors name the file and the 1-based line so the user can go and look."""
    where = f"{path}, line {line}" if line is not None else str(path)
    return TraceError(f"{where}: {msg}")


SALT_FIELDS = ("cache_salt", "tenant")


def salt_value(fields: dict, where) -> str | None:
    """A record's cache salt from its optional `cache_salt` or `tenant` field (a non-empty string
    or an integer); both may be given only if equal. `where(msg)` builds the TraceError."""
    found = {}
    for key in SALT_FIELDS:
        v = fields.get(key)
        if v is None or v == "":
            continue
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise where(f"{key} must be a string or an integer, got {v!r}")
        found[key] = str(v)
    if len(set(found.values())) > 1:
        raise where(f"cache_salt {found['cache_salt']!r} and tenant {found['tenant']!r} disagree; give one")
    return next(iter(found.values()), None)
