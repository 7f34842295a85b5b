"""`python -m engine.profile model=llama3_8b`: profile the engine's own ops into a calibration profile.

Measures, over a grid (`grid=full`, or `grid=small` for CPU tests), the token-level ops of one
layer, paged prefill and decode attention, the LM head, the serving loop's host work per decode
step and prefix-cache hashing (see `engine.profiling`), and writes them in the calibration schema
(`apcsim.calibration.profile`) to `apcsim/profiles/<hardware>/<model>.csv` (or `out=PATH`), with
the run's metadata beside it in `<same name>.meta.json` (device, versions, date, command, grid).

The hardware name comes from the device (`NVIDIA H100 80GB HBM3` -> `h100`, a CPU -> `cpu`);
`hardware_name=` overrides it. Then `python -m apcsim.calibration hardware=<hw> model=<model>`
fits it and reports the held-out errors. Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import datetime
import json
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from apcsim.cli.oneline import run_with_one_line_errors
from apcsim.config import register_configs
from apcsim.errors import ApcsimError, ConfigError, exit_bad_input
from apcsim.hardware import ModelConfig

PROG = "engine.profile"
# Known GPU families, matched in the device name; anything else becomes its sanitised name.
_GPU_NAMES = ("h200", "h100", "h800", "a100", "a800", "a10g", "l40s", "l40", "l4", "v100", "t4", "b200", "gh200")


@dataclass
class ProfileConfig:
    model: ModelConfig = MISSING
    device: str = "auto"  # auto: cuda if available, else cpu
    attention_backend: str = "auto"  # auto: triton on cuda, torch (reference) on cpu
    hardware_name: Optional[str] = None  # None: from the device's name
    grid: str = "full"  # engine.profiling.grid.GRIDS
    out: Optional[str] = None  # None: apcsim/profiles/<hardware>/<model>.csv
    warmup: int = 3
    repeats: int = 10
    block_size: int = 16
    policy: str = "lru"  # eviction policy of the scheduler in the cpu_step and cpu_hash runs
    seed: int = 0
    cpu_threads: Optional[int] = None  # torch intra-op threads on the CPU; None: torch's default
    # As the engine's option: decode steps through CUDA graphs (auto: on a GPU with Triton). With
    # graphs (or `padded`), whole decode steps are timed as `decode_step` rows, which the
    # calibrated cost model then uses for pure-decode steps; set it as the engine will run.
    cuda_graphs: str = "auto"


def register_profile_config() -> None:
    register_configs()
    ConfigStore.instance().store(name="engine_profile_schema", node=ProfileConfig)


def gpu_hardware_name(device_name: str) -> str:
    """`h100` for "NVIDIA H100 80GB HBM3" (a known family in the name), else the lower-cased name
    without the vendor, runs of other characters turned into `_`."""
    name = device_name.lower()
    for known in _GPU_NAMES:
        if re.search(rf"(?<![a-z0-9]){known}(?![a-z0-9])", name):
            return known
    return re.sub(r"[^a-z0-9]+", "_", name.removeprefix("nvidia ")).strip("_") or "gpu"


def hardware_name_of(device) -> str:
    """The profile's hardware name for a torch device: `cpu`, or `gpu_hardware_name` of a GPU."""
    import torch

    if device.type != "cuda":
        return "cpu"
    return gpu_hardware_name(torch.cuda.get_device_name(device))


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_out(hardware: str, model: str) -> Path:
    from apcsim.calibration.profile import profiles_root

    return profiles_root() / hardware / f"{model}.csv"


def meta_path(profile: Path) -> Path:
    return profile.with_suffix(".meta.json")


def _estimate(grid, cfg: ProfileConfig, hardware: str, decode_graphs: bool) -> float | None:
    """Estimated device seconds, if `conf/hardware/<hardware>.yaml` gives the spec sheet."""
    from importlib import resources

    from engine.profiling.grid import estimate_seconds

    spec = Path(str(resources.files("apcsim") / "conf" / "hardware" / f"{hardware}.yaml"))
    if not spec.is_file():
        return None
    hw = OmegaConf.load(spec)
    return estimate_seconds(grid, cfg.model, peak_tflops=float(hw.peak_tflops), mem_bw_gbps=float(hw.mem_bw_gbps),
                            warmup=cfg.warmup, repeats=cfg.repeats, decode_graphs=decode_graphs)


class ProgressLog:
    """One stderr line per measured point and per phase, flushed as it is written: a profile cut
    off by a time limit still says how far it got and how long each part took."""

    def __init__(self, t0: float, stream=None) -> None:
        self.t0 = t0
        self.stream = stream if stream is not None else sys.stderr
        self.phase = "setup"
        self.points = 0

    def _say(self, text: str) -> None:
        print(f"{PROG}: [{time.perf_counter() - self.t0:7.1f}s] {text}", file=self.stream, flush=True)

    def start(self, phase: str) -> None:
        self.phase, self.points = phase, 0
        self._say(f"{phase}: started")

    def point(self, ms: float) -> None:
        self.points += 1
        self._say(f"{self.phase}: point {self.points}: {ms:.4g} ms")

    def end(self, rows: int) -> None:
        self._say(f"{self.phase}: done, {rows} rows")


