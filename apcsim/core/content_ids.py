"""Block keys without tokens, for prompts that a workload already names by content ids.

A Mooncake-style trace names each `span`-token piece of a prompt by an id, and the workload maps
an id to the same tokens wherever it appears (an Azure row is named by its 512-token pieces
likewise). Hashing those tokens block by block (xxh3 over
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

A request's keys are made as far as they are asked for (`ContentChain`): most prompts are
looked up once, miss at their first block and are never keyed further.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xxhash

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
    # No other request of the run names ids[0] (a trace row's own pieces): every key of the
    # prompt's blocks chains from it, so each is the request's alone. The core trusts this
    # unchecked: a lookup before the request first holds blocks misses without a walk
    # (`apcsim.core.request.UNSEEN_PREFIX`), and its pending range is one nobody else can reach
    # (apcsim.core.pending_keys, "An own range"). False where ids may be shared (Mooncake hash ids).
    unique: bool = False


def content_keys(content: ContentIds, block_size: int, seed: int) -> list[int]:
    """Chained keys of the full `block_size`-token blocks within `content.num_tokens`, starting
    from `seed` (the salt's root); [] when block_size does not divide the span (token keys then)."""
    chain = ContentChain(content, block_size, seed)
    return chain.keys(0, chain.num_blocks)


_MASK = (1 << 64) - 1
_FEW = 24  # up to this many keys a call, plain int arithmetic beats NumPy's per-call overhead


_M1_INT, _M2_INT, _GOLDEN_INT = int(_M1), int(_M2), int(_GOLDEN)
# An id's 8 bytes, little-endian two's complement: int.to_bytes(8, "little", signed=True), without
# its keyword parsing (one call per id a chain reaches)
_ID_BYTES = struct.Struct("<q").pack


def _mix64_int(x: int) -> int:
    """`mix64` of one value in [0, 2^64), as a Python int."""
    x ^= x >> 30
    x = (x * _M1_INT) & _MASK
    x ^= x >> 27
    x = (x * _M2_INT) & _MASK
    return x ^ (x >> 31)


@lru_cache(maxsize=64)
def _chain_root(namespace: str, span: int, seed: int) -> int:
    """c(-1): the same for every request of a token table and salt (a run has a handful)."""
    return xxhash.xxh3_64_intdigest(f"{namespace}:{span}".encode(), seed)


class ContentChain:
    """One prompt's content keys, made as far as they are asked for.

    A lookup asks for the first key alone, keying a request's first new blocks asks for a few:
    chaining every id and mixing every sub-block key at once (what `content_keys` does) is wasted
    on a prompt nobody shares. The chain values c(i) are made in order and kept (one int an id),
    so a key is one mix away once its id is chained. Keys never depend on how they were asked
    for: `keys(a, b)` equals `content_keys(...)[a:b]` for any split."""

    __slots__ = ("_ids", "_sub", "num_blocks", "_c")

    def __init__(self, content: ContentIds, block_size: int, seed: int) -> None:
        span = content.span
        self._ids = content.ids
        self._sub = span // block_size
        # Keys only where block_size divides the span (else a block would straddle two ids).
        self.num_blocks = 0 if span % block_size else content.num_tokens // block_size
        self._c = [_chain_root(content.namespace, span, seed)]  # c(-1), c(0), ...

    def keys(self, start: int, stop: int) -> list[int]:
        """The keys of blocks [start, min(stop, num_blocks))."""
        stop = min(stop, self.num_blocks)
        if stop <= start:
            return []
        sub, c = self._sub, self._c
        need = (stop - 1) // sub + 2  # c(-1) .. c(id of the last block)
        if len(c) < need:
            h, last, as_bytes = xxhash.xxh3_64_intdigest, c[-1], _ID_BYTES
            for hid in self._ids[len(c) - 1 : need - 1].tolist():
                last = h(as_bytes(hid), last)
                c.append(last)
        if stop - start <= _FEW:
            return [_mix64_int((c[j // sub + 1] + (j % sub + 1) * _GOLDEN_INT) & _MASK) for j in range(start, stop)]
        first = start // sub
        n_ids = need - 1 - first
        # [stop - start] keys: each id's chain value repeated over its sub-blocks, plus the
        # sub-block's offset; uint64 arithmetic wraps mod 2^64 as intended
        x = np.repeat(np.array(c[first + 1 : need], dtype=np.uint64), sub)
        x += np.tile(np.arange(1, sub + 1, dtype=np.uint64) * _GOLDEN, n_ids)
        return mix64(x[start - first * sub : stop - first * sub]).tolist()
