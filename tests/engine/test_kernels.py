"""Paged-KV kernels: Triton kernels against the pure-PyTorch references, references against a
naive dense causal attention. On a machine without CUDA the Triton kernels run in Triton's
interpreter (TRITON_INTERPRET=1, set below before Triton is first imported), so shapes are tiny.
"""

import math
import os

import pytest

torch = pytest.importorskip("torch")

# Module-level: the interpreter flag must be set before Triton (and our jitted kernels, which
# engine.kernels imports lazily) is first imported. conftest.py only handles the `gpu` marker.
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from engine import kernels  # noqa: E402
from engine.kernels import reference  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
REF = kernels.get_ops("torch")
TRI = kernels.get_ops("triton")

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=2e-3, rtol=2e-3)}
# (num_heads, num_kv_heads, head_dim): GQA group 2, MHA, and a non-power-of-two group.
HEADS = [(4, 2, 16), (2, 2, 32), (6, 2, 16)]


# ----------------------------------------------------------------------------------- helpers
def make_batch(seqs, block_size, num_kv_heads, head_dim, num_heads, dtype, seed=0,
               spare_blocks=3):
    """A paged batch. ``seqs`` is a list of (cached_len, new_len) per sequence.

    Returns a dict with the caches (filled for every position through the *reference* write),
    the dense per-sequence K/V, q for the new tokens, random non-contiguous block tables padded
    with -1, query_start_loc, seq_lens and slot_mapping of the new tokens.
    """
    g = torch.Generator().manual_seed(seed)
    lens = [c + n for c, n in seqs]
    blocks_per = [math.ceil(L / block_size) for L in lens]
    num_blocks = sum(blocks_per) + spare_blocks
    perm = torch.randperm(num_blocks, generator=g)  # random, non-contiguous block ids
    max_blocks = max(blocks_per) + 2
    block_tables = torch.full((len(seqs), max_blocks), -1, dtype=torch.int32)
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    dense_k, dense_v, slots_all, new_slots, qs = [], [], [], [], []
    used = 0
    for b, ((cached, new), L) in enumerate(zip(seqs, lens)):
        ids = perm[used:used + blocks_per[b]]
        used += blocks_per[b]
        block_tables[b, :len(ids)] = ids.to(torch.int32)
        pos = torch.arange(L)
        slots = ids[pos // block_size] * block_size + pos % block_size  # [L]
        k = torch.randn(L, num_kv_heads, head_dim, generator=g).to(dtype)
        v = torch.randn(L, num_kv_heads, head_dim, generator=g).to(dtype)
        reference.write_kv(k_cache, v_cache, k, v, slots)
        dense_k.append(k)
        dense_v.append(v)
        slots_all.append(slots)
        new_slots.append(slots[cached:])
        qs.append(torch.randn(new, num_heads, head_dim, generator=g).to(dtype))
    qsl = torch.tensor([0] + list(torch.tensor([n for _, n in seqs]).cumsum(0)), dtype=torch.int32)
    return dict(
        k_cache=k_cache.to(DEVICE), v_cache=v_cache.to(DEVICE),
        block_tables=block_tables.to(DEVICE), query_start_loc=qsl.to(DEVICE),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=DEVICE),
        q=torch.cat(qs).to(DEVICE), dense_k=dense_k, dense_v=dense_v,
        slot_mapping=torch.cat(new_slots).to(DEVICE), seqs=seqs,
    )


def dense_causal(q, dense_k, dense_v, seqs, scale):
    """Naive attention on contiguous K/V: explicit repeat for GQA, explicit position mask."""
    outs, start = [], 0
    num_heads = q.shape[1]
    for (cached, new), k, v in zip(seqs, dense_k, dense_v):
        group = num_heads // k.shape[1]
        qb = q[start:start + new].double().cpu()  # [n, H, D]
        start += new
        kk = k.double().repeat_interleave(group, 1)  # [L, H, D]
        vv = v.double().repeat_interleave(group, 1)
        out = torch.zeros_like(qb)
        for i in range(new):
            p = cached + i  # absolute position of the i-th new token
            s = (qb[i][:, None, :] * kk[: p + 1].transpose(0, 1)).sum(-1) * scale  # [H, p+1]
            w = torch.softmax(s, dim=-1)
            out[i] = (w[:, :, None] * vv[: p + 1].transpose(0, 1)).sum(1)
        outs.append(out)
    return torch.cat(outs)


def attn(ops, batch, scale, **kw):
    return ops.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"],
                               batch["block_tables"], batch["query_start_loc"],
                               batch["seq_lens"], scale, **kw)


# A mixed batch: a prefill from scratch, a chunk after a cached prefix (not block-aligned),
# decodes with short and long contexts, and a one-token "prefill" at position 0.
MIXED = [(0, 19), (21, 13), (40, 1), (3, 1), (0, 1), (64, 1)]


