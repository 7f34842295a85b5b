"""Fixtures every test folder shares: the roofline cost model and the serving core's factories
(tests/helpers/serving.py holds them, for helpers and Hypothesis tests that cannot take a fixture).
The repository's conftest.py, one level up, skips the `gpu` tests where no GPU is usable."""

from __future__ import annotations

import pytest

from tests.helpers import serving


@pytest.fixture
def cost_model():
    """The default hardware and model presets' roofline cost model (stateless: shared)."""
    return serving.COST


@pytest.fixture
def scheduler_factory():
    """`scheduler_factory(eviction, scheduling, num_blocks=, bs=, recompute_cost=, specs=,
    kv_options=, cache=, **scheduler_config_fields)`: see `serving.build_scheduler`."""
    return serving.build_scheduler