def run_profile(cfg: ProfileConfig, argv: list[str] | None = None) -> tuple[Path, dict]:
    """Measure and write the profile; returns (profile path, metadata)."""
    import torch

    from apcsim.calibration.profile import write_profile
    from engine.config import decode_graph_mode, resolve_device, resolve_ops
    from engine.profiling.decode_step import decode_step_rows
    from engine.profiling.grid import GRIDS
    from engine.profiling.kernels import PagedCache, attention_rows, cache_blocks_needed, lm_head_rows, token_op_rows
    from engine.profiling.overhead import cpu_hash_rows, cpu_step_rows
    from engine.profiling.timer import OpTimer
    from engine.weights import default_dtype, random_model
    from policies.registry import EVICTION_POLICIES

    if cfg.grid not in GRIDS:
        raise ConfigError(f"grid must be one of {', '.join(GRIDS)}, got {cfg.grid!r}")
    if cfg.warmup < 0 or cfg.repeats < 1:
        raise ConfigError(f"warmup must be >= 0 and repeats >= 1, got warmup={cfg.warmup} repeats={cfg.repeats}")
    if cfg.block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {cfg.block_size}")
    if cfg.policy not in EVICTION_POLICIES or cfg.policy == "none":
        raise ConfigError(f"policy must be a caching eviction policy ({', '.join(p for p in EVICTION_POLICIES if p != 'none')}), got {cfg.policy!r}")
    grid = GRIDS[cfg.grid]
    grid.check()
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.cpu_threads is not None:
        if cfg.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be >= 1, got {cfg.cpu_threads}")
        torch.set_num_threads(cfg.cpu_threads)
    hardware = cfg.hardware_name or hardware_name_of(device)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", hardware):
        raise ConfigError(f"hardware_name must be letters, digits, '_', '.' or '-', got {hardware!r}")
    out = Path(cfg.out) if cfg.out else default_out(hardware, cfg.model.name)
    ops = resolve_ops(cfg.attention_backend, device)
    graph_mode = decode_graph_mode(cfg.cuda_graphs, device, ops.name)
    dtype = default_dtype(device)
    estimate = _estimate(grid, cfg, hardware, graph_mode is not None)
    if estimate is not None:
        print(f"{PROG}: estimated device time of grid={cfg.grid} on {hardware}: {estimate:.0f} s", file=sys.stderr)

    t0 = time.perf_counter()
    progress = ProgressLog(t0)
    model = random_model(cfg.model, seed=cfg.seed, device=device, dtype=dtype)
    timer = OpTimer(device, warmup=cfg.warmup, repeats=cfg.repeats, on_point=progress.point)
    cache = PagedCache(model, cache_blocks_needed(grid, cfg.block_size), cfg.block_size, cfg.seed)
    phases: dict[str, float] = {}

    def phase(name, fn, *args, **kw):
        progress.start(name)
        t = time.perf_counter()
        r = fn(*args, **kw)
        phases[name] = round(time.perf_counter() - t, 3)
        progress.end(len(r))
        return r

    rows = phase("token_ops", token_op_rows, model, ops, cache, grid, timer, cfg.seed)
    rows += phase("lm_head", lm_head_rows, model, grid, timer, cfg.seed)
    rows += phase("attention", attention_rows, model, ops, cache, grid, timer, cfg.seed)
    del cache  # the loop runs below get their own KV cache: give this one's memory back first
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shape = {"num_heads": cfg.model.num_heads, "num_kv_heads": cfg.model.num_kv_heads,
             "head_dim": cfg.model.head_dim, "tp": 1}
    if graph_mode is not None:
        rows += phase("decode_step", decode_step_rows, model, ops, grid, timer, mode=graph_mode,
                      block_size=cfg.block_size, seed=cfg.seed)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    host = phase("cpu_step", cpu_step_rows, model, ops, grid, block_size=cfg.block_size, policy=cfg.policy,
                 seed=cfg.seed, graph_mode=graph_mode)
    host += phase("cpu_hash", cpu_hash_rows, grid, block_size=cfg.block_size, policy=cfg.policy,
                  vocab_size=cfg.model.vocab_size, seed=cfg.seed, repeats=cfg.repeats)
    rows += [{**r, **shape} for r in host]

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    commit = _git_commit()
    source = f"engine.profile@{commit}:{ops.name}:{str(dtype).removeprefix('torch.')}:bs{cfg.block_size}"
    rows = [{"hardware": hardware, "model": cfg.model.name, "source": source, **r} for r in rows]
    write_profile(out, rows)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {
        "hardware": hardware,
        "model": cfg.model.name,
        "tp": 1,  # the engine runs on one device; the simulator checks a profile's tp against its run's
        "device": str(device),
        "device_name": dev_name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "attention_backend": ops.name,
        "decode_graphs": graph_mode or "off",
        "dtype": str(dtype).removeprefix("torch."),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "command": " ".join(["python -m engine.profile", *(argv if argv is not None else sys.argv[1:])]),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "grid": asdict(grid),
        "estimated_device_s": estimate,
        "wall_s": round(time.perf_counter() - t0, 3),
        "phase_wall_s": phases,
        "timed_calls": timer.calls,
        "rows": len(rows),
    }
    meta_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    return out, meta


register_profile_config()


@hydra.main(version_base=None, config_path="pkg://apcsim.conf", config_name="engine_profile")
def main(dcfg: DictConfig) -> None:
    try:
        cfg: ProfileConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        out, meta = run_profile(cfg)
    except ApcsimError as e:
        exit_bad_input(PROG, str(e))
    print(f"{PROG}: {meta['rows']} rows for hardware={meta['hardware']} model={meta['model']} "
          f"({meta['device_name']}, {meta['attention_backend']}) in {meta['wall_s']:.1f}s")
    print(f"wrote {out} and {meta_path(out).name}")
    print(f"fit it: python -m apcsim.calibration hardware={meta['hardware']} model={meta['model']}"
          + ("" if cfg.out is None else f" profile={out}"))


def entry() -> None:
    run_with_one_line_errors(main, PROG)


if __name__ == "__main__":
    entry()
