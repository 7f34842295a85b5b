"""A shared system prompt followed by a question unique to each request.

The smallest prefix-caching example: with block_size=8 and 3 requests served one at a time the
engine computes 1,050 + 50 + 50 = 1,150 prompt tokens (the system prompt's 125 blocks hit); with
block_size=16 only 62 full blocks fit in the 1,000 tokens, so it computes 1,050 + 2*58 = 1,166.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from apcsim.core.request import RequestSpec
from apcsim.workloads._common import check_int, distinct_tokens, readonly
from apcsim.workloads.base import BuildContext, WorkloadConfig, register_workload
from apcsim.workloads.priorities import shared_retention


@dataclass
class SystemPromptConfig(WorkloadConfig):
    name: str = "system_prompt"
    num_requests: Optional[int] = 3
    system_prompt_tokens: int = 1000
    question_tokens: int = 50
    output_tokens: int = 32


@register_workload("system_prompt", SystemPromptConfig)
def build(cfg: SystemPromptConfig, ctx: BuildContext) -> list[RequestSpec]:
    n = check_int(cfg, "num_requests", 1)
    s = check_int(cfg, "system_prompt_tokens", 0)
    q = check_int(cfg, "question_tokens", 1)
    out = check_int(cfg, "output_tokens", 1)
    rng, v = ctx.rng, ctx.vocab_size
    # One (n, s+q) buffer; each prompt is a row view of it.
    prompts = np.empty((n, s + q), dtype=np.int32)
    prompts[:, :s] = rng.integers(0, v, s, dtype=np.int32)
    prompts[:, s:] = rng.integers(0, v, (n, q), dtype=np.int32)
    # Distinct first question tokens: the block straddling system prompt and question never
    # matches another request's, so the hit count is exactly the system prompt's full blocks.
    prompts[:, s] = distinct_tokens(rng, n, v)
    readonly(prompts)
    keep = shared_retention(cfg, s)  # the system prompt
    return [RequestSpec(request_id=f"sp-{i}", prompt_token_ids=prompts[i], output_len=out, retention_ranges=keep)
            for i in range(n)]
