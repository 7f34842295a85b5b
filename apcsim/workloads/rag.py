"""Retrieval-augmented generation: each prompt is a system prompt, k retrieved document chunks
and a question.

Chunks come from a pool of `num_documents`, drawn without replacement with Zipf popularity
(rank r has weight 1/r^zipf_alpha), so a few documents are retrieved again and again. A prefix
cache reuses a chunk only when everything before it matches too: in retrieval order that is
mostly the most popular first chunk. `sort_chunks=true` orders each request's chunks by document
id, a known trick that lets requests retrieving the same set share all of it.
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


@dataclass
class RagConfig(WorkloadConfig):
    name: str = "rag"
    num_requests: Optional[int] = 512
    num_documents: int = 1000
    chunk_tokens: int = 512
    chunks_per_request: int = 4
    zipf_alpha: float = 1.1
    system_prompt_tokens: int = 128
    question_tokens: int = 64
    output_tokens: int = 128
    sort_chunks: bool = False


@register_workload("rag", RagConfig)
def build(cfg: RagConfig, ctx: BuildContext) -> list[RequestSpec]:
    n = check_int(cfg, "num_requests", 1)
    n_docs = check_int(cfg, "num_documents", 1)
    chunk = check_int(cfg, "chunk_tokens", 1)
    k = check_int(cfg, "chunks_per_request", 0)
    alpha = check_float(cfg, "zipf_alpha", 0.0)
    sys_len = check_int(cfg, "system_prompt_tokens", 0)
    q = check_int(cfg, "question_tokens", 1)
    out = check_int(cfg, "output_tokens", 1)
    if k > n_docs:
        raise ConfigError(f"workload.chunks_per_request ({k}) exceeds workload.num_documents ({n_docs})")
    rng, v = ctx.rng, ctx.vocab_size
    system = rng.integers(0, v, sys_len, dtype=np.int32)
    docs = rng.integers(0, v, (n_docs, chunk), dtype=np.int32)  # int32 [num_documents, chunk_tokens]
    # Documents differ in their first token, so no chunk block is shared by accident.
    docs[:, 0] = distinct_tokens(rng, n_docs, v)
    weights = 1.0 / np.arange(1, n_docs + 1, dtype=np.float64) ** alpha
    weights /= weights.sum()
    first_q = distinct_tokens(rng, n, v)
    specs = []
    for i in range(n):
        picked = rng.choice(n_docs, size=k, replace=False, p=weights)
        if cfg.sort_chunks:
            picked = np.sort(picked)
        question = rng.integers(0, v, q, dtype=np.int32)
        question[0] = first_q[i]
        prompt = readonly(np.concatenate([system, docs[picked].reshape(-1), question]))
        # The shared part: the system prompt and the retrieved chunks, everything but the question.
        specs.append(RequestSpec(request_id=f"rag-{i}", prompt_token_ids=prompt, output_len=out,
                                 retention_ranges=shared_retention(cfg, prompt.shape[0] - q)))
    return specs
