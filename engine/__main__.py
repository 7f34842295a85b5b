"""`python -m engine`: the real engine's Hydra entry point (same config groups as `python -m apcsim`)."""

from engine.cli import entry

entry()
