"""Block-key hash functions: key(i) = H(key(i-1), token ids of block i), key(-1) = root(salt).

The chain makes equal keys mean equal whole prefixes (up to collisions), and the root makes
tenants with different salts disjoint: the salt is folded into the first block's key, as vLLM
folds `cache_salt` into the first block's extra keys. Choices (`hash_algo`):

  xxh3_64   64-bit keys, the fastest (the default; vLLM's `builtin` hash is of this class)
  xxh3_128  128-bit keys: parent key (16 bytes) + tokens through XXH3-128
  sha256    256-bit keys over a canonical byte encoding (vLLM's `sha256` option):
            parent key (32 bytes, big-endian) + token ids (int32, little-endian) [+ b"salt:" + salt
            for the root], so keys do not depend on the machine or the Python version

None of these is keyed with a secret, so collisions are an accident, not a defence against a
tenant who crafts them; isolation comes from the salt. README "Reliability" gives the collision
odds. A `HashAlgo` object may be passed wherever a name is (`kv_options["hash_algo"]`); tests
pass a deliberately weak one to exercise `verify_tokens`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import xxhash


@dataclass(frozen=True)
class HashAlgo:
    name: str
    bits: int
    root: Callable[[str | None], int]  # salt -> the chain's seed
    step: Callable[[int, bytes], int]  # (parent key, block token bytes) -> key


def _xxh3_64_root(salt: str | None) -> int:
    return 0 if salt is None else xxhash.xxh3_64_intdigest(salt.encode())


def _xxh3_64_step(parent: int, tokens: bytes) -> int:
    return xxhash.xxh3_64_intdigest(tokens, parent)


def _xxh3_128_root(salt: str | None) -> int:
    return 0 if salt is None else xxhash.xxh3_128_intdigest(b"salt:" + salt.encode())


def _xxh3_128_step(parent: int, tokens: bytes) -> int:
    return xxhash.xxh3_128_intdigest(parent.to_bytes(16, "big") + tokens)


def _sha256_root(salt: str | None) -> int:
    return 0 if salt is None else int.from_bytes(hashlib.sha256(b"salt:" + salt.encode()).digest(), "big")


def _sha256_step(parent: int, tokens: bytes) -> int:
    h = hashlib.sha256(parent.to_bytes(32, "big"))
    h.update(tokens)
    return int.from_bytes(h.digest(), "big")


HASH_ALGOS: dict[str, HashAlgo] = {
    "xxh3_64": HashAlgo("xxh3_64", 64, _xxh3_64_root, _xxh3_64_step),
    "xxh3_128": HashAlgo("xxh3_128", 128, _xxh3_128_root, _xxh3_128_step),
    "sha256": HashAlgo("sha256", 256, _sha256_root, _sha256_step),
}


def get_hash_algo(name: str) -> HashAlgo:
    from apcsim.errors import ConfigError

    algo = HASH_ALGOS.get(name)
    if algo is None:
        raise ConfigError(f"unknown hash_algo {name!r}; known: {', '.join(HASH_ALGOS)}")
    return algo
