"""Typed configs of the `hardware` and `model` groups, and what follows from them alone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HardwareConfig:
    """A GPU from its spec sheet. Used by the roofline cost model and to size the KV cache."""

    name: str = "a100"
    memory_gib: float = 80.0  # device memory (nvidia-smi's total)
    peak_tflops: float = 312.0  # dense bf16/fp16 tensor-core peak
    mem_bw_gbps: float = 2039.0  # HBM bandwidth, GB/s


@dataclass
class ModelConfig:
    """A Llama-architecture decoder (GQA attention, SwiGLU MLP)."""

    name: str = "llama3_8b"
    num_layers: int = 32
    hidden_size: int = 4096
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 14336
    vocab_size: int = 128256
    dtype_bytes: int = 2  # bf16
    tie_embeddings: bool = False

    @property
    def params_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        mlp = 3 * h * self.intermediate_size
        return attn + mlp + 2 * h  # two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        head = 0 if self.tie_embeddings else self.lm_head_params
        return self.num_layers * self.params_per_layer + self.embedding_params + head + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


def activation_bytes(model: ModelConfig, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Peak activation memory of one step, which vLLM profiles before sizing the KV cache: the
    widest intermediate tensors of a full-budget step (SwiGLU's gate and up projections plus the
    residual stream and attention input) and fp32 logits for every running request."""
    per_token = (2 * model.intermediate_size + 4 * model.hidden_size) * model.dtype_bytes
    return max_num_batched_tokens * per_token + max_num_seqs * model.vocab_size * 4


def kv_cache_blocks(hw: HardwareConfig, model: ModelConfig, block_size: int, gpu_memory_utilization: float,
                    max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Blocks the KV cache gets, as vLLM sizes it: the memory it may use, less weights and peak
    activations, divided by the bytes of one block."""
    budget = hw.memory_gib * 2**30 * gpu_memory_utilization
    free = budget - model.weight_bytes - activation_bytes(model, max_num_batched_tokens, max_num_seqs)
    return int(free // (block_size * model.kv_bytes_per_token))
