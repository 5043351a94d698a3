"""Index arithmetic on ragged (CSR) layouts, in numpy: one home for the data pipeline and the batchers."""

from __future__ import annotations

import numpy as np


def offsets(lengths) -> np.ndarray:
    """``(n+1,)`` int64 offsets of segments with these ``lengths``: ``0, l0, l0+l1, ...``."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], ends[i])`` for every i, int64."""
    lengths = ends - starts
    ptr = offsets(lengths)
    return np.arange(ptr[-1], dtype=np.int64) + np.repeat(starts - ptr[:-1], lengths)
