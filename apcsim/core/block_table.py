"""A plan's block table without a copy: the first `n` ids of a request's `block_ids` list.

Plans and the decode cohort record a request's block table as it stands at a step. Copying the
list into a tuple each time cost O(table) per chunk per step: on the bundled Mooncake trace 48k
chunks copied 29M ids (tables of ~600 blocks), ~5 % of the run. A view costs O(1) and stays
exact because of this invariant of the serving core:

    A request's `block_ids` list only grows while the request holds its blocks (allocation and
    prefix hits append to it), and when the blocks are freed the request gets a new empty list
    (`KVCacheManager.free`); nothing else writes to it. So its first n entries never change.

`TableView` behaves as the tuple of those ids wherever a plan's consumers use one: length,
indexing, slicing (which gives a tuple), iteration, `np.asarray`, equality with tuples and with
other views, hashing and repr.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np


class TableView:
    __slots__ = ("_ids", "_n")

    def __init__(self, ids: list[int], n: int | None = None) -> None:
        """The first `n` (default: all, as of now) of `ids`, a request's growing block list."""
        self._ids = ids
        self._n = len(ids) if n is None else n

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        return islice(self._ids, self._n)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self._ids[: self._n][i])
        n = self._n
        if not -n <= i < n:
            raise IndexError("block table index out of range")
        return self._ids[i if i >= 0 else n + i]

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(self._ids[: self._n])

    def __eq__(self, other) -> bool:
        if isinstance(other, TableView):
            return self._n == other._n and (self._ids is other._ids or self.as_tuple() == other.as_tuple())
        if isinstance(other, tuple):
            return self._n == len(other) and self.as_tuple() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return repr(self.as_tuple())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.array(self._ids[: self._n], dtype=dtype)


Sequence.register(TableView)
