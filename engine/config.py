"""The engine's config and what it means on this machine: the typed config (the simulator's
plus device, weights, kernels, CUDA graphs), the device and kernels it resolves to, the decode
graph mode, and how many KV cache blocks fit (`kv_num_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from apcsim.config import SimConfig
from apcsim.errors import ConfigError


@dataclass
class EngineConfig(SimConfig):
    device: str = "auto"  # auto: cuda if available, else cpu
    weights: Optional[str] = None  # a folder of HF Llama *.safetensors; None: random weights (seed)
    online: bool = False  # arrivals on the wall clock at the trace's timestamps; false: all at once
    attention_backend: str = "auto"  # auto: triton on cuda, torch (reference) on cpu; or triton/torch
    cpu_kv_cache_mib: int = 256  # KV cache size on the CPU when num_gpu_blocks is not given
    weights_seed: Optional[int] = None  # seed of the random weights; None: `seed`
    cpu_threads: Optional[int] = None  # torch intra-op threads on the CPU; None: torch's default
    # Pure-decode steps (engine/decode_graphs.py): auto = CUDA graphs on a GPU with the Triton
    # kernels, eager otherwise; on = CUDA graphs (a GPU is required); padded = the graphs'
    # padded static-buffer path run without capture; off = every step eager.
    cuda_graphs: str = "auto"
    cuda_graph_max_batch: Optional[int] = None  # largest captured batch; None: scheduler.max_num_seqs


CUDA_GRAPH_MODES = ("auto", "on", "padded", "off")


def decode_graph_mode(cuda_graphs: str, device, ops_name: str, max_batch: int | None = None) -> str | None:
    """The `engine.decode_graphs` mode of a `cuda_graphs=` value on a device with a kernel
    backend, or None for eager decode steps. The engine and its profiler both decide here."""
    if cuda_graphs not in CUDA_GRAPH_MODES:
        raise ConfigError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, got {cuda_graphs!r}")
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"cuda_graph_max_batch must be >= 1, got {max_batch}")
    if cuda_graphs == "on" and device.type != "cuda":
        raise ConfigError(f"cuda_graphs=on needs a CUDA device, got {device}; cuda_graphs=padded runs the same "
                          "padded decode path without capture")
    if cuda_graphs == "auto":
        mode = "graph" if device.type == "cuda" and ops_name == "triton" else None
    else:
        mode = {"on": "graph", "padded": "padded", "off": None}[cuda_graphs]
    if mode == "graph" and ops_name != "triton":
        raise ConfigError(f"CUDA graphs need attention_backend=triton (the {ops_name} backend syncs with the host); "
                          "set cuda_graphs=off to run it eagerly")
    return mode


def register_engine_config() -> None:
    from hydra.core.config_store import ConfigStore

    from apcsim.config import register_configs

    register_configs()
    ConfigStore.instance().store(name="engine_schema", node=EngineConfig)


def compose_engine_config(overrides: list[str] | None = None) -> EngineConfig:
    """A typed engine config from the same overrides `python -m engine` takes (tests, benchmarks)."""
    from apcsim.cli.compose import compose_config

    register_engine_config()
    return compose_config(overrides, config_name="engine")  # type: ignore[return-value]


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # torch's message lists ~20 device types and is not about this option
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r} (the engine runs on those)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available")
    return dev


def resolve_ops(name: str, device):
    from engine import kernels

    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
    if name not in kernels.BACKENDS:
        raise ConfigError(f"attention_backend must be auto or one of {', '.join(kernels.BACKENDS)}, got {name!r}")
    if name == "triton" and (why := kernels.triton_unusable_reason(device.type)):
        raise ConfigError(f"attention_backend=triton on {device}: {why}")
    return kernels.get_ops(name)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def kv_memory_error(*, model: str, weights_bytes: int, activation_bytes: int, block_bytes: int, num_blocks: int | None,
                    free_bytes: int, total_bytes: int, utilization: float, graph_bytes: int = 0) -> str | None:
    """The message for a KV cache that does not fit on the GPU (None if it fits), with every
    number the user needs: weights, activations, the KV asked for, free and total memory.
    `num_blocks`: the blocks asked for (num_gpu_blocks), or None when sized from utilization.
    `activation_bytes` includes `graph_bytes`, the decode graphs' share, named when > 0."""
    budget = total_bytes * utilization - (total_bytes - free_bytes)  # the weights are loaded by now
    room = budget - activation_bytes
    graphs = f" (CUDA graphs {_gib(graph_bytes)})" if graph_bytes > 0 else ""
    head = (f"GPU out of memory for model {model}: weights {_gib(weights_bytes)}, activations {_gib(activation_bytes)}"
            f"{graphs}, {_gib(free_bytes)} free of {_gib(total_bytes)}")
    if num_blocks is None:
        if room >= block_bytes:
            return None
        return (f"{head}; gpu_memory_utilization={utilization} leaves {_gib(max(room, 0))} for the KV cache, "
                f"less than one block ({block_bytes} bytes); raise gpu_memory_utilization or use a smaller model")
    kv = num_blocks * block_bytes
    if kv + activation_bytes <= free_bytes:
        return None
    fit = max(int((free_bytes - activation_bytes) // block_bytes), 0)
    return (f"{head}; num_gpu_blocks={num_blocks} needs {_gib(kv)} of KV cache ({block_bytes} bytes a block), "
            f"at most {fit} blocks fit")


def check_cpu_memory(cfg: EngineConfig, dtype, available: int | None = None) -> None:
    """On the CPU the weights, the KV cache and the block pool live in host memory: refuse a model
    that cannot fit before building it (the default llama3_8b is 30 GiB in fp32), with the numbers."""
    import torch

    from apcsim.hostmem import POOL_BYTES_PER_BLOCK, check_fits
    from engine.executor import kv_block_bytes

    elem = torch.empty((), dtype=dtype).element_size()
    weights = cfg.model.num_params * elem
    per_block = kv_block_bytes(cfg.model, cfg.block_size, dtype)
    kv = (cfg.num_gpu_blocks * (per_block + POOL_BYTES_PER_BLOCK) if cfg.num_gpu_blocks is not None
          else cfg.cpu_kv_cache_mib * 2**20)
    what = (f"model {cfg.model.name} on the CPU ({weights / 2**30:.1f} GiB of {str(dtype).removeprefix('torch.')} "
            f"weights + {kv / 2**30:.1f} GiB of KV cache)")
    check_fits(what, weights + kv, "use model=tiny, a smaller num_gpu_blocks/cpu_kv_cache_mib, or a GPU",
               available=available)


def kv_num_blocks(cfg: EngineConfig, device, dtype, weights_bytes: int = 0, graph_bytes: int = 0) -> int:
    """num_gpu_blocks if given; on CUDA what gpu_memory_utilization leaves after the weights,
    one full-budget step's activations (as vLLM sizes it) and the decode graphs' memory
    (`graph_bytes`, see engine.decode_graphs.graph_memory_bytes); on the CPU cpu_kv_cache_mib. On CUDA
    a cache that cannot fit is a ConfigError with the numbers (see kv_memory_error), raised
    before anything is allocated, instead of torch's OutOfMemoryError mid-setup."""
    import torch

    from apcsim.hardware import activation_bytes
    from engine.executor import kv_block_bytes

    per_block = kv_block_bytes(cfg.model, cfg.block_size, dtype)
    if device.type == "cuda":
        # Blocks the caching allocator holds but no tensor uses (temporaries of the weights'
        # initialisation, an earlier run's cache) count as used in mem_get_info: hand them back
        # first, or the KV cache comes out smaller by all of them.
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        act = activation_bytes(cfg.model, cfg.scheduler.max_num_batched_tokens, cfg.scheduler.max_num_seqs) + graph_bytes
        msg = kv_memory_error(model=cfg.model.name, weights_bytes=weights_bytes, activation_bytes=act, graph_bytes=graph_bytes,
                              block_bytes=per_block, num_blocks=cfg.num_gpu_blocks, free_bytes=free,
                              total_bytes=total, utilization=cfg.gpu_memory_utilization)
        if msg is not None:
            raise ConfigError(msg)
        if cfg.num_gpu_blocks is not None:
            return cfg.num_gpu_blocks
        return int((total * cfg.gpu_memory_utilization - (total - free) - act) // per_block)
    if cfg.num_gpu_blocks is not None:
        return cfg.num_gpu_blocks
    n = int(cfg.cpu_kv_cache_mib * 2**20 // per_block)
    if n < 1:
        raise ConfigError(f"no room for a KV cache of model {cfg.model.name} (one block is {per_block} bytes)")
    return n
