"""Each replica's own config: the run's, with its entry of `replica_hardware` (a preset of
conf/hardware/) and `replica_num_gpu_blocks` when the cluster is heterogeneous."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from apcsim.config import SimConfig
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig


def hardware_preset(name: str) -> HardwareConfig:
    """conf/hardware/NAME.yaml read onto its schema (what `hardware=NAME` composes)."""
    path = Path(str(resources.files("apcsim.conf"))) / "hardware" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"replica_hardware: unknown hardware preset {name!r}; known: {', '.join(known)}")
    data = OmegaConf.to_container(OmegaConf.load(path))
    data.pop("defaults", None)  # type: ignore[union-attr]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HardwareConfig), data))  # type: ignore[return-value]


def check_replica_lists(cfg: SimConfig) -> None:
    for key in ("replica_hardware", "replica_num_gpu_blocks"):
        v = getattr(cfg, key)
        if v is None:
            continue
        if cfg.num_replicas < 2 or len(v) != cfg.num_replicas:
            raise ConfigError(f"{key} needs one entry per replica: {len(v)} given, num_replicas={cfg.num_replicas}")
    if cfg.replica_num_gpu_blocks is not None and min(cfg.replica_num_gpu_blocks) < 1:
        raise ConfigError(f"replica_num_gpu_blocks must be >= 1 each, got {list(cfg.replica_num_gpu_blocks)}")


def replica_configs(cfg: SimConfig) -> list[SimConfig]:
    """One config per replica (all `cfg` itself for a homogeneous cluster)."""
    check_replica_lists(cfg)
    out = []
    for k in range(cfg.num_replicas):
        changes: dict = {}
        if cfg.replica_hardware is not None and cfg.replica_hardware[k] != cfg.hardware.name:
            changes["hardware"] = hardware_preset(cfg.replica_hardware[k])
        if cfg.replica_num_gpu_blocks is not None:
            changes["num_gpu_blocks"] = cfg.replica_num_gpu_blocks[k]
        out.append(dataclasses.replace(cfg, **changes) if changes else cfg)
    return out
