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
from apcsim.workloads._stream import SpecSource
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
def build(cfg: RagConfig, ctx: BuildContext) -> SpecSource:
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
    draws = _Draws(rng, n_docs, k, weights, q, v, cfg.sort_chunks)
    shared_len = sys_len + k * chunk  # the system prompt and the retrieved chunks: all but the question
    keep = shared_retention(cfg, shared_len)

    def make(i: int, **fields) -> RequestSpec:
        picked, question = draws.of(i)
        question[0] = first_q[i]
        prompt = readonly(np.concatenate([system, docs[picked].reshape(-1), question]))
        return RequestSpec(request_id=f"rag-{i}", prompt_token_ids=prompt, output_len=out, retention_ranges=keep,
                           **fields)

    return SpecSource(count=n, make=make, min_tokens=shared_len + q + out, has_retention=bool(keep))


class _Draws:
    """Each request's chunks and question, drawn one request after another from the workload's
    stream. Requests are asked for in order (a run's arrival order is workload order here); an
    earlier one replays the stream from the first request, so any order gives the same draws."""

    def __init__(self, rng: np.random.Generator, n_docs: int, k: int, weights: np.ndarray, q: int, vocab: int,
                 sort_chunks: bool) -> None:
        self._rng, self._n_docs, self._k, self._weights = rng, n_docs, k, weights
        self._q, self._vocab, self._sort = q, vocab, sort_chunks
        self._first_state = rng.bit_generator.state
        self._next = 0  # the request the stream is positioned at

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self._rng
        if i < self._next:
            rng.bit_generator.state = self._first_state
            self._next = 0
        while True:
            picked = rng.choice(self._n_docs, size=self._k, replace=False, p=self._weights)
            if self._sort:
                picked = np.sort(picked)
            question = rng.integers(0, self._vocab, self._q, dtype=np.int32)
            self._next += 1
            if self._next > i:
                return picked, question
