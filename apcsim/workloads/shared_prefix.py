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
from apcsim.workloads._stream import SpecSource
from apcsim.workloads.base import BuildContext, WorkloadConfig, register_workload
from apcsim.workloads.priorities import shared_retention

_CHUNK_TOKENS = 1 << 22  # the unique parts are drawn in chunks of ~16 MB: bounded memory


@dataclass
class SharedPrefixConfig(WorkloadConfig):
    name: str = "shared_prefix"
    num_requests: Optional[int] = 256
    input_tokens: int = 1024
    shared_fraction: float = 0.25
    output_tokens: int = 1024


@register_workload("shared_prefix", SharedPrefixConfig)
def build(cfg: SharedPrefixConfig, ctx: BuildContext) -> SpecSource:
    n = check_int(cfg, "num_requests", 1)
    length = check_int(cfg, "input_tokens", 1)
    frac = check_float(cfg, "shared_fraction", 0.0)
    if frac > 1.0:
        raise ConfigError(f"workload.shared_fraction must be in [0, 1], got {frac}")
    out = check_int(cfg, "output_tokens", 1)
    prompts = _Prompts(ctx.rng, n, length, int(round(frac * length)), ctx.vocab_size)
    keep = shared_retention(cfg, prompts.shared)

    def make(i: int, **fields) -> RequestSpec:
        return RequestSpec(request_id=f"shp-{i}", prompt_token_ids=prompts.row(i), output_len=out,
                           retention_ranges=keep, **fields)

    return SpecSource(count=n, make=make, min_tokens=length + out, has_retention=bool(keep))


class _Prompts:
    """The prompts of the (n, input_tokens) matrix the workload is defined by, one row at a time.

    The matrix is: the shared part drawn once; the unique parts drawn chunk by chunk (rows of
    ~16 MB); then the first unique token of each row replaced by a token distinct between rows
    (no false hit on the block that straddles shared and unique part). The unique chunks are
    drawn once here to reach the stream's state after them, and drawn again from their saved
    start states when a row is asked for: the same tokens, one chunk in memory at a time.
    """

    def __init__(self, rng: np.random.Generator, n: int, length: int, shared: int, vocab_size: int) -> None:
        self.n, self.length, self.shared, self.vocab = n, length, shared, vocab_size
        self.shared_tokens = rng.integers(0, vocab_size, shared, dtype=np.int32)
        self.unique = length - shared
        self.rows = max(1, _CHUNK_TOKENS // self.unique) if self.unique else n
        self._chunk_states: list[dict] = []
        if self.unique:
            for lo in range(0, n, self.rows):
                self._chunk_states.append(rng.bit_generator.state)
                rng.integers(0, vocab_size, (min(n, lo + self.rows) - lo, self.unique), dtype=np.int32)
            # distinct_tokens(rng, n, v)[i] is perm[i % len(perm)]: keep perm, not n tokens.
            self._perm = distinct_tokens(rng, min(n, vocab_size), vocab_size)
        self._bit_generator = type(rng.bit_generator)
        self._chunk_no, self._chunk = -1, None

    def _unique_chunk(self, c: int) -> np.ndarray:
        if c != self._chunk_no:
            bg = self._bit_generator()
            bg.state = self._chunk_states[c]
            lo = c * self.rows
            rows = min(self.n, lo + self.rows) - lo
            self._chunk = np.random.Generator(bg).integers(0, self.vocab, (rows, self.unique), dtype=np.int32)
            self._chunk_no = c
        return self._chunk  # type: ignore[return-value]

    def row(self, i: int) -> np.ndarray:
        """Prompt i (int32 [input_tokens], read-only)."""
        p = np.empty(self.length, dtype=np.int32)
        p[: self.shared] = self.shared_tokens
        if self.unique:
            c = i // self.rows
            p[self.shared :] = self._unique_chunk(c)[i - c * self.rows]
            p[self.shared] = self._perm[i % self._perm.shape[0]]
        return readonly(p)
