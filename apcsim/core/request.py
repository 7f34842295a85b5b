"""Requests: what a workload asks for (`RequestSpec`) and its life inside the engine (`Request`).

A `RequestSpec` is immutable workload data. A `Request` is the serving core's mutable record of
one spec: the tokens computed so far, its block table, its timestamps. Both the simulator and the
real engine build `Request`s from the same specs, so they schedule exactly the same thing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from apcsim.core.content_ids import ContentChain, ContentIds, mix64
from apcsim.core.lazy_prompt import LazyPrompt


@dataclass(frozen=True)
class TokenRetention:
    """A retention priority for the prompt tokens [start, end) of one request, as TensorRT-LLM's
    `TokenRangeRetentionConfig`. A KV block takes the range that holds its FIRST token (TensorRT-
    LLM's rule), so a block straddling the range's end is retained with it. `duration_s` None:
    the priority holds until the block is evicted."""

    start: int
    end: int
    priority: int
    duration_s: float | None = None


@dataclass(frozen=True, eq=False)
class RequestSpec:
    """One request of a workload.

    Invariant: `prompt_token_ids` is a 1-D int32 array of length >= 1, or a `LazyPrompt` that
    makes such an array's slices when read (read it by slices, `len` or `np.asarray`; `[:]` is
    every token), and `output_len >= 1`.
    `output_token_ids`, when given, are the tokens the simulator "generates" (so a later turn of a
    conversation that quotes them hits the cache); otherwise they are drawn from a per-request
    stream. `priority` orders the waiting queue under `scheduler=priority` (vLLM's convention:
    lower is scheduled first); `priority_class` names the workload class it came from (metrics
    break latencies down by it). `retention_priority`/`retention_duration_s`/`retention_ranges`
    are read by `priority_lru` only. `parent_id`
    makes the request a follow-up: it arrives `think_time_s` after its parent
    finishes, and never before `arrival_time`.
    """

    request_id: str
    prompt_token_ids: np.ndarray | LazyPrompt  # int32 [prompt_len]
    output_len: int
    arrival_time: float = 0.0
    priority: int = 0
    cache_salt: str | None = None
    output_token_ids: np.ndarray | None = None  # int32 [output_len]
    parent_id: str | None = None
    think_time_s: float = 0.0
    # TensorRT-LLM-style retention priority (0..100) of the blocks this request releases, and for
    # how many seconds it holds before decaying to the policy's default; None: the `priority_lru`
    # config decides. Other policies ignore both.
    retention_priority: int | None = None
    retention_duration_s: float | None = None
    # Per-token-range retention (e.g. the shared system prompt kept longer than the user turn);
    # a block whose first token falls in a range takes that range's priority, before
    # `retention_priority`.
    retention_ranges: tuple[TokenRetention, ...] = ()
    priority_class: str | None = None
    # The prompt's tokens named by content ids (Mooncake hash ids): the KV cache manager keys
    # those blocks from the ids without hashing tokens (apcsim/core/content_ids.py).
    content_ids: ContentIds | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def own_content(self) -> bool:
        """Whether the prompt starts with content no other request names (`ContentIds.unique`):
        every key of its blocks is this request's alone."""
        return self.content_ids is not None and self.content_ids.unique

    @property
    def in_priority_class(self) -> bool:
        """Whether the request names a class or a non-zero priority (a run with any such request
        reports by class)."""
        return self.priority_class is not None or self.priority != 0


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def output_stream(seed: int, index: int, n: int) -> np.ndarray:
    """The tokens request `index` "generates" (int32 [n], in [0, 2^31)).

    Token ids are opaque to the cache; any stream distinct per request will do. splitmix64 of
    (seed, index, position) costs a few microseconds, where a seeded Generator costs ~50.
    """
    base = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF
    x = np.arange(1, n + 1, dtype=np.uint64)  # array arithmetic wraps silently mod 2^64
    x *= _GOLDEN
    x += np.uint64(base)
    return (mix64(x) >> np.uint64(33)).astype(np.int32)


# `Request.hit_memo` of a request whose prompt starts with content no other request names
# (`ContentIds.unique`) until it first holds blocks (allocate_slots drops the memo): only its own
# blocks could carry its first key, so its lookups miss without a walk (up to a 64-bit key
# collision, as everywhere). The tuple is a memo that never stands, for a walk that needs one.
UNSEEN_PREFIX: tuple = (-1, -1, (), 0)


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"
    REJECTED = "rejected"


