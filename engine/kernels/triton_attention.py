"""Triton paged attention: a varlen prefill/mixed-batch kernel and a split-KV decode kernel.

Both read K/V straight from the paged cache ``[num_blocks, BLOCK_SIZE, Hkv, D]`` through the
block table, one key token at a time (``block_table[b, n // BLOCK_SIZE]`` gives the physical
block of key ``n``): this serves any block size (1, 16, 64...) with the same code, and with
block 16 each gathered page is a contiguous 16 x D run of memory, which is enough for coalesced
loads. Softmax is computed online (flash-attention style) in the log2 domain in fp32.

GQA: every program handles *all* the query heads of one kv head, so a K/V tile loaded once
serves the whole group. The query heads of the group are folded into the rows of the ``tl.dot``
(rows = tokens x heads), padded to a power of two and to at least 16 (``tl.dot``'s minimum).

Tuning knobs live in ``PREFILL_CONFIG``/``DECODE_CONFIG`` so the benchmark can sweep them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Tile sizes / launch parameters. ROWS = query rows per program (tokens x padded group).
PREFILL_CONFIG = {"rows": 128, "block_n": 64, "num_warps": 8, "num_stages": 2}
DECODE_CONFIG = {"block_n": 64, "num_warps": 4, "num_stages": 2, "programs_per_sm": 8}


@triton.jit
def _dot(a, b, IEEE_DOT: tl.constexpr):
    """a @ b with fp32 accumulation; exact fp32 products when IEEE_DOT (fp32 caches: TF32 would
    miss the reference's tolerance)."""
    if IEEE_DOT:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _paged_prefill_kernel(
    q_ptr,  # [T, H, D]
    k_cache_ptr, v_cache_ptr,  # [NB, BLOCK_SIZE, Hkv, D]
    o_ptr,  # [T, H, D]
    block_tables_ptr,  # [B, max_blocks] int32
    qsl_ptr,  # [B+1] int32
    seq_lens_ptr,  # [B] int32
    scale_log2e,
    stride_qt, stride_qh, stride_qd,
    stride_ot, stride_oh, stride_od,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_btb, stride_btn,
    group,  # query heads per kv head
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, GROUP_P: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    mb = tl.program_id(0)  # query block within the sequence's new tokens
    b = tl.program_id(1)  # sequence
    kvh = tl.program_id(2)  # kv head (the program covers its whole query-head group)
    q_start = tl.load(qsl_ptr + b)
    n_q = tl.load(qsl_ptr + b + 1) - q_start
    # The grid is sized for the longest sequence; shorter ones leave programs idle.
    if mb * BLOCK_M >= n_q:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    ctx = seq_len - n_q  # keys before the first new token (cached prefix + earlier chunks)

    ROWS: tl.constexpr = BLOCK_M * GROUP_P
    r = tl.arange(0, ROWS)
    tok = mb * BLOCK_M + r // GROUP_P  # [ROWS] new-token index within the sequence
    hq = kvh * group + r % GROUP_P  # [ROWS] query head
    row_mask = (tok < n_q) & (r % GROUP_P < group)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q_row = (q_start + tok).to(tl.int64) * stride_qt + hq * stride_qh  # [ROWS]
    q = tl.load(
        q_ptr + q_row[:, None] + d[None, :] * stride_qd,
        mask=row_mask[:, None] & d_mask[None, :], other=0.0,
    ).to(k_cache_ptr.dtype.element_ty)  # [ROWS, BLOCK_D]
    q_pos = ctx + tok  # [ROWS] absolute position of each row's token

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)

    bt_row = block_tables_ptr + b.to(tl.int64) * stride_btb
    first_q = ctx + mb * BLOCK_M  # smallest query position in this program
    kv_end = tl.minimum(first_q + BLOCK_M, seq_len)  # keys beyond are masked for every row
    # Keys below first_q are visible to every row: tiles entirely below it need no mask at all.
    n_free = (first_q // BLOCK_N) * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)

    for start in range(0, n_free, BLOCK_N):
        n = start + offs_n  # [BLOCK_N] key positions, all < seq_len
        phys = tl.load(bt_row + (n // BLOCK_SIZE) * stride_btn).to(tl.int64)
        k_off = phys * stride_kb + (n % BLOCK_SIZE) * stride_ks + kvh * stride_kh  # [BLOCK_N]
        v_off = phys * stride_vb + (n % BLOCK_SIZE) * stride_vs + kvh * stride_vh
        k = tl.load(k_cache_ptr + k_off[None, :] + d[:, None] * stride_kd,
                    mask=d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
        v = tl.load(v_cache_ptr + v_off[:, None] + d[None, :] * stride_vd,
                    mask=d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        s = _dot(q, k, IEEE_DOT)
        s = s * scale_log2e  # [ROWS, BLOCK_N], log2 domain
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE_DOT)
        m_i = m_new

    # Diagonal tiles: causal mask (key <= the row's position) and the sequence end.
    for start in range(n_free, kv_end, BLOCK_N):
        n = start + offs_n
        n_mask = n < kv_end
        phys = tl.load(bt_row + (n // BLOCK_SIZE) * stride_btn, mask=n_mask, other=0).to(tl.int64)
        k_off = phys * stride_kb + (n % BLOCK_SIZE) * stride_ks + kvh * stride_kh
        v_off = phys * stride_vb + (n % BLOCK_SIZE) * stride_vs + kvh * stride_vh
        k = tl.load(k_cache_ptr + k_off[None, :] + d[:, None] * stride_kd,
                    mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        v = tl.load(v_cache_ptr + v_off[:, None] + d[None, :] * stride_vd,
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        s = _dot(q, k, IEEE_DOT)
        s = s * scale_log2e
        visible = (n[None, :] <= q_pos[:, None]) & n_mask[None, :]
        s = tl.where(visible, s, float("-inf"))
        # Every valid row sees key first_q <= its position in this range (or had keys before),
        # so m_new is finite for valid rows; padded rows are never stored.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE_DOT)
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_row = (q_start + tok).to(tl.int64) * stride_ot + hq * stride_oh
    tl.store(o_ptr + o_row[:, None] + d[None, :] * stride_od,
             out.to(o_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


def _check_shapes(q, k_cache, v_cache):
    assert k_cache.shape == v_cache.shape and k_cache.dtype == v_cache.dtype
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    assert k_cache.shape[3] == head_dim
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    return num_heads, num_kv_heads, head_dim, num_heads // num_kv_heads


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Causal varlen attention over the paged cache (prefill chunks and decodes mixed).

    q ``[T, H, D]``; query_start_loc ``[B+1]`` int32; seq_lens ``[B]`` int32 (KV length after
    this step's write); block_tables ``[B, max_blocks]`` int32. Returns ``[T, H, D]``.
    ``max_query_len`` (the largest ``n_b``) sizes the grid; if None it is read from the device.
    """
    num_heads, num_kv_heads, head_dim, group = _check_shapes(q, k_cache, v_cache)
    T = q.shape[0]
    B = seq_lens.shape[0]
    out = torch.empty_like(q)  # [T, H, D]
    if T == 0 or B == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item())
    if max_query_len <= 0:
        return out
    cfg = PREFILL_CONFIG
    group_p = triton.next_power_of_2(group)
    # Query tokens per program: fill ~cfg["rows"] rows, but never fewer than 16 rows (tl.dot),
    # and not much more than the longest query (a pure-decode batch gets small programs).
    block_m = max(1, cfg["rows"] // group_p)
    block_m = min(block_m, max(triton.next_power_of_2(max_query_len), triton.cdiv(16, group_p)))
    block_m = max(block_m, triton.cdiv(16, group_p))
    grid = (triton.cdiv(max_query_len, block_m), B, num_kv_heads)
    _paged_prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, query_start_loc, seq_lens,
        float(scale) * LOG2E,
        *q.stride(), *out.stride(), *k_cache.stride(), *v_cache.stride(), *block_tables.stride(),
        group,
        BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim,
        BLOCK_M=block_m, GROUP_P=group_p,
        BLOCK_N=cfg["block_n"], BLOCK_D=triton.next_power_of_2(head_dim),
        IEEE_DOT=k_cache.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


@triton.jit
def _paged_decode_split_kernel(
    q_ptr,  # [B, H, D]
    k_cache_ptr, v_cache_ptr,  # [NB, BLOCK_SIZE, Hkv, D]
    block_tables_ptr,  # [B, max_blocks] int32
    seq_lens_ptr,  # [B] int32
    mid_o_ptr,  # [B, H, NUM_SPLITS, BLOCK_D] fp32: each split's normalised partial output
    mid_lse_ptr,  # [B, H, NUM_SPLITS] fp32: each split's log2-sum-exp2 (-inf if empty)
    scale_log2e,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_btb, stride_btn,
    num_heads, group,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, IEEE_DOT: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    # Each split takes a contiguous, BLOCK_N-aligned range of keys; trailing splits may be empty.
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    h = tl.arange(0, BLOCK_H)
    hq = kvh * group + h  # [BLOCK_H] query heads of this kv head (padded rows masked)
    h_mask = h < group
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + hq[:, None] * stride_qh + d[None, :] * stride_qd,
                mask=h_mask[:, None] & d_mask[None, :], other=0.0).to(k_cache_ptr.dtype.element_ty)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    bt_row = block_tables_ptr + b.to(tl.int64) * stride_btb
    offs_n = tl.arange(0, BLOCK_N)
    for s0 in range(start, end, BLOCK_N):
        n = s0 + offs_n
        n_mask = n < end
        phys = tl.load(bt_row + (n // BLOCK_SIZE) * stride_btn, mask=n_mask, other=0).to(tl.int64)
        k_off = phys * stride_kb + (n % BLOCK_SIZE) * stride_ks + kvh * stride_kh
        v_off = phys * stride_vb + (n % BLOCK_SIZE) * stride_vs + kvh * stride_vh
        k = tl.load(k_cache_ptr + k_off[None, :] + d[:, None] * stride_kd,
                    mask=n_mask[None, :] & d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
        v = tl.load(v_cache_ptr + v_off[:, None] + d[None, :] * stride_vd,
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        s = _dot(q, k, IEEE_DOT)
        s = tl.where(n_mask[None, :], s * scale_log2e, float("-inf"))  # [BLOCK_H, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has >= 1 valid key
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE_DOT)
        m_i = m_new

    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    row = (b.to(tl.int64) * num_heads + hq) * NUM_SPLITS + split  # [BLOCK_H]
    tl.store(mid_o_ptr + row[:, None] * BLOCK_D + d[None, :], out, mask=h_mask[:, None])
    tl.store(mid_lse_ptr + row, lse, mask=h_mask)


@triton.jit
def _decode_reduce_kernel(
    mid_o_ptr,  # [B, H, NUM_SPLITS, BLOCK_D] fp32
    mid_lse_ptr,  # [B, H, NUM_SPLITS] fp32
    o_ptr,  # [B, H, D]
    stride_ob, stride_oh, stride_od,
    num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    hq = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < NUM_SPLITS
    base = b.to(tl.int64) * num_heads + hq
    lse = tl.load(mid_lse_ptr + base * NUM_SPLITS + s, mask=s_mask, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # seq_len == 0: all weights 0, output 0
    w = tl.exp2(lse - m)  # [BLOCK_S] relative weight of each split (0 for empty ones)
    parts = tl.load(mid_o_ptr + (base * NUM_SPLITS + s)[:, None] * BLOCK_D + d[None, :],
                    mask=s_mask[:, None], other=0.0)  # [BLOCK_S, BLOCK_D]
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(o_ptr + b.to(tl.int64) * stride_ob + hq * stride_oh + d * stride_od,
             out.to(o_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def default_num_splits(batch: int, num_kv_heads: int, device: torch.device) -> int:
    """Split count from the batch shape only (no host sync): enough programs to fill the GPU."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 4  # interpreter: keep tiny
    return num_splits_for(batch, num_kv_heads, sms)


def num_splits_for(batch: int, num_kv_heads: int, sms: int) -> int:
    """The split count on a GPU with `sms` SMs: about `programs_per_sm` programs per SM, 1 to 32."""
    want = DECODE_CONFIG["programs_per_sm"] * sms
    return max(1, min(32, math.ceil(want / max(1, batch * num_kv_heads))))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Split-KV decode attention. q ``[B, H, D]`` (token at position ``seq_lens[b]-1``).

    Kernel 1 computes ``num_splits`` partial softmax-normalised outputs plus their log-sum-exp
    per (sequence, head); kernel 2 merges them. No host sync: CUDA-graph capturable.
    """
    num_heads, num_kv_heads, head_dim, group = _check_shapes(q, k_cache, v_cache)
    B = q.shape[0]
    out = torch.empty_like(q)  # [B, H, D]
    if B == 0:
        return out
    if num_splits is None:
        num_splits = default_num_splits(B, num_kv_heads, q.device)
    cfg = DECODE_CONFIG
    block_d = triton.next_power_of_2(head_dim)
    # Partial results in fp32; ~B*H*S*D*4 bytes, tiny next to the KV read.
    mid_o = torch.empty((B, num_heads, num_splits, block_d), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((B, num_heads, num_splits), dtype=torch.float32, device=q.device)
    _paged_decode_split_kernel[(B, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, mid_o, mid_lse,
        float(scale) * LOG2E,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *block_tables.stride(),
        num_heads, group,
        BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim,
        BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=cfg["block_n"], BLOCK_D=block_d,
        NUM_SPLITS=num_splits, IEEE_DOT=k_cache.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    _decode_reduce_kernel[(B, num_heads)](
        mid_o, mid_lse, out, *out.stride(), num_heads,
        HEAD_DIM=head_dim, BLOCK_D=block_d,
        NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits),
        num_warps=4,
    )
    return out
