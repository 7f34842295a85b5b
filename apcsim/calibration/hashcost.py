"""CPU cost of prefix-cache block hashing and lookup per prompt token, measured on this machine.

    python -m apcsim.calibration.hashcost [--block-size 16] [--tokens 4096] [--repeats 200]

Reproduces what vLLM V1 does for each request it admits with prefix caching on
(`hash_request_tokens` and `find_longest_cache_hit`, vllm/v1/core/kv_cache_utils.py): for every
full block, a tuple of its token ids, Python's built-in `hash` of (parent hash, token tuple, extra
keys), a `BlockHashType` named tuple, and a dict lookup. No vLLM code is used. The default of
`CalibratedCostModel.hash_ns_per_token` was measured with this script (see there); a profile row
`cpu_hash` overrides it.
"""

from __future__ import annotations

import argparse
import platform
import random
import timeit
from collections import namedtuple

BlockHashType = namedtuple("BlockHashType", ["hash_value", "token_ids", "extra_keys"])


def _hash_and_lookup(tokens: list[int], block_size: int, table: dict) -> int:
    parent = None
    hits = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        ids = tuple(tokens[start:start + block_size])
        h = BlockHashType(hash((parent, ids, None)), ids, None)
        if table.get(h) is not None:
            hits += 1
        parent = h.hash_value
    return hits


def measure_ns_per_token(block_size: int = 16, num_tokens: int = 4096, repeats: int = 200, seed: int = 0) -> float:
    rng = random.Random(seed)
    tokens = [rng.randrange(128256) for _ in range(num_tokens)]
    table: dict = {}
    best = min(timeit.repeat(lambda: _hash_and_lookup(tokens, block_size, table), number=repeats // 10 or 1, repeat=10))
    return best / (repeats // 10 or 1) / num_tokens * 1e9


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m apcsim.calibration.hashcost")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=200)
    a = p.parse_args()
    ns = measure_ns_per_token(a.block_size, a.tokens, a.repeats)
    print(f"{ns:.1f} ns per prompt token (block size {a.block_size}; {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()})")


if __name__ == "__main__":
    main()
