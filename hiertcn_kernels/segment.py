"""Public ragged segment ops: validate, then run the Triton kernel or the reference."""

from __future__ import annotations

from . import reference
from ._backend import triton_ops, use_triton
from ._checks import REDUCES, check_expand, check_segment


def segment_reduce(values, offsets, reduce="mean"):
    """``(T, C)`` rows grouped by ``offsets`` ``(N+1,)`` to ``(N, C)``; ``reduce`` in mean|sum|max.

    Empty segments give zeros; the gradient of ``max`` goes to the first maximal row.
    """
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    check_segment(values, offsets, "values")
    if use_triton(values):
        return triton_ops("segment", values).segment_reduce(values, offsets, reduce)
    return reference.segment_reduce(values, offsets, reduce)


def segment_expand(rows, offsets):
    """``(N, C)`` to ``(T, C)`` with ``out[t] = rows[n]`` for ``offsets[n] <= t < offsets[n+1]``."""
    check_expand(rows, offsets)
    if use_triton(rows):
        return triton_ops("segment", rows).segment_expand(rows, offsets)
    return reference.segment_expand(rows, offsets)
