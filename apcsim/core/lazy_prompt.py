"""A prompt whose tokens are made when read, a slice at a time.

A trace workload knows each prompt's tokens as a function of a few numbers (a row key, a list of
table rows), so it need not make them when the request arrives: most are never read. Keys of
prompts named by content ids come from the ids (apcsim.core.content_ids), and a parked range of
pending keys (apcsim.core.pending_keys) holds a window of the prompt instead of a copy. What does
read tokens (token keys, a straddling decode block, `verify_tokens`, the engine) slices the
prompt and gets just those tokens.

A `LazyPrompt` stands where `RequestSpec.prompt_token_ids` holds an array: `len()`, a slice with
step 1 (a read-only int32 array, maybe a view of what the prompt keeps), and `np.asarray(p)`
(all tokens) behave as the array's; `np.array(p)` is a writable copy. Invariant: slicing is a
pure function of the object, so equal slices are equal tokens however often and in whatever
order they are read.
"""

from __future__ import annotations

import numpy as np

EMPTY_TOKENS = np.empty(0, dtype=np.int32)  # the read-only empty slice (int32 [0])
EMPTY_TOKENS.flags.writeable = False


class LazyPrompt:
    """Tokens [0, len) made by `_make(start, stop)` on demand (subclasses define it)."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        if length < 0:
            raise ValueError(f"a prompt has length >= 0, got {length}")
        self.length = length

    def _make(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop), 0 <= start < stop <= len (int32 [stop - start])."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of tokens this prompt holds for good (its own arrays; not what a subclass keeps
        of its last read, nor tables shared with other prompts), for callers that size an
        array's `nbytes`."""
        return 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.length)
            if step != 1:
                raise ValueError(f"a lazy prompt is read in slices of step 1, got {step}")
            if stop <= start:
                return EMPTY_TOKENS
            out = self._make(start, stop)
            out.flags.writeable = False
            return out
        i = index.__index__()
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"token {index} of a {self.length}-token prompt")
        return self._make(i, i + 1)[0]

    def __array__(self, dtype=None, copy=None):
        out = self[:]  # read-only, maybe a view of what the prompt keeps
        if dtype is not None and dtype != out.dtype:
            return out.astype(dtype)
        return out.copy() if copy else out

    def window(self, start: int, stop: int) -> LazyPrompt:
        """Tokens [start, stop) as a lazy prompt of their own (nothing is made now)."""
        start, stop, _ = slice(start, stop).indices(self.length)
        return _Window(self, start, max(stop, start))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length})"


class _Window(LazyPrompt):
    __slots__ = ("_base", "_offset")

    def __init__(self, base: LazyPrompt, start: int, stop: int) -> None:
        super().__init__(stop - start)
        self._base = base
        self._offset = start

    def _make(self, start: int, stop: int) -> np.ndarray:
        return self._base[self._offset + start : self._offset + stop]
