"""Helpers shared by the workload modules: config checks and token generation.

Token ids are opaque to a prefix cache: only equality matters. So synthetic prompts are random
ids, and trace prompts are pseudo-random ids derived from (seed, key) by a hash, which makes equal
keys give equal tokens without storing or coordinating anything.
"""

from __future__ import annotations

import math

import numpy as np

from apcsim.core.content_ids import ContentIds, mix64
from apcsim.core.lazy_prompt import EMPTY_TOKENS, LazyPrompt
from apcsim.errors import ConfigError
from apcsim.mathutil import cdiv


def check_int(cfg, key: str, lo: int) -> int:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"workload.{key} must be an integer >= {lo}, got {value!r}")
    return int(value)


def check_float(cfg, key: str, lo: float, *, inclusive: bool = True) -> float:
    value = getattr(cfg, key)
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= lo if inclusive else value > lo)
    if not ok:
        rule = ">=" if inclusive else ">"
        raise ConfigError(f"workload.{key} must be a finite number {rule} {lo}, got {value!r}")
    return float(value)


def distinct_tokens(rng: np.random.Generator, n: int, vocab_size: int) -> np.ndarray:
    """n token ids, pairwise distinct whenever n <= vocab_size (int32 [n]).

    Put at the first position where prompts diverge, they make the block that straddles the
    shared and the unique part differ between any two requests: independent draws would collide
    with probability ~n^2/(2*vocab), i.e. a false prefix hit in a few percent of runs.
    """
    perm = rng.permutation(vocab_size) if n > 1 else rng.integers(0, vocab_size, 1)
    return perm[np.arange(n) % perm.shape[0]].astype(np.int32)


def readonly(a: np.ndarray) -> np.ndarray:
    """Specs are immutable; views taken after this are read-only too."""
    a.flags.writeable = False
    return a