# ------------------------------------------------------------------ references vs dense math
@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("heads", HEADS)
def test_reference_matches_dense_causal(block_size, heads):
    H, Hkv, D = heads
    b = make_batch(MIXED, block_size, Hkv, D, H, torch.float32, seed=block_size)
    scale = D ** -0.5
    want = dense_causal(b["q"], b["dense_k"], b["dense_v"], MIXED, scale)
    got = attn(REF, b, scale).double().cpu()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_decode_matches_dense():
    seqs = [(16, 1), (0, 1), (40, 1)]
    b = make_batch(seqs, 16, 2, 16, 4, torch.float32)
    want = dense_causal(b["q"], b["dense_k"], b["dense_v"], seqs, 0.25)
    got = REF.paged_decode_attention(b["q"], b["k_cache"], b["v_cache"], b["block_tables"],
                                     b["seq_lens"], 0.25)
    torch.testing.assert_close(got.double().cpu(), want, atol=1e-5, rtol=1e-5)


def test_reference_write_kv_roundtrip():
    b = make_batch([(5, 7), (0, 17)], 4, 2, 8, 2, torch.float32)
    for i, (c, n) in enumerate(b["seqs"]):
        got = reference.gather_kv(b["k_cache"].cpu(), b["block_tables"][i].cpu(), c + n)
        torch.testing.assert_close(got, b["dense_k"][i])


def test_backend_selection():
    assert kernels.get_ops("torch").paged_attention is reference.paged_attention
    assert kernels.get_ops("triton").name == "triton"
    with pytest.raises(ValueError):
        kernels.get_ops("cuda")
    assert kernels.get_ops("triton").paged_attention is TRI.paged_attention  # same functions each call


# ---------------------------------------------------------------------- Triton vs references
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [1, 16, 64])
def test_write_kv_matches_reference(dtype, block_size):
    Hkv, D, T = 2, 16, 11
    num_blocks = math.ceil(40 / block_size) + 2
    g = torch.Generator().manual_seed(1)
    k_cache = torch.randn(num_blocks, block_size, Hkv, D, generator=g).to(dtype).to(DEVICE)
    v_cache = torch.randn_like(k_cache)
    # k, v as non-contiguous slices of a fused projection, as the model produces them.
    qkv = torch.randn(T, 3, Hkv, D, generator=g).to(dtype).to(DEVICE)
    k, v = qkv[:, 1], qkv[:, 2]
    slots = torch.randperm(num_blocks * block_size, generator=g)[:T].to(DEVICE)
    slots[3] = -1  # a padding token: skipped
    want_k, want_v = k_cache.clone(), v_cache.clone()
    REF.write_kv(want_k, want_v, k, v, slots)
    TRI.write_kv(k_cache, v_cache, k, v, slots)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("heads", HEADS[:2])
def test_paged_attention_mixed_batch(dtype, block_size, heads):
    H, Hkv, D = heads
    b = make_batch(MIXED, block_size, Hkv, D, H, dtype, seed=7 + block_size)
    scale = D ** -0.5
    want = attn(REF, b, scale)
    got = attn(TRI, b, scale)
    assert got.dtype == dtype and got.shape == b["q"].shape
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("seqs", [[(0, 37)], [(48, 16)], [(5, 1), (70, 30)]],
                         ids=["prefill", "aligned-prefix", "decode+chunk"])
