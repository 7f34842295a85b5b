"""Workloads: each module registers one generator or trace reader under its name.

Adding a workload is one file here: a `WorkloadConfig` subclass and a `@register_workload`
build function; then `workload=<name>` works on the command line. Modules are found on disk, as
policies are: every module here is imported, except those whose name starts with `_`. A module
that defines a `WorkloadConfig` subclass is a workload and registers it; the others (`base`,
`priorities`, `tracefile`, `_common`, `_stream`) are the machinery the workloads share
(tests/workloads/test_workloads.py checks both).
"""

import importlib
import pkgutil

from apcsim.workloads._stream import SpecSource, Workload
from apcsim.workloads.base import (
    WORKLOADS,
    BuildContext,
    WorkloadConfig,
    build_workload,
    open_workload,
    register_workload,
)

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["WORKLOADS", "BuildContext", "SpecSource", "Workload", "WorkloadConfig", "build_workload", "open_workload",
           "register_workload"]
