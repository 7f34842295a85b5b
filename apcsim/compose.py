"""Compose a typed config outside the CLI (benchmarks, tests, notebooks), with the same
configs and overrides as `python -m apcsim`."""

from __future__ import annotations

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from apcsim.config import SimConfig, register_configs


def compose_config(overrides: list[str] | None = None) -> SimConfig:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="apcsim.conf", version_base=None):
        dcfg = compose(config_name="config", overrides=list(overrides or []))
    return OmegaConf.to_object(dcfg)  # type: ignore[return-value]
