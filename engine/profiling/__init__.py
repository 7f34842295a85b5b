"""Profiling the engine's own operations into a calibration profile (`python -m engine.profile`).

- `timer`: medians of repeated timings, CUDA events on the GPU, `perf_counter` on the CPU.
- `grid`: the measured points (`full` for a GPU and an 8B model, `small` for CPU tests) and an
  up-front estimate of how long a grid takes.
- `kernels`: the model's per-layer token-level ops, paged attention (prefill by new x context
  tokens, decode by batch x context) and the LM head, through the same modules and kernels the
  executor runs.
- `decode_step`: whole pure-decode steps through the engine's decode graphs (CUDA graphs on a
  GPU), by batch bucket x context.
- `overhead`: the serving loop's host work per step (schedule, input preparation, token storing,
  update) by batch size, and prefix-cache hashing per prompt token.
"""
