"""Lazy trace prompts (apcsim.core.lazy_prompt) read the tokens an eager array would hold.

The Azure and Mooncake workloads hand out prompts that make their tokens when sliced. Every
slice (across piece and id boundaries, into the Mooncake pad), every window of a window, an index
and `np.asarray` must equal the same read of the prompt made whole the way the workloads made it
before: `RowTokens.row`, and the table rows gathered then the pad appended.
"""

from __future__ import annotations

import numpy as np
import pytest

from apcsim.core.content_ids import ContentIds
from apcsim.core.lazy_prompt import LazyPrompt
from apcsim.workloads import mooncake
from apcsim.workloads._common import UNIQUE_BLOCK, HashedRows, RowTokens, hashed_blocks
from apcsim.workloads.azure import AzureConfig
from apcsim.workloads.base import BuildContext, build_workload
from apcsim.workloads.mooncake import MooncakeConfig, TablePrompt

VOCAB = 32000


def _slices(n: int, rng: np.random.Generator):
    """Slices of a length-n prompt: boundaries of the workloads' pieces, ends, empties, random."""
    edges = [e + d for e in range(0, n + 1, 16) for d in (-1, 0, 1)]
    cuts = sorted({0, 1, n - 1, n, *rng.choice(edges, min(len(edges), 20), replace=False).tolist(),
                   *rng.integers(0, n + 1, 10).tolist()} & set(range(n + 1)))
    out = [(a, b) for a in cuts for b in cuts]
    return out + [(None, None), (-5, None), (None, -3), (n + 7, n + 9), (7, 3)]


def _assert_reads_alike(lazy: LazyPrompt, eager: np.ndarray, rng: np.random.Generator) -> None:
    assert isinstance(lazy, LazyPrompt) and len(lazy) == len(eager)
    for a, b in _slices(len(eager), rng):
        got = lazy[a:b]
        assert got.dtype == np.int32 and not got.flags.writeable
        np.testing.assert_array_equal(got, eager[a:b])
    np.testing.assert_array_equal(np.asarray(lazy), eager)
    mine = np.array(lazy)  # a copy of its own, as of an array
    mine[:] = -1
    np.testing.assert_array_equal(lazy[:], eager)
    assert np.asarray(lazy, dtype=np.int64).dtype == np.int64
    for i in (0, len(eager) - 1, -1, len(eager) // 2):
        assert lazy[i] == eager[i]
    with pytest.raises(IndexError):
        lazy[len(eager)]
    with pytest.raises(ValueError, match="step 1"):
        lazy[::2]
    a, b = len(eager) // 3, len(eager) - 2
    w = lazy.window(a, b)
    np.testing.assert_array_equal(w[:], eager[a:b])
    np.testing.assert_array_equal(w.window(1, 20)[3:], eager[a:b][1:20][3:])


@pytest.mark.parametrize("length", [1, 15, UNIQUE_BLOCK - 1, UNIQUE_BLOCK, UNIQUE_BLOCK + 1, 3 * UNIQUE_BLOCK + 77])
def test_row_prompt_reads_as_its_row(length):
    rows = RowTokens(seed=7, stream=3, vocab_size=VOCAB)
    rng = np.random.default_rng(length)
    for key in (0, 5, 123456):
        _assert_reads_alike(rows.prompt(key, length), rows.row(key, length), rng)


def test_table_prompt_reads_as_its_gathered_rows():
    rng = np.random.default_rng(0)
    table = rng.integers(0, VOCAB, (50, 32), dtype=np.int32)
    rows = rng.integers(0, 50, 9)
    pad = rng.integers(0, VOCAB, 41, dtype=np.int32)
    whole = table[rows].reshape(-1)
    for covered in (1, 31, 32, 33, 200, len(whole)):
        _assert_reads_alike(TablePrompt(table.__getitem__, ContentIds(rows, 32, covered, "t"), None), whole[:covered], rng)
    _assert_reads_alike(TablePrompt(table.__getitem__, ContentIds(rows, 32, len(whole), "t"), pad), np.concatenate([whole, pad]), rng)
    assert TablePrompt(table.__getitem__, ContentIds(rows, 32, len(whole), "t"), pad).nbytes == pad.nbytes


def test_table_prompt_over_hashed_rows_reads_as_whole_rows():
    """With a HashedRows (the Mooncake workload's), a read within one id's row hashes only its
    positions (`HashedRows.columns`): it must give the bits of the whole rows' slice."""
    rng = np.random.default_rng(1)
    span = 64
    table = HashedRows(seed=7, stream=1, length=span, vocab_size=VOCAB)
    ids = rng.integers(-(2**40), 2**40, 7)
    whole = table(ids).reshape(-1)
    for a, b in [(0, span), (span - 3, span), (5, 21), (2 * span + 1, 2 * span + 2)]:
        np.testing.assert_array_equal(table.columns(ids[a // span : a // span + 1], a % span, b - a // span * span).reshape(-1),
                                      whole[a:b])
    pad = rng.integers(0, VOCAB, 13, dtype=np.int32)
    for covered in (1, span - 1, span + 5, len(whole)):
        _assert_reads_alike(TablePrompt(table, ContentIds(ids, span, covered, "t"), None), whole[:covered], rng)
    _assert_reads_alike(TablePrompt(table, ContentIds(ids, span, len(whole), "t"), pad), np.concatenate([whole, pad]), rng)


def test_mooncake_prompts_are_their_ids_hashed_blocks():
    """A Mooncake prompt reads as hashed_blocks over its hash ids (what the workload made up
    front before prompts were lazy), cut at its length, then its pad."""
    cfg = MooncakeConfig(num_requests=60, strict_lengths=False, length_scale=0.25)
    source = mooncake.build(cfg, BuildContext(VOCAB, np.random.default_rng(0), seed=3))
    assert source.count == 60
    for s in map(source.make, range(source.count)):
        ids = s.content_ids
        whole = hashed_blocks(3, mooncake._HASH_STREAM, ids.ids, ids.span, VOCAB).reshape(-1)[: ids.num_tokens]
        np.testing.assert_array_equal(s.prompt_token_ids[: ids.num_tokens], whole)


@pytest.mark.parametrize("cfg", [AzureConfig(num_requests=40),
                                 MooncakeConfig(num_requests=40, strict_lengths=False, length_scale=0.25)],
                         ids=["azure", "mooncake"])
def test_trace_prompts_are_lazy_and_deterministic(cfg):
    def specs():
        return build_workload(cfg, vocab_size=VOCAB, seed_seq=np.random.SeedSequence(3))

    a, b = specs(), specs()
    rng = np.random.default_rng(1)
    for x, y in zip(a, b):
        assert isinstance(x.prompt_token_ids, LazyPrompt)
        assert len(np.asarray(x.prompt_token_ids)) == x.prompt_len
        np.testing.assert_array_equal(np.asarray(x.prompt_token_ids), np.asarray(y.prompt_token_ids))
        _assert_reads_alike(x.prompt_token_ids, np.asarray(y.prompt_token_ids), rng)
