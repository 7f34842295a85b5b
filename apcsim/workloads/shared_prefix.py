"""One common prefix plus request-unique random tokens (the "Dynamic-Sonnet-like" set).

Defaults follow the vLLM vs TensorRT-LLM prefix-caching comparison: 256 requests of 1,024 input
tokens, a quarter of them shared, 1,024 output tokens. shared_fraction=0 is its "fixed random"
set: nothing shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from apcsim.core.request import RequestSpec
from apcsim.errors import ConfigError
from apcsim.workloads._common import check_float, check_int, distinct_tokens, readonly
from apcsim.workloads.base import BuildContext, WorkloadConfig, register_workload
from apcsim.workloads.priorities import shared_retention

_CHUNK_TOKENS = 1 << 22  # draw the unique parts in chunks of ~16 MB: bounded temporary memory


@dataclass
class SharedPrefixConfig(WorkloadConfig):
    name: str = "shared_prefix"
    num_requests: Optional[int] = 256
    input_tokens: int = 1024
    shared_fraction: float = 0.25
    output_tokens: int = 1024


@register_workload("shared_prefix", SharedPrefixConfig)
def build(cfg: SharedPrefixConfig, ctx: BuildContext) -> list[RequestSpec]:
    n = check_int(cfg, "num_requests", 1)
    length = check_int(cfg, "input_tokens", 1)
    frac = check_float(cfg, "shared_fraction", 0.0)
    if frac > 1.0:
        raise ConfigError(f"workload.shared_fraction must be in [0, 1], got {frac}")
    out = check_int(cfg, "output_tokens", 1)
    rng, v = ctx.rng, ctx.vocab_size
    shared = int(round(frac * length))
    # One (n, input_tokens) buffer, each prompt a row view: 100k requests build in about a second.
    prompts = np.empty((n, length), dtype=np.int32)
    prompts[:, :shared] = rng.integers(0, v, shared, dtype=np.int32)
    if shared < length:
        rows = max(1, _CHUNK_TOKENS // (length - shared))
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            prompts[lo:hi, shared:] = rng.integers(0, v, (hi - lo, length - shared), dtype=np.int32)
        # The first unique token differs between requests: no false hit on the straddling block.
        prompts[:, shared] = distinct_tokens(rng, n, v)
    readonly(prompts)
    keep = shared_retention(cfg, shared)
    return [RequestSpec(request_id=f"shp-{i}", prompt_token_ids=prompts[i], output_len=out, retention_ranges=keep)
            for i in range(n)]
