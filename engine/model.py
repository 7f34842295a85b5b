"""A Llama-architecture decoder over a paged KV cache.

RMSNorm, rotary embeddings (optionally with Llama-3.1 frequency scaling), grouped-query attention
through `engine.kernels` (write the new K/V into their slots, then varlen paged attention over
cached prefix + new tokens), SwiGLU MLP. Built from apcsim's `ModelConfig`; parameter names are
Hugging Face's Llama names, so a safetensors checkpoint loads with `load_state_dict`.

Shapes: T = tokens in the step (packed, all sequences), B = sequences in the step, S = sampled
positions, H = query heads, KVH = kv heads, D = head dim, E = hidden size, V = vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from apcsim.hardware import ModelConfig


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    # Llama-3.1 scaling ("rope_type": "llama3"); factor None means plain RoPE.
    factor: float | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


LLAMA31_ROPE = RopeConfig(theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position=8192)


def rope_for(model: ModelConfig) -> RopeConfig:
    """ModelConfig has no rotary fields: Llama-3 presets get Llama-3.1's, anything else plain RoPE."""
    return LLAMA31_ROPE if model.name.startswith("llama3") else RopeConfig()


def rope_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """fp32 [D/2]: the rotary frequencies, Llama-3.1-scaled when rope.factor is set."""
    inv = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rope.factor is not None:
        low_wl = rope.original_max_position / rope.low_freq_factor
        high_wl = rope.original_max_position / rope.high_freq_factor
        wl = 2 * math.pi / inv
        scaled = torch.where(wl > low_wl, inv / rope.factor, inv)
        smooth = (rope.original_max_position / wl - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wl >= high_wl) & (wl <= low_wl)
        inv = torch.where(medium, smoothed, scaled)
    return inv.float()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], positions [T] int64 -> x rotated (rotate-half convention, as HF Llama)."""
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, D/2] fp32
    cos, sin = freqs.cos()[:, None, :], freqs.sin()[:, None, :]  # [T, 1, D/2]
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))  # [E]
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, E] -> [T, E]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@dataclass
class AttnMetadata:
    """What the kernels need for one step (all on the model's device)."""

    slot_mapping: torch.Tensor  # [T] int64, block_id * block_size + offset of each new token
    block_tables: torch.Tensor  # [B, max_blocks] int32
    query_start_loc: torch.Tensor  # [B+1] int32, cumulative new-token counts
    seq_lens: torch.Tensor  # [B] int32, tokens with KV after this step's write
    logits_indices: torch.Tensor  # [S] int64, rows of the T tokens whose logits are wanted
    max_query_len: int  # max new tokens of one sequence (1: a pure decode step)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, h, kvh, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = h, kvh, d
        self.scale = d ** -0.5
        self.q_proj = nn.Linear(e, h * d, bias=False)  # weight [H*D, E]
        self.k_proj = nn.Linear(e, kvh * d, bias=False)  # weight [KVH*D, E]
        self.v_proj = nn.Linear(e, kvh * d, bias=False)
        self.o_proj = nn.Linear(h * d, e, bias=False)  # weight [E, H*D]

    def qkv(self, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor):
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.num_heads, self.head_dim)  # [T, H, D]
        k = self.k_proj(x).view(t, self.num_kv_heads, self.head_dim)  # [T, KVH, D]
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)  # [T, KVH, D]
        return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v

    def forward(self, x, positions, inv_freq, k_cache, v_cache, meta: AttnMetadata, ops) -> torch.Tensor:
        # k_cache, v_cache: [num_blocks, block_size, KVH, D] of this layer
        q, k, v = self.qkv(x, positions, inv_freq)
        ops.write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        if meta.max_query_len == 1:  # every sequence decodes one token: the split-KV decode kernel
            o = ops.paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, self.scale)
        else:
            o = ops.paged_attention(q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
                                    self.scale, max_query_len=meta.max_query_len)
        return self.o_proj(o.reshape(x.shape[0], -1))  # [T, E]

    def dense(self, x, positions, inv_freq) -> torch.Tensor:
        """Reference: causal attention over the whole sequence x [S, E], no cache."""
        q, k, v = self.qkv(x, positions, inv_freq)
        rep = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # [S, H, D]
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           is_causal=True, scale=self.scale)  # [H, S, D]
        return self.o_proj(o.transpose(0, 1).reshape(x.shape[0], -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # [I, E]
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # [I, E]
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)  # [E, I]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, E] -> [T, E]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # [V, E]
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size)


class LlamaForCausalLM(nn.Module):
    """forward(input_ids [T], positions [T], meta, k_caches, v_caches) -> logits fp32 [S, V].

    k_caches, v_caches: [num_layers, num_blocks, block_size, KVH, D] (one tensor each; layer l's
    cache is the contiguous view [l]).
    """

    def __init__(self, cfg: ModelConfig, rope: RopeConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.rope = rope if rope is not None else rope_for(cfg)
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)  # [V, E]
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, self.rope), persistent=False)  # [D/2]

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (after materialising a model built on the meta device)."""
        self.inv_freq = rope_inv_freq(self.cfg.head_dim, self.rope).to(self.lm_head.weight.device)

    def forward(self, input_ids, positions, meta: AttnMetadata, k_caches, v_caches, ops) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)  # [T, E]
        for i, layer in enumerate(self.model.layers):
            x = x + layer.self_attn(layer.input_layernorm(x), positions, self.inv_freq,
                                    k_caches[i], v_caches[i], meta, ops)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.model.norm(x[meta.logits_indices])  # [S, E]
        return self.lm_head(x).float()  # [S, V]

    @torch.no_grad()
    def dense_forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reference forward of one whole sequence without any cache: ids [S] -> logits fp32 [S, V]."""
        positions = torch.arange(input_ids.shape[0], device=input_ids.device)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = x + layer.self_attn.dense(layer.input_layernorm(x), positions, self.inv_freq)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.model.norm(x)).float()
