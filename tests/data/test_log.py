"""InteractionLog and Impressions reject malformed arrays with a message that names the fault."""

import numpy as np
import pytest

from hiertcn.data.log import Impressions, InteractionLog


def arrays(n=4):
    return {
        "user": np.arange(n, dtype=np.int64) % 2,
        "item": np.arange(n, dtype=np.int64),
        "timestamp": np.arange(n, dtype=np.int64) * 10,
    }


def test_valid_log_and_its_views():
    log = InteractionLog(**arrays(), session=np.zeros(4, np.int64), interaction_type=np.ones(4, np.int8))
    assert (len(log), log.n_users, log.n_items) == (4, 2, 4)
    kept = log.select(np.array([True, False, True, True]))
    np.testing.assert_array_equal(kept.item, [0, 2, 3])
    np.testing.assert_array_equal(kept.session, [0, 0, 0])
    assert kept.interaction_type.dtype == np.int8


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            {
                "user": np.zeros(0, np.int64),
                "item": np.zeros(0, np.int64),
                "timestamp": np.zeros(0, np.int64),
            },
            ValueError,
            "empty",
        ),
        ({"item": [0, 1, 2, 3]}, TypeError, "item must be a 1-D numpy array"),
        ({"timestamp": np.zeros((4, 1), np.int64)}, TypeError, "timestamp must be a 1-D numpy array"),
        ({"item": np.arange(4.0)}, TypeError, "item must have an integer dtype"),
        ({"session": np.zeros(3, np.int64)}, ValueError, "session has length 3, expected 4"),
        ({"timestamp": np.array([5, -1, 7, 9])}, ValueError, "negative"),
        ({"user_names": np.array(["a"])}, ValueError, "user codes out of range"),
        (
            {"item_names": np.array(["a", "b", "c", "d", "e"]), "item": np.array([0, 1, 2, -1])},
            ValueError,
            "item codes out of range",
        ),
    ],
)
def test_bad_log_is_rejected(change, error, match):
    with pytest.raises(error, match=match):
        InteractionLog(**{**arrays(), **change})


def test_select_needs_a_boolean_mask_per_row():
    log = InteractionLog(**arrays())
    with pytest.raises(ValueError, match="boolean mask"):
        log.select(np.array([0, 1, 1, 0]))
    with pytest.raises(ValueError, match="boolean mask"):
        log.select(np.ones(3, bool))


def impression_arrays():
    return {
        "user": np.array([1, 2]),
        "year": np.array([2016, 2016]),
        "week": np.array([3, 4]),
        "item_ptr": np.array([0, 2, 3]),
        "items": np.array([7, 8, 9]),
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"week": np.array([3])}, "same length"),
        ({"item_ptr": np.array([0, 3])}, "length M\\+1"),
        ({"item_ptr": np.array([1, 2, 3])}, "start at 0"),
        ({"item_ptr": np.array([0, 2, 2])}, "end at len\\(items\\)"),
        ({"item_ptr": np.array([0, 4, 3]), "items": np.array([7, 8, 9])}, "non-decreasing"),
    ],
)
def test_bad_impressions_are_rejected(change, match):
    assert len(Impressions(**impression_arrays())) == 2
    with pytest.raises(ValueError, match=match):
        Impressions(**{**impression_arrays(), **change})
