"""Model weights: random with a fixed seed (the default), or a local Hugging Face-style folder of
`*.safetensors` files with Llama parameter names.

Random weights draw from a private `torch.Generator` on the target device (the global RNG is never
touched): linear weights N(0, 1/fan_in), embeddings N(0, 1), norms 1. Logits of a random model
then have unit scale, so greedy argmax margins are far above float rounding noise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from apcsim.errors import ConfigError
from apcsim.hardware import ModelConfig
from engine.model import LlamaForCausalLM, RopeConfig

# Keys a checkpoint may carry that the model does not (recomputed buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on the GPU, fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _empty_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, rope: RopeConfig | None) -> LlamaForCausalLM:
    """The model's storage, uninitialised, allocated once in `dtype` on `device`. The dtype is set
    while the parameters are still on the meta device: allocating first and converting after
    would hold an fp32 copy too (32 GB for Llama-3-8B on the GPU, then 16 GB more for the bf16)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, rope).to(dtype)
    model = model.to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty keeps the tie, but make sure of it
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_buffers()
    return model


@torch.no_grad()
def random_model(cfg: ModelConfig, *, seed: int = 0, device="cpu", dtype: torch.dtype | None = None,
                 rope: RopeConfig | None = None) -> LlamaForCausalLM:
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    model = _empty_model(cfg, device, dtype, rope)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    seen: set[int] = set()
    for name, p in model.named_parameters():  # a fixed order: the module's definition order
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith("embed_tokens.weight"):
            p.normal_(0.0, 1.0, generator=gen)
        else:  # Linear [out, in]
            p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)
    return model.eval()


def _read_folder(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - the engine extra installs it
        raise ConfigError("loading weights needs the safetensors package (pip install 'apcsim[engine]')") from e
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"weights: no *.safetensors files in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f), device=str(device)))
    return state


@torch.no_grad()
def load_model(cfg: ModelConfig, path, *, device="cpu", dtype: torch.dtype | None = None,
               rope: RopeConfig | None = None) -> LlamaForCausalLM:
    """Load a Llama checkpoint (HF names) from a folder of safetensors files (or one file)."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"weights: {path} does not exist")
    state = {k: v for k, v in _read_folder(path, device).items() if not k.endswith(_IGNORED_SUFFIXES)}
    model = _empty_model(cfg, device, dtype, rope)
    expected = dict(model.named_parameters())  # tied lm_head appears once, under embed_tokens
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"weights {path} do not fit model {cfg.name}: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for name, p in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(p.shape):
            raise ConfigError(f"weights {path}: {name} has shape {tuple(t.shape)}, model {cfg.name} wants {tuple(p.shape)}")
        p.copy_(t.to(dtype))
    return model.eval()


def save_model(model: LlamaForCausalLM, path) -> None:
    """Write the model as one `model.safetensors` in folder `path` (HF names; used by tests)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"))


def build_model(cfg: ModelConfig, *, weights=None, seed: int = 0, device="cpu", dtype=None,
                rope: RopeConfig | None = None) -> LlamaForCausalLM:
    if weights:
        return load_model(cfg, weights, device=device, dtype=dtype, rope=rope)
    return random_model(cfg, seed=seed, device=device, dtype=dtype, rope=rope)
