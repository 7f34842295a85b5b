"""Calibration: measured kernel timings in one profile schema, their fits, and their checks.

- `profile`: the CSV schema (one row per measured kernel-group point), reading, writing, and
  where the bundled profiles live (`apcsim/profiles/<hardware>/<model>.csv`).
- `vidur`: converts Vidur's public A100 profiles into that schema
  (`python -m apcsim.calibration.vidur --src ... --out ...`).
- `fit`: monotone piecewise-linear fits (1-D curves and 2-D grids) that the cost model queries.
- `python -m apcsim.calibration hardware=a100 model=llama3_8b`: held-out fit errors and whole-step
  predictions, written to `calibration.json` in the Hydra run directory.

- `cost_model`: the calibrated cost model (`CalibratedCostModel`) and `make_cost_model`, which picks
  the model the `cost_model` config key names (calibrated, or `apcsim.sim.cost_model`'s roofline).
- `decode_buckets`: the decode batch sizes the engine captures CUDA graphs for, which the
  calibrated model costs a decode step at.

Calibration builds on `apcsim.sim.cost_model` (the `CostModel` question and the roofline answer);
the simulator imports nothing from here.
"""
