import numpy as np

from hiertcn._ragged import offsets, ranges


def test_offsets_and_ranges():
    assert offsets([2, 0, 3]).tolist() == [0, 2, 2, 5] and offsets([]).tolist() == [0]
    assert offsets(np.array([1, 4])).dtype == np.int64
    got = ranges(np.array([5, 9, 0]), np.array([7, 9, 3]))  # an empty range in the middle
    assert got.tolist() == [5, 6, 0, 1, 2] and got.dtype == np.int64
    assert ranges(np.array([3]), np.array([3])).tolist() == []
