"""Pure-PyTorch references for the paged-KV kernels.

These are the ground truth the Triton kernels are tested against, and the backend the engine
uses on a CPU without Triton. They favour clarity over speed: one Python loop over sequences,
attention computed in fp32 on K/V gathered through the block table.

Layouts (shared with the Triton kernels, see ``engine/kernels/__init__.py``):

- ``k_cache``/``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
- slot of a token = ``block_id * block_size + offset``; negative slots mean "padding, skip".
- ``block_tables``: ``[B, max_blocks_per_seq]`` int32; only the first
  ``cdiv(seq_lens[b], block_size)`` entries of row ``b`` are ever read.
"""

from __future__ import annotations

import torch

from apcsim.mathutil import cdiv


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``k``/``v`` ``[T, num_kv_heads, head_dim]`` into their slots of the caches, in place.

    Tokens whose slot is negative are skipped (padding, e.g. in a CUDA-graph-padded batch).
    """
    block_size = k_cache.shape[1]
    slots = slot_mapping.to(torch.long)
    keep = slots >= 0
    if not bool(keep.all()):
        slots, k, v = slots[keep], k[keep], v[keep]
    blocks = slots // block_size  # [T']
    offsets = slots % block_size  # [T']
    # Advanced indexing on the first two dims writes through to the (possibly strided) cache.
    k_cache[blocks, offsets] = k.to(k_cache.dtype)
    v_cache[blocks, offsets] = v.to(v_cache.dtype)


def gather_kv(
    cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int
) -> torch.Tensor:
    """Contiguous ``[seq_len, num_kv_heads, head_dim]`` view of one sequence's cached K or V."""
    block_size = cache.shape[1]
    n_blocks = cdiv(seq_len, block_size)
    blocks = block_table_row[:n_blocks].to(torch.long)  # only the blocks the sequence owns
    return cache[blocks].reshape(n_blocks * block_size, *cache.shape[2:])[:seq_len]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    **_unused,
) -> torch.Tensor:
    """Causal attention of a packed varlen batch (prefill chunks and decodes mixed) over the cache.

    q: ``[T, num_heads, head_dim]``; sequence ``b`` owns rows
    ``query_start_loc[b]:query_start_loc[b+1]`` (``n_b`` tokens) at positions
    ``seq_lens[b]-n_b .. seq_lens[b]-1``; each attends to cached positions ``<=`` its own.
    Returns ``[T, num_heads, head_dim]`` in q's dtype (computed in fp32).
    """
    num_heads = q.shape[1]
    num_kv_heads = k_cache.shape[2]
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    group = num_heads // num_kv_heads
    out = torch.zeros_like(q)
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for b in range(len(lens)):
        start, end, seq_len = qsl[b], qsl[b + 1], lens[b]
        n = end - start
        if n <= 0 or seq_len <= 0:
            continue
        k = gather_kv(k_cache, block_tables[b], seq_len).float()  # [L, Hkv, D]
        v = gather_kv(v_cache, block_tables[b], seq_len).float()  # [L, Hkv, D]
        # GQA: query head h reads kv head h // group.
        k = k.repeat_interleave(group, dim=1)  # [L, H, D]
        v = v.repeat_interleave(group, dim=1)  # [L, H, D]
        qb = q[start:end].float()  # [n, H, D]
        scores = torch.einsum("nhd,lhd->hnl", qb, k) * scale  # [H, n, L]
        q_pos = torch.arange(seq_len - n, seq_len, device=q.device)  # [n]
        k_pos = torch.arange(seq_len, device=q.device)  # [L]
        allowed = k_pos[None, :] <= q_pos[:, None]  # [n, L]
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hnl,lhd->nhd", probs, v).to(q.dtype)
    return out


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    **_unused,
) -> torch.Tensor:
    """Decode attention: q ``[B, num_heads, head_dim]``, one token per sequence at position
    ``seq_lens[b]-1``. ``num_splits`` is accepted for API parity and ignored."""
    B = q.shape[0]
    query_start_loc = torch.arange(B + 1, dtype=torch.int32, device=q.device)
    return paged_attention(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale)
