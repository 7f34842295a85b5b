"""apcsim's Hydra application as `python -m apcsim` sets it up (search path, task name), for tests
of the plain-run composition (apcsim.cli.compose_once, apcsim.cli.compose_cache)."""

from __future__ import annotations

from hydra._internal.hydra import Hydra
from hydra._internal.utils import (
    create_automatic_config_search_path,
    detect_calling_file_or_module_from_task_function,
    detect_task_name,
)

from apcsim.cli.compose_cache import App
from apcsim.cli.main import CONFIG_NAME, CONFIG_PATH, main
from apcsim.config import register_configs


def make_hydra():
    """(Hydra object, App); the caller clears GlobalHydra after use."""
    register_configs()
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(main.__wrapped__)
    search_path = create_automatic_config_search_path(calling_file, calling_module, CONFIG_PATH)
    task_name = detect_task_name(calling_file, calling_module)
    app = App(calling_file, calling_module, CONFIG_PATH, CONFIG_NAME, task_name)
    return Hydra.create_main_hydra2(task_name=task_name, config_search_path=search_path), app
