"""A fingerprint of the installed code and files that define a composed config: every .py and
.yaml file of apcsim (its conf/ and the dataclass schemas), of policies (the policies'
registered configs) and of the installed Hydra plugins (their configs and search paths), by
path, size and modification time, and the files that carry Hydra's and OmegaConf's versions
(Hydra's own conf/ ships with Hydra). Any change to these changes the fingerprint.

Found without importing any of them (`importlib.util.find_spec`): the CLI's fast path reads it
before deciding whether Hydra is needed at all.

One command reads it once (`Fingerprint`): the fast path's key, the compose cache's key and the
fast entry recorded after Hydra's run all take the same digest.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from importlib.util import find_spec
from pathlib import Path

# The files holding each library's version: a reinstall of another version rewrites them.
_VERSION_FILES = (("hydra", "__init__.py"), ("omegaconf", "version.py"))


def _package_dirs(name: str) -> list[Path]:
    spec = find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def config_packages() -> list[Path]:
    """The directories whose files define the config (hydra_plugins: a namespace package, every
    installed plugin's directory; none when no plugin is installed)."""
    return [*_package_dirs("apcsim"), *_package_dirs("policies"), *_package_dirs("hydra_plugins")]


def fingerprint() -> str:
    """The installed files' fingerprint, a sha256 hex digest."""
    h = hashlib.sha256()
    for top in config_packages():
        for d, dirs, files in os.walk(top):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")  # a fixed order, and no bytecode
            for f in sorted(files):
                if f.endswith((".py", ".yaml")):
                    st = os.stat(os.path.join(d, f))
                    h.update(f"{d}/{f} {st.st_size} {st.st_mtime_ns}\n".encode())
    for package, file in _VERSION_FILES:
        for d in _package_dirs(package):
            st = os.stat(d / file)
            h.update(f"{d / file} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class Fingerprint:
    """The fingerprint for one command, walked when a key first needs it and kept for the rest
    of that command (a plain line's miss needs it three times: fast path, compose cache,
    recorder). One object per command, passed down its path, never a module global: tests edit
    config files between commands in one process. A walk that raised (a file vanished) is not
    kept, so a later ask walks again."""

    @cached_property
    def digest(self) -> str:
        return fingerprint()
