"""Triton kernel writing new K/V into their paged-cache slots (``write_kv``).

One program per new token copies that token's ``[num_kv_heads, head_dim]`` K and V rows into
``cache[slot // block_size, slot % block_size]``. A token is only a few KB, so one program per
token keeps the kernel trivially parallel and needs no host-side sorting of slots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr,  # [T, Hkv, D]
    k_cache_ptr, v_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    slot_ptr,  # [T] int64
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    num_kv_heads, head_dim, block_size,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    # Negative slot = padding token (e.g. a CUDA-graph-padded batch): nothing to write.
    if slot < 0:
        return
    blk = slot // block_size
    off = slot % block_size
    h = tl.arange(0, BLOCK_H)[:, None]  # [BLOCK_H, 1]
    d = tl.arange(0, BLOCK_D)[None, :]  # [1, BLOCK_D]
    mask = (h < num_kv_heads) & (d < head_dim)
    t64 = t.to(tl.int64)  # 64-bit offsets: big caches exceed 2**31 elements
    k = tl.load(k_ptr + t64 * stride_kt + h * stride_kh + d * stride_kd, mask=mask)
    v = tl.load(v_ptr + t64 * stride_vt + h * stride_vh + d * stride_vd, mask=mask)
    tl.store(
        k_cache_ptr + blk * stride_kcb + off * stride_kcs + h * stride_kch + d * stride_kcd,
        k.to(k_cache_ptr.dtype.element_ty), mask=mask,
    )
    tl.store(
        v_cache_ptr + blk * stride_vcb + off * stride_vcs + h * stride_vch + d * stride_vcd,
        v.to(v_cache_ptr.dtype.element_ty), mask=mask,
    )


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write k, v ``[T, Hkv, D]`` into ``k_cache``/``v_cache`` ``[NB, BS, Hkv, D]`` at
    ``slot_mapping`` ``[T]`` (negative = skip). In place; no host sync."""
    T, Hkv, D = k.shape
    assert v.shape == k.shape and slot_mapping.shape[0] == T
    assert k_cache.shape[2] == Hkv and k_cache.shape[3] == D and v_cache.shape == k_cache.shape
    if T == 0:
        return
    _write_kv_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping,
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        Hkv, D, k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(Hkv), BLOCK_D=triton.next_power_of_2(D),
        num_warps=4 if Hkv * D >= 1024 else 1,
    )