@dataclass(eq=False)
class Request:
    """The serving core's state of one request.

    Tokens are prompt + generated output; `num_computed_tokens` of them have KV in the cache. A
    request in the decode phase may be advanced lazily, as a member of the decode cohort (see
    `apcsim.core.cohort`): while `anchor_step >= 0`, `num_computed_tokens` and
    `num_output_tokens` hold their values at `anchor_step`, and the scheduler makes them exact
    when the request leaves the cohort, before anything outside the scheduler reads them.
    """

    spec: RequestSpec
    index: int  # position in the workload; seeds this request's output-token stream
    output_seed: int = 0
    status: Status = Status.WAITING
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading blocks of block_ids that carry a key
    block_keys: list[int] = field(default_factory=list)  # keys of full blocks, computed lazily
    # The content keys of a prompt named by content ids, made as far as asked (the KV cache
    # manager makes it with the first key); None: token keys only.
    content_chain: ContentChain | None = None
    num_preemptions: int = 0
    computed_high_water: int = 0  # most tokens ever with KV, for counting recomputation
    num_cached_tokens: int = -1  # prefix hit at first admission; -1 until admitted
    rejected_reason: str = ""
    # Times in seconds (simulated or wall clock, from the executor's clock).
    arrival_time: float = 0.0
    first_scheduled_time: float = -1.0
    first_token_time: float = -1.0
    last_token_time: float = -1.0
    finish_time: float = -1.0
    # Lazy decode bookkeeping, owned by the scheduler.
    admit_seq: int = -1
    anchor_step: int = -1
    event_version: int = 0
    # The cohort's finish entry that counts for this request, as queued (see apcsim.core.cohort);
    # None once it surfaced. One field, not three: past 30 attributes an instance's dict stops
    # sharing its keys with the class's other instances and grows from 288 to ~1,600 bytes.
    finish_entry: tuple | None = None
    # (pool.num_evictions, pool.num_inserts, hit blocks, blocks it could reach) of the last prefix
    # lookup while waiting: its hits stay exact while no keyed block is evicted, so a request
    # retried every step re-walks only past their end, and the whole answer while no key is
    # entered either (the next lookup in the same pass is free).
    hit_memo: tuple | None = None
    lookup_collided: bool = False  # verify_tokens: the last lookup stopped at a hash collision
    # Whether it holds a pending range nobody else can reach (apcsim.core.pending_keys; its
    # prompt's content is its own, `ContentIds.unique`): nothing reads the range's end before
    # the request leaves the cohort, so a decode block boundary need not move it (its leave does).
    own_pending_range: bool = False
    # Whether every output token is known in advance (the simulated stream, or the workload's
    # fixed answer), so keys of output blocks may be computed before the blocks fill. A real
    # engine's stream (`set_output_tokens`) fills as it samples: its blocks are keyed as they fill.
    outputs_fixed: bool = True
    _outputs: np.ndarray | None = None

    @property
    def request_id(self) -> str:
        return self.spec.request_id

    @property
    def priority(self) -> int:
        return self.spec.priority

    def __post_init__(self) -> None:
        self.prompt_len = self.spec.prompt_len  # read on every step: a plain attribute
        if self.spec.own_content:
            self.hit_memo = UNSEEN_PREFIX

    @property
    def max_output_tokens(self) -> int:
        return self.spec.output_len

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens (the last generated one has no KV yet)."""
        return self.prompt_len + self.num_output_tokens

    def output_tokens(self) -> np.ndarray:
        """All `output_len` tokens this request will generate (int32 [output_len])."""
        if self._outputs is None:
            if self.spec.output_token_ids is not None:
                self._outputs = self.spec.output_token_ids
            else:
                self._outputs = output_stream(self.output_seed, self.index, self.spec.output_len)
        return self._outputs

    def token_slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of prompt + generated output (int32)."""
        p = self.prompt_len
        if stop <= p:
            return self.spec.prompt_token_ids[start:stop]
        outs = self.output_tokens()
        if start >= p:
            return outs[start - p : stop - p]
        return np.concatenate([self.spec.prompt_token_ids[start:], outs[: stop - p]])

    def set_output_tokens(self, tokens: np.ndarray) -> None:
        """Used by a real engine: the tokens it sampled replace the simulated stream."""
        self._outputs = tokens
        self.outputs_fixed = False

    def release_outputs(self) -> None:
        """Drop the materialised output stream once nothing needs it (memory stays O(running))."""
        if self.spec.output_token_ids is None:
            self._outputs = None
