"""Compose a typed config outside the CLI (benchmarks, tests, notebooks), with the same
configs and overrides as `python -m apcsim`."""

from __future__ import annotations

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from apcsim.cli.config_keys import check_known_keys
from apcsim.config import SimConfig, register_configs


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> SimConfig:
    """`config_name` picks the primary config in apcsim/conf: "config" (the simulator) or "engine"
    (whose schema the engine registers first)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="apcsim.conf", version_base=None):
        dcfg = compose(config_name=config_name, overrides=list(overrides or []))
    check_known_keys(dcfg)  # `+typo=1` composes; it must not be dropped without a word here either
    return OmegaConf.to_object(dcfg)  # type: ignore[return-value]
