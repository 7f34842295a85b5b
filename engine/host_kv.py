"""The engine's host KV tier: a host-memory copy of the paged KV layout and the block copies the
scheduler's host tier decides (apcsim.core.host_tier.StepTransfers).

The buffer is `[num_layers, num_host_blocks, block_size, kv_heads, head_dim]` for K and for V,
like the device cache, in pinned memory when the cache is on a CUDA device (so copies run as
DMA and may be asynchronous). A step's copies run in their recorded order before its forward
pass; consecutive copies of one kind that touch distinct blocks are batched into one indexed copy.
"""

from __future__ import annotations

import time

import torch


def _runs(copies):
    """Consecutive copies of one kind, no block twice in a run: each run is safe to batch."""
    run, srcs, dsts = [], set(), set()
    for c in copies:
        if run and (c.kind != run[0].kind or c.src in srcs or c.dst in dsts):
            yield run
            run, srcs, dsts = [], set(), set()
        run.append(c)
        srcs.add(c.src)
        dsts.add(c.dst)
    if run:
        yield run


class HostKVBuffer:
    def __init__(self, k_caches: torch.Tensor, v_caches: torch.Tensor, num_blocks: int) -> None:
        """`k_caches`, `v_caches`: the device cache [L, N, bs, H, D]; `num_blocks` host blocks."""
        shape = (k_caches.shape[0], num_blocks, *k_caches.shape[2:])  # [L, num_blocks, bs, H, D]
        pin = k_caches.device.type == "cuda"
        self.device_kv = (k_caches, v_caches)
        self.host_kv = tuple(torch.zeros(shape, dtype=k_caches.dtype, pin_memory=pin) for _ in range(2))
        self.num_blocks = num_blocks
        self.copy_s = 0.0  # wall seconds spent copying (synchronised)
        self.blocks_copied = {"store": 0, "load": 0}

    @property
    def block_bytes(self) -> int:
        k = self.host_kv[0]
        return 2 * k[:, 0].numel() * k.element_size()

    def run(self, copies) -> None:
        """Run one step's copies in order; returns when they are done."""
        t0 = time.perf_counter()
        dev = self.device_kv[0].device
        for run in _runs(copies):
            src = torch.tensor([c.src for c in run], dtype=torch.int64)
            dst = torch.tensor([c.dst for c in run], dtype=torch.int64)
            store = run[0].kind == "store"
            if store:  # the device side's index lives on the device: moved once for K and V
                src = src.to(dev)
            else:
                dst = dst.to(dev)
            for device_cache, host_cache in zip(self.device_kv, self.host_kv):
                if store:  # device -> host
                    host_cache[:, dst] = device_cache[:, src].to("cpu")
                else:  # host -> device
                    device_cache[:, dst] = host_cache[:, src].to(dev, non_blocking=True)
            self.blocks_copied[run[0].kind] += len(run)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.copy_s += time.perf_counter() - t0
