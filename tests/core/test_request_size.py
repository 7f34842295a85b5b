"""A Request stays small: CPython (3.11) shares one key table among the instance dicts of a class
only while it holds fewer than 30 attributes; from the 30th on every Request (tens of thousands wait in an overloaded run) carries
a dict of its own, ~1,600 bytes instead of ~300 (a third field for the cohort's finish entry
once added 50 MiB to the 100k-request benchmark's peak). Pack new per-request state into an
existing field or a small object rather than adding attributes past the limit."""

import sys

import numpy as np

from apcsim.core.request import Request, RequestSpec

MAX_SHARED = 29  # CPython 3.11: a 30th attribute unshares the dict (288 -> 1,584 bytes here)


def test_a_request_has_at_most_29_attributes():
    spec = RequestSpec(request_id="r", prompt_token_ids=np.zeros(4, dtype=np.int32), output_len=3)
    r = Request(spec=spec, index=0)
    assert len(vars(r)) <= MAX_SHARED, sorted(vars(r))
    if sys.implementation.name == "cpython":
        other = Request(spec=spec, index=1)
        assert sys.getsizeof(vars(other)) < 600  # its values only: the keys are shared
