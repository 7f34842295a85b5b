"""Typed configs of the `hardware` and `model` groups, and what follows from them alone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from apcsim.mathutil import cdiv


@dataclass
class HardwareConfig:
    """A GPU from its spec sheet. Used by the roofline cost model and to size the KV cache."""

    name: str = "a100"
    memory_gib: float = 80.0  # device memory (nvidia-smi's total)
    peak_tflops: float = 312.0  # dense bf16/fp16 tensor-core peak
    mem_bw_gbps: float = 2039.0  # HBM bandwidth, GB/s
    # GPU-to-GPU link, for tensor parallelism's all-reduces: bandwidth one way per GPU (GB/s; half
    # a datasheet's bidirectional NVLink figure) and a fixed cost per all-reduce (microseconds).
    interconnect_bw_gbps: float = 0.0
    interconnect_latency_us: float = 0.0
    # The GPU's link to host memory (the host KV tier's copies): bandwidth one way (GB/s; half a
    # datasheet's bidirectional PCIe figure) and a fixed cost per transfer (microseconds).
    host_link_bw_gbps: float = 0.0
    host_link_latency_us: float = 0.0


@dataclass
class ModelConfig:
    """A Llama-architecture decoder (GQA attention, SwiGLU MLP), optionally mixture-of-experts:
    `num_experts` SwiGLU experts of width `intermediate_size` per layer, `experts_per_token` of them
    run per token (0 experts: a dense MLP). `hf_config`: a Hugging Face config.json whose sizes
    replace these (see apcsim.hf_config)."""

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
    num_experts: int = 0
    experts_per_token: int = 0
    hf_config: Optional[str] = None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attn_params_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h

    @property
    def expert_params(self) -> int:
        """One SwiGLU MLP (gate, up, down): the dense MLP, or one expert."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def router_params_per_layer(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def params_per_layer(self) -> int:
        if not self.is_moe:
            return self.attn_params_per_layer + self.expert_params + 2 * self.hidden_size  # two RMSNorm weights
        return (self.attn_params_per_layer + self.num_experts * self.expert_params + self.router_params_per_layer
                + 2 * self.hidden_size)

    @property
    def active_params_per_layer(self) -> int:
        """Parameters one token is multiplied with: every expert it is routed to, not all of them."""
        if not self.is_moe:
            return self.params_per_layer
        return (self.attn_params_per_layer + self.experts_per_token * self.expert_params
                + self.router_params_per_layer + 2 * self.hidden_size)

    def experts_touched(self, tokens):
        """Expected distinct experts per layer that `tokens` tokens are routed to, each token to
        `experts_per_token` of `num_experts` uniformly at random: E * (1 - (1 - k/E)^T). Scalars or
        numpy arrays alike."""
        e, k = self.num_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** tokens)

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

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads each GPU holds at tensor parallelism `tp`: split, or replicated where there
        are fewer KV heads than GPUs (as vLLM does)."""
        return cdiv(self.num_kv_heads, tp)

    def kv_bytes_per_token_per_gpu(self, tp: int) -> int:
        if tp == 1:
            return self.kv_bytes_per_token
        return 2 * self.num_layers * self.kv_heads_per_gpu(tp) * self.head_dim * self.dtype_bytes


def per_gpu_model(model: ModelConfig, tp: int) -> ModelConfig:
    """The attention shape one GPU of a tensor-parallel group runs: its share of the query and KV
    heads (what a profile measured at that tp records per GPU). The model itself at tp 1."""
    if tp == 1:
        return model
    return dataclasses.replace(model, num_heads=model.num_heads // tp, num_kv_heads=model.kv_heads_per_gpu(tp))


def check_tp(hw: HardwareConfig, model: ModelConfig, tp: int) -> None:
    """A tensor-parallel degree the model splits evenly, on hardware with a link to split over."""
    from apcsim.errors import ConfigError

    if tp < 1:
        raise ConfigError(f"tp must be >= 1, got {tp}")
    if tp > 1 and model.num_heads % tp:
        raise ConfigError(f"tp={tp} does not divide model {model.name}'s {model.num_heads} attention heads")
    if tp > 1 and not hw.interconnect_bw_gbps > 0:
        raise ConfigError(f"tp={tp} needs hardware.interconnect_bw_gbps > 0 (hardware {hw.name} gives none)")
    if hw.interconnect_bw_gbps < 0 or hw.interconnect_latency_us < 0:
        raise ConfigError(f"hardware {hw.name}: interconnect_bw_gbps and interconnect_latency_us must be >= 0")


def activation_bytes(model: ModelConfig, max_num_batched_tokens: int, max_num_seqs: int, tp: int = 1) -> int:
    """Peak activation memory of one step, which vLLM profiles before sizing the KV cache: the
    widest intermediate tensors of a full-budget step (SwiGLU's gate and up projections plus the
    residual stream and attention input) and fp32 logits for every running request. At `tp` > 1
    the MLP's and the vocabulary's widths are split over the GPUs (the residual stream is not)."""
    if tp == 1:
        per_token = (2 * model.intermediate_size + 4 * model.hidden_size) * model.dtype_bytes
        return max_num_batched_tokens * per_token + max_num_seqs * model.vocab_size * 4
    per_token = (2 * cdiv(model.intermediate_size, tp) + 4 * model.hidden_size) * model.dtype_bytes
    return max_num_batched_tokens * per_token + max_num_seqs * cdiv(model.vocab_size, tp) * 4


def kv_cache_blocks(hw: HardwareConfig, model: ModelConfig, block_size: int, gpu_memory_utilization: float,
                    max_num_batched_tokens: int, max_num_seqs: int, tp: int = 1) -> int:
    """Blocks the KV cache of one replica gets, as vLLM sizes it: the memory each GPU may use,
    less its share of the weights and its peak activations, divided by its share of one block.
    Every GPU of a tensor-parallel group holds the same blocks, each a slice of the KV heads."""
    budget = hw.memory_gib * 2**30 * gpu_memory_utilization
    if tp == 1:
        free = budget - model.weight_bytes - activation_bytes(model, max_num_batched_tokens, max_num_seqs)
        return int(free // (block_size * model.kv_bytes_per_token))
    free = budget - model.weight_bytes / tp - activation_bytes(model, max_num_batched_tokens, max_num_seqs, tp)
    return int(free // (block_size * model.kv_bytes_per_token_per_gpu(tp)))
