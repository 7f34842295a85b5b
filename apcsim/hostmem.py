"""Sizes that cannot fit this machine are refused before anything is allocated.

A Python list of 10^12 blocks or 10^9 prompts grows until the kernel kills the process (or a
MemoryError traceback, minutes later); the numbers are known up front, so the check is cheap.
"""

from __future__ import annotations

import os

from apcsim.errors import ConfigError

# Host bytes one KV block costs the simulator's block pool (its `Block` object, the list slots,
# the free stack): 160 bytes measured with tracemalloc for 100,000 blocks (LRU and no policy alike,
# 2026-11-27); policies add a little, so round up.
POOL_BYTES_PER_BLOCK = 192
# Host bytes of one request's spec beyond its prompt token ids (4 bytes each): ~400 measured with
# tracemalloc for 20,000 shared_prefix requests (2026-11-27), rounded up.
SPEC_BYTES_OVERHEAD = 512
# Host bytes a request costs a run whose workload is made one request at a time (the request
# log's columns and their copies for the summary, the arrival times, the step timeline): peak RSS
# grew 334 bytes a request from 100k to 1M shared_prefix requests (bench/results/long_run_cpu.json,
# 2026-11-27), rounded up.
STREAMED_BYTES_PER_REQUEST = 512


def available_bytes() -> int:
    """Memory this process can still allocate: MemAvailable on Linux, else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def check_fits(what: str, need: float, hint: str, available: int | None = None) -> None:
    """ConfigError when `need` bytes exceed what this machine has available."""
    have = available_bytes() if available is None else available
    if need > have:
        raise ConfigError(f"{what} needs about {fmt_bytes(need)} of memory, this machine has {fmt_bytes(have)} "
                          f"available; {hint}")
