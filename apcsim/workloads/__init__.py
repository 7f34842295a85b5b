"""Workloads: each module registers one generator or trace reader under its name.

Adding a workload is one file here: a `WorkloadConfig` subclass and a `@register_workload`
build function; then `workload=<name>` works on the command line.
"""

from apcsim.workloads import azure, mooncake, multiturn, rag, shared_prefix, system_prompt  # noqa: F401  (register)
from apcsim.workloads.base import WORKLOADS, BuildContext, WorkloadConfig, build_workload, register_workload

__all__ = ["WORKLOADS", "BuildContext", "WorkloadConfig", "build_workload", "register_workload"]
