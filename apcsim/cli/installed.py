"""A fingerprint of the installed code and files that define a composed config: every .py and
.yaml file of apcsim (its conf/ and the dataclass schemas), of policies (the policies'
registered configs) and of the installed Hydra plugins (their configs and search paths), by
path, size and modification time, and the files that carry Hydra's and OmegaConf's versions
(Hydra's own conf/ ships with Hydra). Any change to these changes the fingerprint.

Found without importing any of them (`importlib.util.find_spec`): the CLI's fast path reads it
before deciding whether Hydra is needed at all.
"""

from __future__ import annotations

import os
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


def fingerprint(h) -> None:
    """Feed the fingerprint into hashlib object `h`."""
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
