"""Workloads: each module registers one generator or trace reader under its name.

Adding a workload is one file here: a `WorkloadConfig` subclass and a `@register_workload`
build function; then `workload=<name>` works on the command line. Modules are found on disk, as
policies are, and imported as policies are (policies.registry.Registry): a workload's module when
its name is looked up, every module (but those whose name starts with `_`) when `WORKLOADS` is
listed. A module
that defines a `WorkloadConfig` subclass is a workload and registers it; the others (`base`,
`priorities`, `tracefile`, `_common`, `_stream`) are the machinery the workloads share
(tests/workloads/test_workloads.py checks both).
"""

from apcsim.workloads._stream import SpecSource, Workload
from apcsim.workloads.base import (
    WORKLOADS,
    BuildContext,
    WorkloadConfig,
    build_workload,
    open_workload,
    register_workload,
)

__all__ = ["WORKLOADS", "BuildContext", "SpecSource", "Workload", "WorkloadConfig", "build_workload", "open_workload",
           "register_workload"]