def test_paged_attention_prefill_shapes(seqs):
    """Multiple query blocks per sequence (causal tiles inside and across), GQA group 3."""
    b = make_batch(seqs, 16, 2, 16, 6, torch.float32, seed=3)
    want = attn(REF, b, 0.25)
    got = attn(TRI, b, 0.25, max_query_len=max(n for _, n in seqs))
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_paged_decode_matches_reference(dtype, block_size, num_splits):
    seqs = [(0, 1), (20, 1), (70, 1), (129, 1)]  # positions 0, 20, 70, 129
    b = make_batch(seqs, block_size, 2, 32, 4, dtype, seed=block_size)
    args = (b["q"], b["k_cache"], b["v_cache"], b["block_tables"], b["seq_lens"], 0.2)
    want = REF.paged_decode_attention(*args)
    got = TRI.paged_decode_attention(*args, num_splits=num_splits)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_triton_pipeline_chunked_prefill_then_decode():
    """write_kv + attention step by step (chunked prefill, then decodes) equals dense math."""
    H, Hkv, D, bs = 4, 2, 16, 16
    total = 45
    g = torch.Generator().manual_seed(5)
    k_all = torch.randn(total, Hkv, D, generator=g)
    v_all = torch.randn(total, Hkv, D, generator=g)
    q_all = torch.randn(total, H, D, generator=g)
    num_blocks = 8
    k_cache = torch.zeros(num_blocks, bs, Hkv, D, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    ids = torch.tensor([6, 1, 4], dtype=torch.int32)
    block_tables = torch.tensor([[6, 1, 4, 0]], dtype=torch.int32, device=DEVICE)
    want = dense_causal(q_all, [k_all], [v_all], [(0, total)], D ** -0.5)
    done, outs = 0, []
    for n in [20, 17, 1, 1, 1, 1, 1, 1, 1, 1]:  # two prefill chunks, then decodes
        pos = torch.arange(done, done + n)
        slots = (ids[pos // bs].long() * bs + pos % bs).to(DEVICE)
        TRI.write_kv(k_cache, v_cache, k_all[pos].to(DEVICE), v_all[pos].to(DEVICE), slots)
        seq_lens = torch.tensor([done + n], dtype=torch.int32, device=DEVICE)
        q = q_all[pos].to(DEVICE)
        if n == 1:
            out = TRI.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens,
                                             D ** -0.5, num_splits=2)
        else:
            qsl = torch.tensor([0, n], dtype=torch.int32, device=DEVICE)
            out = TRI.paged_attention(q, k_cache, v_cache, block_tables, qsl, seq_lens, D ** -0.5)
        outs.append(out)
        done += n
    torch.testing.assert_close(torch.cat(outs).double().cpu(), want, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [16, 64])
def test_gpu_bf16_llama_shapes(block_size):
    seqs = [(0, 300), (1000, 200), (2047, 1), (513, 1)]
    b = make_batch(seqs, block_size, 8, 128, 32, torch.bfloat16, seed=11)
    scale = 128 ** -0.5
    tol = dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(attn(TRI, b, scale), attn(REF, b, scale), **tol)
    dec = make_batch([(c, 1) for c in (1, 100, 4095, 2000)], block_size, 8, 128, 32,
                     torch.bfloat16, seed=12)
    args = (dec["q"], dec["k_cache"], dec["v_cache"], dec["block_tables"], dec["seq_lens"], scale)
    torch.testing.assert_close(TRI.paged_decode_attention(*args),
                               REF.paged_decode_attention(*args), **tol)


def test_triton_kernels_respect_garbage_table_entries():
    """Entries past a sequence's blocks are -1 (out of range): never read, so no crash/NaN."""
    b = make_batch([(0, 5), (2, 1)], 4, 1, 16, 2, torch.float32, spare_blocks=0)
    out = attn(TRI, b, 0.25)
    assert torch.isfinite(out).all()


def test_padding_rows_and_empty_sequences():
    """CUDA-graph style padding: a sequence with no new tokens in a varlen batch, and decode
    rows with seq_len 0 and a garbage block table row (output 0, nothing read)."""
    seqs = [(4, 3), (9, 0), (0, 2)]
    b = make_batch(seqs, 4, 2, 16, 4, torch.float32)
    torch.testing.assert_close(attn(TRI, b, 0.25), attn(REF, b, 0.25), **TOL[torch.float32])
    dec = make_batch([(6, 1), (30, 1)], 4, 2, 16, 4, torch.float32)
    q = torch.cat([dec["q"], torch.randn(2, 4, 16, device=DEVICE)])  # 2 padding rows
    bt = torch.cat([dec["block_tables"], torch.full_like(dec["block_tables"][:2], -1)])
    seq_lens = torch.cat([dec["seq_lens"], torch.zeros(2, dtype=torch.int32, device=DEVICE)])
    args = (q, dec["k_cache"], dec["v_cache"], bt, seq_lens, 0.25)
    got = TRI.paged_decode_attention(*args, num_splits=2)
    torch.testing.assert_close(got, REF.paged_decode_attention(*args), **TOL[torch.float32])
    assert torch.count_nonzero(got[2:]) == 0


def test_noncontiguous_inputs():
    """q as a slice of a fused projection and caches as views into one stacked allocation."""
    seqs = [(7, 5), (12, 1)]
    b = make_batch(seqs, 4, 2, 16, 4, torch.float32)
    fused = torch.randn(b["q"].shape[0], 4 + 2 * 2, 16, device=DEVICE)
    fused[:, :4] = b["q"]
    q = fused[:, :4]  # [T, H, D], non-contiguous
    stacked = torch.stack([b["k_cache"], b["v_cache"]])  # [2, NB, BS, Hkv, D]
    k_cache, v_cache = stacked[0], stacked[1]
    args = (q, k_cache, v_cache, b["block_tables"], b["query_start_loc"], b["seq_lens"], 0.25)
    torch.testing.assert_close(TRI.paged_attention(*args), REF.paged_attention(*args),
                               **TOL[torch.float32])