def hashed_blocks(seed: int, stream: int, keys: np.ndarray, length: int, vocab_size: int) -> np.ndarray:
    """int32 [len(keys), length]: row i depends only on (seed, stream, keys[i]), not on other keys.

    Token p of a key is the top bits of a multilinear hash (lo*a1[p] + hi*a2[p] + b[p]) mod 2^32
    of the mixed 64-bit key, with random per-position multipliers drawn from (seed, stream). For two
    distinct keys each position collides with probability ~1/vocab independently, so even a one-
    token block is distinct in practice. This is ~30x faster than a seeded Generator per key (a
    Generator costs ~50-80 us to create; the Mooncake trace has 43,924 block ids). Everything
    stays in uint32 because numpy's uint64 multiply is not vectorised. Rows are hashed in chunks
    of about `_CHUNK_TOKENS` tokens, so the temporaries stay small (the bundled Mooncake table is
    22.5M tokens: hashed at once, its uint32/float32 temporaries tripled the build's peak memory).
    """
    hashed = HashedRows(seed, stream, length, vocab_size)
    keys = np.asarray(keys, dtype=np.int64)
    out = np.empty((keys.shape[0], length), dtype=np.int32)  # int32 [len(keys), length]
    rows = max(1, _CHUNK_TOKENS // max(length, 1))
    for a in range(0, keys.shape[0], rows):
        out[a : a + rows] = hashed(keys[a : a + rows])
    return out


_CHUNK_TOKENS = 1 << 20


class HashedRows:
    """hashed_blocks a call at a time: `rows(keys)` is hashed_blocks(seed, stream, keys, length,
    vocab_size) (int32 [len(keys), length]), the multipliers drawn once."""

    def __init__(self, seed: int, stream: int, length: int, vocab_size: int) -> None:
        self._mult = block_multipliers(seed, stream, length)
        self._vocab = vocab_size

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        return _hash_keys(self._mult, keys, self._vocab)

    def columns(self, keys: np.ndarray, start: int, stop: int) -> np.ndarray:
        """`self(keys)[:, start:stop]` (int32 [len(keys), stop - start]), hashing those positions
        alone: a token depends on its key and its position only, through the same operations."""
        return _hash_keys(self._mult[start:stop], keys, self._vocab)


def block_multipliers(seed: int, stream: int, length: int) -> np.ndarray:
    """hashed_blocks' per-position multipliers (uint32 [length, 3]), drawn from (seed, stream)."""
    return np.random.default_rng([seed, stream]).integers(0, 2**32, (length, 3), dtype=np.uint32)


def _hash_keys(mult: np.ndarray, keys: np.ndarray, vocab_size: int) -> np.ndarray:
    k = mix64(np.asarray(keys, dtype=np.int64).astype(np.uint64))  # astype wraps negatives
    lo = (k & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (k >> np.uint64(32)).astype(np.uint32)
    s = np.multiply.outer(lo, mult[:, 0])
    s += np.multiply.outer(hi, mult[:, 1])
    s += mult[:, 2]
    # Scale the top 24 bits to [0, vocab) in float32 (exact input; rounding may hit vocab: clip).
    s >>= np.uint32(8)
    f = s.astype(np.float32)
    f *= np.float32(vocab_size / 2**24)
    out = f.astype(np.int32)
    np.minimum(out, vocab_size - 1, out=out)
    return out


UNIQUE_BLOCK = 512  # granularity of unique_tokens; any value works, rows waste < one block


def unique_tokens(seed: int, stream: int, row_keys, lengths, vocab_size: int) -> list[np.ndarray]:
    """Pseudo-random tokens for each row, a function of (seed, stream, row key) only.

    So the first N rows of a trace get the same tokens whatever follows them. Rows are cut into
    UNIQUE_BLOCK-token blocks keyed (row key, block index), hashed in one batch, and each row is a
    contiguous view of the result.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    row_keys = np.asarray(row_keys, dtype=np.int64)
    nb = cdiv(lengths, UNIQUE_BLOCK)
    starts = np.concatenate([[0], np.cumsum(nb)])
    within = np.arange(starts[-1]) - np.repeat(starts[:-1], nb)
    table = readonly(hashed_blocks(seed, stream, _piece_keys(np.repeat(row_keys, nb), within), UNIQUE_BLOCK, vocab_size))
    return [table[starts[i] : starts[i + 1]].reshape(-1)[: lengths[i]] for i in range(lengths.shape[0])]


_ROW_KEY_LIMIT = 1 << 39  # |key| << 24 stays inside int64


def _row_piece_keys(key: int, first: int, stop: int) -> np.ndarray:
    """The keys of pieces [first, stop) of row `key` (int64 [stop - first])."""
    if -_ROW_KEY_LIMIT <= key < _ROW_KEY_LIMIT and 0 <= first <= stop <= 1 << 24:
        # A piece index fills the low 24 bits that the shift leaves zero, so `|` is `+`: one
        # arange instead of three array operations (a request makes these once or twice).
        base = key << 24
        return np.arange(base + first, base + stop, dtype=np.int64)
    return _piece_keys(np.int64(key), np.arange(first, stop, dtype=np.int64))


def _piece_keys(row_key, piece):
    """The key UNIQUE_BLOCK-token piece `piece` of row `row_key` is hashed from (int64; arrays
    broadcast): unique_tokens and RowTokens must agree on it."""
    return (row_key << np.int64(24)) | piece


class RowTokens:
    """`unique_tokens` one row at a time, for a request made when it is due: row(key, length)
    is unique_tokens(seed, stream, [key], [length], vocab)[0], the multipliers drawn once."""

    def __init__(self, seed: int, stream: int, vocab_size: int) -> None:
        self._pieces = HashedRows(seed, stream, UNIQUE_BLOCK, vocab_size)
        # The token table the piece ids index, for content keys: the run's seed is the same for
        # every request of a run, so the stream names the table.
        self._namespace = f"unique_tokens/{stream}"

    def row(self, key: int, length: int) -> np.ndarray:
        """The whole row at once (what `prompt(key, length)` reads as; the tests' reference)."""
        return self.pieces(key, 0, cdiv(length, UNIQUE_BLOCK))[:length]

    def pieces(self, key: int, first: int, stop: int) -> np.ndarray:
        """The UNIQUE_BLOCK-token pieces [first, stop) of row `key`, end to end (read-only)."""
        return readonly(self._pieces(_row_piece_keys(key, first, stop))).reshape(-1)

    def prompt(self, key: int, length: int) -> RowPrompt:
        """`row(key, length)` made a slice at a time, when read."""
        return RowPrompt(self, key, length)

    def content_ids(self, key: int, length: int) -> ContentIds:
        """Row `key`'s first `length` tokens named by their pieces: token p is a function of the
        key of piece p // UNIQUE_BLOCK alone, so the KV cache manager keys the row's blocks from
        the piece keys (apcsim.core.content_ids) without making a token. A row's pieces are its
        own (`unique`): no other row of the table shares one."""
        return ContentIds(_row_piece_keys(key, 0, cdiv(length, UNIQUE_BLOCK)), UNIQUE_BLOCK, length, self._namespace,
                          unique=True)


class RowPrompt(LazyPrompt):
    """Row `key` of a RowTokens as a lazy prompt, which keeps the pieces it made last.

    Making pieces costs ~25 us a call whatever their number (NumPy's per-call overhead), and where
    a row's blocks are keyed from tokens (a block size that does not divide UNIQUE_BLOCK,
    verify_tokens, another hash algorithm) a request reads its first blocks twice (lookup, then
    keying), so the last read's pieces are kept: at most the pieces of one read, for as long as
    the request holds its prompt."""

    __slots__ = ("_rows", "_key", "_first", "_memo")

    def __init__(self, rows: RowTokens, key: int, length: int) -> None:
        super().__init__(length)
        self._rows = rows
        self._key = key
        self._first = 0  # the memo's first piece
        self._memo = EMPTY_TOKENS  # pieces [_first, _first + len / UNIQUE_BLOCK), cut at the row's end

    def _make(self, start: int, stop: int) -> np.ndarray:
        skip = self._first * UNIQUE_BLOCK
        if not (skip <= start and stop <= skip + len(self._memo)):
            self._first = start // UNIQUE_BLOCK
            skip = self._first * UNIQUE_BLOCK
            self._memo = self._rows.pieces(self._key, self._first, cdiv(stop, UNIQUE_BLOCK))[: self.length - skip]
        return self._memo[start - skip : stop - skip]

    def window(self, start: int, stop: int) -> LazyPrompt:
        # A window outlives the request (a parked range holds it): it reads through a RowPrompt of
        # its own, so that it never keeps the request's memo (maybe a whole row) alive.
        return LazyPrompt.window(RowPrompt(self._rows, self._key, self.length), start, stop)

