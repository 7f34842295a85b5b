"""A model preset from a Hugging Face `config.json` (`model.hf_config=PATH`).

The sizes the simulator needs are read from the file and replace the preset's: layers, hidden
size, attention heads, KV heads, head dim (`head_dim`, else hidden / heads), MLP width, vocabulary,
tied embeddings, the weights' dtype, and for mixture-of-experts models the experts per layer and
per token. Key spellings differ between model families; each field lists the ones it accepts.
Multimodal configs that nest the language model under `text_config` are read from there.

`PATH` is looked up relative to the current directory, then among the bundled configs in
`apcsim/hf_configs/` (so `model.hf_config=qwen3_30b_a3b.json` works from anywhere).
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from apcsim.errors import ConfigError
from apcsim.hardware import ModelConfig

# field of ModelConfig -> config.json keys, first present wins
_KEYS = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_heads": ("num_attention_heads", "n_head"),
    "vocab_size": ("vocab_size",),
}
# MoE models name the expert's width apart from a dense MLP's (Qwen-MoE, DeepSeek).
_EXPERT_WIDTH = ("moe_intermediate_size",)
_DENSE_WIDTH = ("intermediate_size", "ffn_dim", "n_inner")
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts")
_EXPERTS_PER_TOKEN = ("num_experts_per_tok", "experts_per_token", "num_experts_per_token", "moe_topk")
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1}
# Features that change the weights or the KV cache in ways this model cannot express.
_UNSUPPORTED = ("kv_lora_rank", "shared_expert_intermediate_size", "n_shared_experts")


def bundled_hf_configs_root() -> Path:
    return Path(str(resources.files("apcsim") / "hf_configs"))


def bundled_hf_configs() -> list[str]:
    return sorted(p.name for p in bundled_hf_configs_root().glob("*.json"))


def find_hf_config(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    bundled = bundled_hf_configs_root() / path
    if not p.is_absolute() and bundled.is_file():
        return bundled
    raise ConfigError(f"model.hf_config: no such file {path} (bundled: {', '.join(bundled_hf_configs())})")


def _first(cfg: dict, keys: tuple[str, ...], path: Path, what: str, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    if default is not None:
        return default
    raise ConfigError(f"model.hf_config {path}: no {what} (looked for {', '.join(keys)})")


def _positive_int(v, path: Path, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"model.hf_config {path}: {what} must be a positive integer, got {v!r}")
    return v


def read_hf_config(path: str, base: ModelConfig) -> ModelConfig:
    """`base` with every size taken from the config.json at `path` (its name is kept)."""
    p = find_hf_config(path)
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"model.hf_config {p}: not a JSON file ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"model.hf_config {p}: expected a JSON object")
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    for k in _UNSUPPORTED:
        if cfg.get(k):
            raise ConfigError(f"model.hf_config {p}: {k} is set; shared experts and latent attention are not modelled")
    sizes = {field: _positive_int(_first(cfg, keys, p, field), p, field) for field, keys in _KEYS.items()}
    sizes["num_kv_heads"] = _positive_int(_first(cfg, ("num_key_value_heads",), p, "num_kv_heads",
                                                 sizes["num_heads"]), p, "num_kv_heads")
    sizes["head_dim"] = _positive_int(_first(cfg, ("head_dim",), p, "head_dim",
                                             sizes["hidden_size"] // sizes["num_heads"]), p, "head_dim")
    experts = cfg.get(next((k for k in _EXPERTS if cfg.get(k) is not None), ""), 0) or 0
    if experts:
        sizes["num_experts"] = _positive_int(experts, p, "num_experts")
        sizes["experts_per_token"] = _positive_int(_first(cfg, _EXPERTS_PER_TOKEN, p, "experts per token"),
                                                   p, "experts_per_token")
        if sizes["experts_per_token"] > sizes["num_experts"]:
            raise ConfigError(f"model.hf_config {p}: more experts per token than experts")
        width = _first(cfg, _EXPERT_WIDTH + _DENSE_WIDTH, p, "expert MLP width")
    else:
        sizes["num_experts"] = sizes["experts_per_token"] = 0
        width = _first(cfg, _DENSE_WIDTH, p, "MLP width")
    sizes["intermediate_size"] = _positive_int(width, p, "intermediate_size")
    sizes["tie_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    if dtype is not None:
        if dtype not in _DTYPE_BYTES:
            raise ConfigError(f"model.hf_config {p}: unknown torch_dtype {dtype!r} (known: {', '.join(_DTYPE_BYTES)})")
        sizes["dtype_bytes"] = _DTYPE_BYTES[dtype]
    return dataclasses.replace(base, **sizes, hf_config=str(p))


def resolve_model(model: ModelConfig) -> ModelConfig:
    """The model with its config.json applied, if it names one."""
    return model if model.hf_config is None else read_hf_config(model.hf_config, model)
