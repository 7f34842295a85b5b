"""The batch sizes our engine captures decode CUDA graphs for, shared by the engine (which pads a
decode batch to its bucket) and the calibrated cost model (which costs a whole decode step at
the bucket the engine will really run).

1, 2, 4, then multiples of 8, as vLLM's capture sizes: padding wastes at most 7 rows past 8,
where a GEMM of a few more rows costs next to nothing on a GPU.
"""

from __future__ import annotations

from apcsim.mathutil import cdiv


def bucket_of(batch: int) -> int:
    """The bucket a decode batch of `batch` requests runs as."""
    if batch <= 4:
        return 1 if batch <= 1 else (2 if batch == 2 else 4)
    return cdiv(batch, 8) * 8


def batch_buckets(max_batch: int) -> list[int]:
    """The buckets that serve every batch up to max_batch: up to bucket_of(max_batch), so a batch
    always runs as bucket_of(batch), which is what the cost model assumes."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    top = bucket_of(max_batch)
    return [b for b in (1, 2, 4) if b <= top] + list(range(8, top + 1, 8))
