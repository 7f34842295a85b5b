"""TableView (apcsim.core.block_table) stands in for the tuple copy of a request's block table."""

from collections.abc import Sequence

import numpy as np
import pytest

from apcsim.core.block_table import TableView


def test_it_is_the_tuple_of_the_first_n_ids_whatever_is_appended_later():
    ids = [7, 3, 9]
    view = TableView(ids)
    ids += [4, 5]  # the request allocates more blocks later
    assert view == (7, 3, 9) and (7, 3, 9) == view
    assert view != (7, 3, 9, 4) and view != (7, 3)
    assert len(view) == 3 and list(view) == [7, 3, 9]
    assert view[0] == 7 and view[-1] == 9 and view[1:] == (3, 9)
    with pytest.raises(IndexError):
        view[3]  # appended after the view was taken: not part of it
    with pytest.raises(IndexError):
        view[-4]
    assert hash(view) == hash((7, 3, 9)) and repr(view) == "(7, 3, 9)"
    assert np.array_equal(np.asarray(view, dtype=np.int64), [7, 3, 9])
    assert isinstance(view, Sequence) and 9 in view and 4 not in view


def test_views_compare_by_content_and_chunks_compare_as_tuples():
    from apcsim.core.plan import ScheduledChunk

    a, b = [1, 2, 3], [1, 2, 3, 4]
    assert TableView(a) == TableView(b, 3) and TableView(a) != TableView(b)
    assert TableView(a) != [1, 2, 3]  # as a tuple is not equal to a list
    assert ScheduledChunk("r", 1, 40, TableView(a), True) == ScheduledChunk("r", 1, 40, (1, 2, 3), True)
    assert ScheduledChunk("r", 1, 40, TableView(b), True) != ScheduledChunk("r", 1, 40, (1, 2, 3), True)
