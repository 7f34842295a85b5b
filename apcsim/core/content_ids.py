"""Block keys without tokens, for prompts that a workload already names by content ids.

A Mooncake-style trace names each `span`-token piece of a prompt by an id, and the workload maps
an id to the same tokens wherever it appears. Hashing those tokens block by block (xxh3 over
every token, and the tokens made first) only re-derives what the ids already say, so the KV
cache manager keys such blocks from the ids instead:

    c(-1) = H(namespace, span; root(salt))       c(i) = H(ids[i]; c(i-1))
    key of engine block j (span = sub * block_size) = mix64(c(j // sub) + (j % sub + 1) * G)

Invariant (the same as token keys'): equal keys mean equal whole prefixes, up to 64-bit
collisions: c(i) chains every id before it, and a block's key names its id's chain and its place
inside the id. Conversely two prefixes with the same tokens have the same ids, since the workload
draws an id's tokens at random (a different id giving equal tokens is a collision of the token
table, as unlikely as one of xxh3). So content keys give the same hits as token keys; the
tests compare both on the bundled traces. Blocks past the ids (padding, generated tokens) keep
token keys, chained from the last content key, so a real engine's identical outputs still hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

from apcsim.mathutil import cdiv

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 array `x`, in place (returned too): a bijection, so
    distinct inputs stay distinct (uint64 arithmetic wraps mod 2^64 as intended)."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True, eq=False)
class ContentIds:
    """Prompt tokens [i * span, (i + 1) * span) are a function of `ids[i]` alone (within
    `namespace`, the workload's token table), for the first `num_tokens` tokens of the prompt."""

    ids: np.ndarray  # int64 [n]
    span: int  # tokens per id
    num_tokens: int  # prompt tokens the ids cover: min(prompt_len, n * span)
    namespace: str  # which token table the ids index: equal ids of two tables are not equal tokens


def content_keys(content: ContentIds, block_size: int, seed: int) -> list[int]:
    """Chained keys of the full `block_size`-token blocks within `content.num_tokens`, starting
    from `seed` (the salt's root); [] when block_size does not divide the span (token keys then)."""
    span = content.span
    if span % block_size:
        return []
    n_blocks = content.num_tokens // block_size
    if n_blocks == 0:
        return []
    sub = span // block_size
    n_ids = cdiv(n_blocks, sub)
    h = xxhash.xxh3_64_intdigest
    c = h(f"{content.namespace}:{span}".encode(), seed)
    chain = []
    for hid in content.ids[:n_ids].tolist():
        c = h(hid.to_bytes(8, "little", signed=True), c)
        chain.append(c)
    # [n_blocks]: one pass for all sub-blocks; uint64 arithmetic wraps mod 2^64 as intended
    x = np.repeat(np.array(chain, dtype=np.uint64), sub)[:n_blocks]
    x += np.tile(np.arange(1, sub + 1, dtype=np.uint64) * _GOLDEN, n_ids)[:n_blocks]
    return mix64(x).tolist()
