"""Timings of the model's own operations, called exactly as `engine.model` calls them.

Token-level ops are timed on layer 0 of the model (every layer has the same shapes); attention
on one layer's paged cache filled with random K/V; the LM head on the final norm, vocabulary
projection, greedy argmax and the copy of the tokens to the host, as `Executor.forward` does.
Each function returns profile rows (see `apcsim.calibration.profile`) without the `hardware`,
`model` and `source` columns, which the caller adds.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from apcsim.mathutil import cdiv
from engine.model import LlamaForCausalLM, apply_rope
from engine.profiling.grid import ProfileGrid
from engine.profiling.timer import OpTimer


def _row(op: str, model: LlamaForCausalLM, ms: float, *, tokens: int, batch: int = 0, context: int = 0) -> dict:
    c = model.cfg
    return {"op": op, "num_tokens": tokens, "batch_size": batch, "context_len": context, "num_heads": c.num_heads,
            "num_kv_heads": c.num_kv_heads, "head_dim": c.head_dim, "tp": 1, "time_ms_median": ms}


class PagedCache:
    """One layer's K and V caches ([num_blocks, block_size, KVH, D], random contents)."""

    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int, seed: int) -> None:
        p = model.lm_head.weight
        c = model.cfg
        gen = torch.Generator(device=p.device)
        gen.manual_seed(seed)
        shape = (num_blocks, block_size, c.num_kv_heads, c.head_dim)
        self.k = torch.randn(shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype)
        self.v = torch.randn(shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype)
        self.block_size = block_size
        self.num_blocks = num_blocks


def cache_blocks_needed(grid: ProfileGrid, block_size: int) -> int:
    """Blocks one layer's test cache needs for every attention point and token-op KV write."""
    prefill = max(cdiv(n + c, block_size) for n, c in grid.prefill_points())
    decode = max(b * cdiv(c + 1, block_size) for b, c in grid.decode_points())
    return max(prefill, decode, cdiv(max(grid.tokens), block_size))


def token_op_rows(model: LlamaForCausalLM, ops, cache: PagedCache, grid: ProfileGrid, timer: OpTimer,
                  seed: int) -> list[dict]:
    """Every token-level op of one layer (and the embedding, once per step) at each token count."""
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    p = model.lm_head.weight
    dev, dtype, cfg = p.device, p.dtype, model.cfg
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    rows = []
    for t in grid.tokens:
        x = torch.randn(t, cfg.hidden_size, generator=gen, device=dev, dtype=torch.float32).to(dtype)  # [T, E]
        pos = torch.arange(t, device=dev, dtype=torch.int64)
        ids = torch.randint(0, cfg.vocab_size, (t,), generator=gen, device=dev)
        slots = torch.arange(t, device=dev, dtype=torch.int64)  # the first t slots of the cache
        with torch.inference_mode():
            q = attn.q_proj(x).view(t, attn.num_heads, attn.head_dim)
            k = attn.k_proj(x).view(t, attn.num_kv_heads, attn.head_dim)
            v = attn.v_proj(x).view(t, attn.num_kv_heads, attn.head_dim)
            o = q.reshape(t, -1)  # [T, H*D], the attention output's shape
            g, u = mlp.gate_proj(x), mlp.up_proj(x)  # [T, I]
            a = F.silu(g) * u

        def pre_proj():
            attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)

        def rope():
            apply_rope(q, pos, model.inv_freq), apply_rope(k, pos, model.inv_freq)

        def up():
            mlp.gate_proj(x), mlp.up_proj(x)

        def adds():  # a layer has two residual adds (after attention and after the MLP)
            x + x, x + x

        measured: list[tuple[str, Callable[[], object]]] = [
            ("emb", lambda: model.model.embed_tokens(ids)),
            ("input_layernorm", lambda: layer.input_layernorm(x)),
            ("attn_pre_proj", pre_proj),
            ("attn_rope", rope),
            ("kv_cache_save", lambda: ops.write_kv(cache.k, cache.v, k, v, slots)),
            ("attn_post_proj", lambda: attn.o_proj(o)),
            ("post_attention_layernorm", lambda: layer.post_attention_layernorm(x)),
            ("mlp_up_proj", up),
            ("mlp_act", lambda: F.silu(g) * u),
            ("mlp_down_proj", lambda: mlp.down_proj(a)),
            ("add", adds),
        ]
        for op, fn in measured:
            rows.append(_row(op, model, timer.median_ms(fn), tokens=t))
    return rows


def lm_head_rows(model: LlamaForCausalLM, grid: ProfileGrid, timer: OpTimer, seed: int) -> list[dict]:
    """Final norm of the sampled rows, vocabulary projection, argmax and the copy to the host."""
    p = model.lm_head.weight
    gen = torch.Generator(device=p.device)
    gen.manual_seed(seed)
    rows = []
    for s in grid.samples:
        x = torch.randn(s, model.cfg.hidden_size, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype)
        idx = torch.arange(s, device=p.device, dtype=torch.int64)

        def head():
            logits = model.lm_head(model.model.norm(x[idx])).float()
            return logits.argmax(dim=-1).to(torch.int32).cpu()

        rows.append(_row("lm_head", model, timer.median_ms(head), tokens=s))
    return rows


def attention_rows(model: LlamaForCausalLM, ops, cache: PagedCache, grid: ProfileGrid, timer: OpTimer,
                   seed: int) -> list[dict]:
    """attn_prefill: one chunk of n new tokens after c cached ones through `paged_attention`;
    attn_decode: b requests of c cached tokens (plus the new one) through `paged_decode_attention`.
    Each request's blocks are distinct, as in a real batch."""
    cfg = model.cfg
    p = model.lm_head.weight
    dev, dtype = p.device, p.dtype
    bs = cache.block_size
    scale = cfg.head_dim ** -0.5
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    rows = []
    for n, c in grid.prefill_points():
        nb = cdiv(n + c, bs)
        q = torch.randn(n, cfg.num_heads, cfg.head_dim, generator=gen, device=dev, dtype=torch.float32).to(dtype)
        table = torch.arange(nb, device=dev, dtype=torch.int32)[None, :]  # [1, nb]
        qsl = torch.tensor([0, n], device=dev, dtype=torch.int32)
        seq = torch.tensor([n + c], device=dev, dtype=torch.int32)
        ms = timer.median_ms(lambda: ops.paged_attention(q, cache.k, cache.v, table, qsl, seq, scale, max_query_len=n))
        rows.append(_row("attn_prefill", model, ms, tokens=n, batch=1, context=c))
    for b, c in grid.decode_points():
        per = cdiv(c + 1, bs)
        q = torch.randn(b, cfg.num_heads, cfg.head_dim, generator=gen, device=dev, dtype=torch.float32).to(dtype)
        table = torch.arange(b * per, device=dev, dtype=torch.int32).view(b, per)
        seq = torch.full((b,), c + 1, device=dev, dtype=torch.int32)
        ms = timer.median_ms(lambda: ops.paged_decode_attention(q, cache.k, cache.v, table, seq, scale))
        rows.append(_row("attn_decode", model, ms, tokens=b, batch=b, context=c))
    return rows
