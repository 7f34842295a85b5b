"""vLLM's budget rules for one request: whether it could ever run, how many tokens it may compute
if admitted now, what that charges the step's token budget, and whether the pool has its blocks.
Pure functions of the scheduler's config and the cache: the scheduler decides with them at each
step, and asks the same question about the head of the queue before it lets the simulator skip
quiet steps.
"""

from __future__ import annotations

from apcsim.core.kv_cache_manager import KVCacheManager
from apcsim.core.request import Request
from apcsim.mathutil import cdiv
from policies.scheduling.base import SchedulerConfig


def rejection_reason(cfg: SchedulerConfig, kv: KVCacheManager, req: Request) -> str:
    """Why `req` could never run under this configuration ("" if it could)."""
    total = req.prompt_len + req.max_output_tokens
    blocks = cdiv(total, kv.block_size)
    if blocks > kv.pool.num_blocks:
        return f"needs {blocks} blocks for {total} tokens, the cache has {kv.pool.num_blocks}"
    if cfg.max_model_len is not None and total > cfg.max_model_len:
        return f"{total} tokens exceed max_model_len {cfg.max_model_len}"
    if not cfg.chunked_prefill and req.prompt_len > cfg.max_num_batched_tokens:
        return (f"prompt of {req.prompt_len} tokens exceeds max_num_batched_tokens {cfg.max_num_batched_tokens}"
                " without chunked prefill")
    return ""


def long_prefill_cap(cfg: SchedulerConfig, num_requests: int) -> int:
    """The step's cap on one request's prefill chunk (0: none), with `num_requests` running or
    waiting. vLLM 0.32 lifts the cap when a single request is running or waiting
    (`long_prefill_solo_uncapped`): nobody to starve."""
    cap = cfg.long_prefill_token_threshold
    if cap > 0 and cfg.long_prefill_solo_uncapped and num_requests <= 1:
        return 0
    return cap


def admission_terms(cfg: SchedulerConfig, kv: KVCacheManager, r: Request, remaining: int, prefill_cap: int):
    """How waiting request r would be admitted with `remaining` budget: (new tokens, budget
    charged, hit blocks), or None if the budget rules say no."""
    computed = kv.get_computed_blocks(r)
    cached = len(computed) * kv.block_size
    new = r.num_tokens - cached
    extra = 0 if cfg.cache_aware_budget else cached  # vLLM 0.6.3 charged the cached tokens
    # vLLM 0.6.3 asked for every block of the prompt to be free, cached or not.
    if computed and not cfg.cache_aware_admission and cdiv(r.num_tokens, kv.block_size) > kv.pool.num_free:
        return None
    # Without chunked prefill a prompt goes in whole; a resumed request longer than the budget
    # is the exception (it could never run again otherwise), as vLLM V1 chunks it regardless.
    whole = not cfg.chunked_prefill and r.num_tokens <= cfg.max_num_batched_tokens
    if whole:
        if new + extra > remaining:
            return None
    else:
        if prefill_cap > 0:
            new = min(new, prefill_cap)
        # Charged cached tokens may eat the whole budget; the request still computes at least
        # one token so that every admission makes progress.
        new = min(new, max(remaining - extra, 1))
        return new, min(new + extra, remaining), computed
    return new, new + extra, computed


def fits(cfg: SchedulerConfig, kv: KVCacheManager, r: Request, new: int, computed: list) -> bool:
    """Whether the pool can give waiting request r its blocks for `new` tokens now, and with
    `reserve_full_sequence` (vLLM's scheduler_reserve_full_isl) for its whole sequence too."""
    whole = _reserved_tokens(cfg, kv, r, new, computed)
    # The blocks a request needs only grow with its tokens: the whole sequence's cover the chunk's.
    return kv.can_allocate(r, new if whole is None else whole, computed) >= 0


def reservation_fits(cfg: SchedulerConfig, kv: KVCacheManager, r: Request, new: int, computed: list) -> bool:
    """`fits` less the pool check for `new` tokens, which `KVCacheManager.allocate_slots` makes
    itself: whether `reserve_full_sequence` lets r in."""
    whole = _reserved_tokens(cfg, kv, r, new, computed)
    return whole is None or kv.can_allocate(r, whole, computed) >= 0


def _reserved_tokens(cfg: SchedulerConfig, kv: KVCacheManager, r: Request, new: int, computed: list) -> int | None:
    """The tokens `reserve_full_sequence` asks blocks for, where they are more than `new`."""
    if cfg.reserve_full_sequence:
        whole = r.num_tokens - r.num_computed_tokens - len(computed) * kv.block_size
        if whole > new:
            return whole
    return None
