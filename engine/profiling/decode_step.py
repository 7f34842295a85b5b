"""`decode_step`: whole pure-decode steps, timed as the engine runs them through its decode graphs.

With CUDA graphs a decode step is one replay: its kernels run back to back, so the per-op rows
(each op timed in a stream of launches, at its launch rate when that is slower) would overstate
it. Each point here is a batch of b requests at context c, every request with its own blocks
(b * cdiv(c + 1, block_size) of them, all layers), loaded into the graphs' static buffers and run
with `DecodeGraphs.run`: replay (or the padded eager forward), argmax, and the copy of the tokens
to the host, which is where `Executor.forward` waits for the device.
"""

from __future__ import annotations

import numpy as np

from apcsim.mathutil import cdiv
from engine.executor import Executor
from engine.model import LlamaForCausalLM
from engine.profiling.grid import ProfileGrid
from engine.profiling.kernels import _row
from engine.profiling.timer import OpTimer


def decode_step_rows(model: LlamaForCausalLM, ops, grid: ProfileGrid, timer: OpTimer, *, mode: str,
                     block_size: int, seed: int) -> list[dict]:
    points = grid.decode_step_points()
    blocks = max(b * cdiv(c + 1, block_size) for b, c in points)
    widest = max(cdiv(c + 1, block_size) for _, c in points)
    executor = Executor(model, ops, num_blocks=blocks, block_size=block_size)
    graphs = executor.enable_decode_graphs(mode, max_batch=max(b for b, _ in points), max_blocks_per_seq=widest,
                                           capture_only=sorted({b for b, _ in points}))
    rng = np.random.default_rng(seed)
    rows = []
    for b, c in points:
        per = cdiv(c + 1, block_size)
        tables = np.arange(b * per, dtype=np.int64).reshape(b, per)  # [b, per]: distinct blocks
        pos = np.full(b, c, dtype=np.int64)  # the new token follows c cached ones
        slots = tables[:, c // block_size] * block_size + c % block_size
        ids = rng.integers(0, model.cfg.vocab_size, b, dtype=np.int64)
        graphs.load(ids, pos, slots, tables, np.full(b, c + 1, dtype=np.int32))
        ms = timer.median_ms(lambda: graphs.run(b))
        rows.append(_row("decode_step", model, ms, tokens=b, batch=b, context=c))
    return rows
