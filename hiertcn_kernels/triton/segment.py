"""Triton kernels for the ragged per-segment ops: ``segment_reduce`` and ``segment_expand``.

Tiling. Every launch works on *pieces*: consecutive row ranges given by an
offsets array (``ptr``), at most ``chunk`` rows each. A program owns a 3-D tile
``(BLOCK_N pieces, BLOCK_T rows, BLOCK_C channels)`` and walks down its pieces
``BLOCK_T`` rows at a time, so a program's trip count is the longest piece it
owns, not the batch. The host picks one of two tile shapes from the length
distribution (one host sync for the longest segment; splitting adds one per level):

- *narrow* ``(BLOCK_N, 1, C)``: when every segment is short (real sessions:
  1..20 items, or all length 1). Many segments per program, one row of each per
  step: a step loads ``BLOCK_N`` whole rows, and length-1 batches need one step.
- *wide* ``(1, BLOCK_T, C)``: when some segment is long. One piece per program,
  contiguous ``BLOCK_T``-row tiles. Segments longer than ``chunk`` (chosen from
  the row count so there are enough programs to fill the GPU) are cut into
  pieces; the reduce writes one fp32 (fp64) partial per piece and the partials are
  reduced again, in piece order, by the same kernel with ``ptr`` = pieces per
  segment (a few 100k-row segments: two or three short levels). No atomics:
  every output element is written by exactly one program, so results are
  deterministic to the bit.

Block sizes are constexpr per dtype/shape class; segment and row counts are
runtime arguments excluded from specialisation, so a new batch size never
recompiles.

Backward. ``segment_reduce``'s gradient is a broadcast of ``grad_out`` over each
segment (scaled by ``1/len`` for mean, masked to the first maximal row for max);
``segment_expand``'s gradient is a segment sum. For max the forward also stores
the first-argmax row ``(N, C)`` when a gradient is needed: writing it costs
``N*C`` indices, recomputing it would re-read all ``T*C`` values. Each backward
is the adjoint op applied as an autograd function (a reduce's is a broadcast, a
broadcast's a reduce, or a gather for max), so the gradients are differentiable
in turn: double backward (``create_graph=True``) works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._backend import interpreting, launch_device
from .._checks import offsets_facts

_SUM, _MEAN, _MAX = 0, 1, 2
_REDUCE_CODES = {"sum": _SUM, "mean": _MEAN, "max": _MAX}


@dataclass(frozen=True)
class _Tiling:
    narrow_pieces: int  # BLOCK_N of the narrow tile
    narrow_max_len: int  # longest segment the narrow tile takes
    wide_rows: int  # BLOCK_T of the wide tile
    max_channels: int  # cap on BLOCK_C
    target_programs: int  # chunk = rows / target_programs, clamped to [min_chunk, max_chunk]
    min_chunk: int
    max_chunk: int
    narrow_warps: int  # 8 for the narrow tile keeps max's value + argmax accumulators under ~100 registers
    wide_warps: int

    @property
    def narrow(self) -> tuple[int, int, int]:
        """(BLOCK_N, BLOCK_T, num_warps) of the narrow tile."""
        return self.narrow_pieces, 1, self.narrow_warps

    @property
    def wide(self) -> tuple[int, int, int]:
        return 1, self.wide_rows, self.wide_warps


# GPU: 32 rows x 128 channels per step. Interpreter: tiny tiles so small tests cover every path.
_GPU_TILING = _Tiling(32, 32, 32, 128, 1024, 128, 4096, 8, 4)
_INTERPRETER_TILING = _Tiling(4, 4, 4, 16, 4, 8, 64, 1, 1)


def _tiling() -> _Tiling:
    return _INTERPRETER_TILING if interpreting() else _GPU_TILING


@triton.jit
def _piece_rows(ptr, piece, in_range):
    start = tl.load(ptr + piece, mask=in_range, other=0).to(tl.int64)
    end = tl.load(ptr + piece + 1, mask=in_range, other=0).to(tl.int64)
    return start, (end - start).to(tl.int32)  # int32 lengths keep the loop and row indices narrow


@triton.jit(do_not_specialize=["n_pieces"])
def _segment_reduce_kernel(
    src, stride_src_t, stride_src_c,
    src_idx,  # (rows, C) argmax rows of ``src`` when it holds partial maxima (HAS_SRC_IDX)
    ptr,  # (n_pieces + 1,) row offsets of the pieces
    count_ptr,  # (n_pieces + 1,) offsets giving the true segment lengths: mean divisor, empty test
    out, out_idx,  # (n_pieces, C) contiguous; out_idx only when STORE_IDX
    n_pieces, n_channels,
    REDUCE: tl.constexpr, HAS_SRC_IDX: tl.constexpr, STORE_IDX: tl.constexpr,  # REDUCE: 0 sum, 1 mean, 2 max
    ACC_DTYPE: tl.constexpr, IDX_DTYPE: tl.constexpr,  # IDX_DTYPE: argmax rows, int32 below 2**31 rows
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    piece = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_range = piece < n_pieces
    chan_ok = chan < n_channels
    start, length = _piece_rows(ptr, piece, in_range)
    step = tl.arange(0, BLOCK_T)

    # Accumulate per (piece, row lane, channel) and combine the lanes once at the end:
    # no cross-thread reduction inside the loop.
    if REDUCE == 2:
        lanes_max = tl.full((BLOCK_N, BLOCK_T, BLOCK_C), float("-inf"), ACC_DTYPE)
        lanes_row = tl.full((BLOCK_N, BLOCK_T, BLOCK_C), -1, IDX_DTYPE)
        first_row = start.to(IDX_DTYPE)
    else:
        lanes = tl.zeros((BLOCK_N, BLOCK_T, BLOCK_C), ACC_DTYPE)
    for j in range(0, tl.max(length), BLOCK_T):
        local = j + step  # (BLOCK_T,) row within the piece
        row = start[:, None, None] + local[None, :, None]
        mask = (local[None, :, None] < length[:, None, None]) & chan_ok[None, None, :]
        offs = row * stride_src_t + chan.to(tl.int64)[None, None, :] * stride_src_c  # strided: C*T may pass 2^31
        if REDUCE == 2:
            v = tl.load(src + offs, mask=mask, other=float("-inf")).to(ACC_DTYPE)
            # A lane moves only on a strict increase (or its first row): it keeps its first maximum. NaN is
            # the maximum, as in torch: the first NaN takes the lane (v != v), and nothing is greater than it.
            take = mask & ((v > lanes_max) | (lanes_row < 0) | ((v != v) & (lanes_max == lanes_max)))  # noqa: PLR0124
            if HAS_SRC_IDX:
                arg_row = tl.load(src_idx + row * n_channels + chan[None, None, :], mask=take, other=0)
            else:
                arg_row = first_row[:, None, None] + local[None, :, None]
            lanes_max = tl.where(take, v, lanes_max)
            lanes_row = tl.where(take, arg_row.to(IDX_DTYPE), lanes_row)
        else:
            lanes += tl.load(src + offs, mask=mask, other=0.0).to(ACC_DTYPE)

    if REDUCE == 2:
        # tl.max may skip NaN on a GPU (fmax): a lane holding NaN makes the result NaN explicitly.
        lane_nan = (lanes_max != lanes_max) & (lanes_row >= 0)  # noqa: PLR0124 (NaN test; tl has no isnan)
        any_nan = tl.max(lane_nan.to(tl.int32), axis=1) > 0
        acc = tl.where(any_nan, float("nan"), tl.max(lanes_max, axis=1))
        # The first maximal row overall: the smallest row among the lanes that reached the maximum.
        if IDX_DTYPE == tl.int64:
            no_row = 9223372036854775807
        else:
            no_row = 2147483647
        reached = ((lanes_max == acc[:, None, :]) | (lane_nan & any_nan[:, None, :])) & (lanes_row >= 0)
        best = tl.min(tl.where(reached, lanes_row, no_row), axis=1)
    else:
        acc = tl.sum(lanes, axis=1)

    _, count = _piece_rows(count_ptr, piece, in_range)
    if REDUCE == 1:
        acc = acc / tl.maximum(count, 1).to(ACC_DTYPE)[:, None]
    if REDUCE == 2:
        acc = tl.where(count[:, None] > 0, acc, 0.0)
    out_offs = piece.to(tl.int64)[:, None] * n_channels + chan[None, :]
    out_mask = in_range[:, None] & chan_ok[None, :]
    tl.store(out + out_offs, acc.to(out.dtype.element_ty), mask=out_mask)
    if STORE_IDX:
        tl.store(out_idx + out_offs, best.to(out_idx.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=["n_pieces"])
def _segment_broadcast_kernel(
    src, stride_src_n, stride_src_c,  # (segments, C): the rows to broadcast (grad_out for the reduce backward)
    argmax,  # (segments, C) contiguous first-argmax rows (MODE max)
    ptr,  # (n_pieces + 1,) row offsets of the pieces
    piece_seg,  # (n_pieces,) segment of each piece (HAS_PIECE_SEG; else piece == segment)
    seg_ptr,  # (segments + 1,) segment offsets: the mean divisor
    out,  # (rows, C) contiguous
    n_pieces, n_channels,
    MODE: tl.constexpr, HAS_PIECE_SEG: tl.constexpr,  # MODE: 0 copy, 1 divide by the length, 2 argmax only
    ACC_DTYPE: tl.constexpr, IDX_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    piece = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_range = piece < n_pieces
    chan_ok = chan < n_channels
    start, length = _piece_rows(ptr, piece, in_range)
    if HAS_PIECE_SEG:
        seg = tl.load(piece_seg + piece, mask=in_range, other=0).to(tl.int64)
    else:
        seg = piece.to(tl.int64)
    seg_mask = in_range[:, None] & chan_ok[None, :]
    rows = tl.load(src + seg[:, None] * stride_src_n + chan.to(tl.int64)[None, :] * stride_src_c, mask=seg_mask,
                   other=0.0)
    if MODE == 1:
        _, seg_len = _piece_rows(seg_ptr, seg, in_range)
        rows = (rows.to(ACC_DTYPE) / tl.maximum(seg_len, 1).to(ACC_DTYPE)[:, None]).to(rows.dtype)
    if MODE == 2:
        first = tl.load(argmax + seg[:, None] * n_channels + chan[None, :], mask=seg_mask, other=-1).to(IDX_DTYPE)
        first_row = start.to(IDX_DTYPE)
    step = tl.arange(0, BLOCK_T)
    for j in range(0, tl.max(length), BLOCK_T):
        local = j + step
        row = start[:, None, None] + local[None, :, None]
        mask = (local[None, :, None] < length[:, None, None]) & chan_ok[None, None, :]
        tile = tl.broadcast_to(rows[:, None, :], (BLOCK_N, BLOCK_T, BLOCK_C))
        if MODE == 2:
            is_first = (first_row[:, None, None] + local[None, :, None]) == first[:, None, :]
            tile = tl.where(is_first, tile, 0.0)
        tl.store(out + row * n_channels + chan[None, None, :], tile.to(out.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side


def _channel_block(n_channels: int, tiling: _Tiling) -> int:
    return min(triton.next_power_of_2(n_channels), tiling.max_channels)


def _chunk(rows: int, tiling: _Tiling) -> int:
    """Rows per piece of a long segment: enough pieces to fill the GPU, not so many partials."""
    target = triton.next_power_of_2(max(triton.cdiv(rows, tiling.target_programs), 1))
    return min(max(target, tiling.min_chunk), tiling.max_chunk)


def _longest(ptr: torch.Tensor) -> int:
    """The longest segment: the one host sync on the common (short segment) path, read with the
    argument checks' (remembered per offsets tensor)."""
    return offsets_facts(ptr).longest


def _split(ptr: torch.Tensor, chunk: int):
    """Cut every segment into ``chunk``-row pieces (an empty segment keeps one empty piece).

    Returns ``piece_rows`` (P+1,) row offsets, ``piece_ptr`` (N+1,) piece offsets per segment,
    ``piece_seg`` (P,) segment of each piece.
    """
    ptr = ptr.long()
    n = ptr.numel() - 1
    pieces = ((ptr.diff() + chunk - 1) // chunk).clamp(min=1)
    piece_ptr = torch.nn.functional.pad(pieces.cumsum(0), (1, 0))
    n_pieces = int(piece_ptr[-1])
    piece_seg = torch.repeat_interleave(torch.arange(n, device=ptr.device), pieces, output_size=n_pieces)
    within = torch.arange(n_pieces, device=ptr.device) - piece_ptr[piece_seg]
    piece_rows = torch.cat([ptr[piece_seg] + within * chunk, ptr[-1:]])
    return piece_rows, piece_ptr, piece_seg


def _acc_dtype(dtype: torch.dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _idx_dtype(idx: torch.Tensor | None):
    return tl.int64 if idx is not None and idx.dtype == torch.int64 else tl.int32


def _launch_reduce(src, src_idx, ptr, count_ptr, out, out_idx, code, tile, tiling):
    block_n, block_t, num_warps = tile
    n, c = out.shape
    block_c = _channel_block(c, tiling)
    grid = (triton.cdiv(n, block_n), triton.cdiv(c, block_c))
    with launch_device(src):
        _segment_reduce_kernel[grid](
            src, src.stride(0), src.stride(1),
            src if src_idx is None else src_idx,
            ptr, count_ptr,
            out, out if out_idx is None else out_idx,
            n, c,
            REDUCE=code, HAS_SRC_IDX=src_idx is not None, STORE_IDX=out_idx is not None,
            ACC_DTYPE=_acc_dtype(src.dtype)[1], IDX_DTYPE=_idx_dtype(out_idx),
            BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps,
        )


def _reduce_levels(src, src_idx, ptr, counts, reduce, out_dtype, idx_dtype):
    """Reduce ``src`` rows grouped by ``ptr`` into ``(N, C)`` of ``out_dtype``, plus argmax rows if ``idx_dtype``.

    ``counts`` are the offsets of the original segments (mean divisor, empty test); ``src`` is the
    input at the first level and per-piece partials (with their argmax rows ``src_idx``) after that.
    """
    tiling = _tiling()
    n, c = ptr.numel() - 1, src.shape[1]
    code = _REDUCE_CODES[reduce]
    chunk = _chunk(src.shape[0], tiling)
    longest = _longest(ptr)
    if longest <= chunk:
        out = torch.empty(n, c, device=src.device, dtype=out_dtype)
        out_idx = None if idx_dtype is None else torch.empty(n, c, device=src.device, dtype=idx_dtype)
        tile = tiling.narrow if longest <= tiling.narrow_max_len else tiling.wide
        _launch_reduce(src, src_idx, ptr, counts, out, out_idx, code, tile, tiling)
        return out, out_idx
    piece_rows, piece_ptr, _ = _split(ptr, chunk)
    n_pieces = piece_rows.numel() - 1
    acc_dtype = _acc_dtype(src.dtype)[0]
    partial = torch.empty(n_pieces, c, device=src.device, dtype=acc_dtype)
    partial_idx = None if idx_dtype is None else torch.empty(n_pieces, c, device=src.device, dtype=idx_dtype)
    partial_code = _SUM if code == _MEAN else code
    _launch_reduce(src, src_idx, piece_rows, piece_rows, partial, partial_idx, partial_code, tiling.wide, tiling)
    return _reduce_levels(partial, partial_idx, piece_ptr, counts, reduce, out_dtype, idx_dtype)


def _reduce_forward(values, offsets, reduce, want_idx):
    """``(out, argmax rows or None)``; argmax rows only for max when ``want_idx``."""
    n, c = offsets.numel() - 1, values.shape[1]
    idx_dtype = (torch.int32 if values.shape[0] < 2**31 else torch.int64) if want_idx else None
    if n == 0 or c == 0 or values.shape[0] == 0:
        idx = None if idx_dtype is None else values.new_zeros(n, c, dtype=idx_dtype)
        return values.new_zeros(n, c), idx
    return _reduce_levels(values, None, offsets, offsets, reduce, values.dtype, idx_dtype)


def _broadcast(src, offsets, total, mode, argmax=None):
    """``out[t] = src[n]`` over each segment (``mode`` mean: divided by its length; max: only at ``argmax``)."""
    tiling = _tiling()
    n, c = src.shape
    out = torch.empty(total, c, device=src.device, dtype=src.dtype)
    if n == 0 or c == 0 or total == 0:
        return out.zero_()
    chunk = _chunk(total, tiling)
    longest = _longest(offsets)
    if longest <= tiling.narrow_max_len:
        ptr, piece_seg, tile = offsets, None, tiling.narrow
    elif longest <= chunk:
        ptr, piece_seg, tile = offsets, None, tiling.wide
    else:
        ptr, _, piece_seg = _split(offsets, chunk)
        tile = tiling.wide
    block_n, block_t, num_warps = tile
    block_c = _channel_block(c, tiling)
    grid = (triton.cdiv(ptr.numel() - 1, block_n), triton.cdiv(c, block_c))
    with launch_device(src):
        _segment_broadcast_kernel[grid](
            src, src.stride(0), src.stride(1),
            src if argmax is None else argmax,
            ptr, ptr if piece_seg is None else piece_seg, offsets,
            out, ptr.numel() - 1, c,
            MODE=mode, HAS_PIECE_SEG=piece_seg is not None,
            ACC_DTYPE=_acc_dtype(src.dtype)[1], IDX_DTYPE=_idx_dtype(argmax),
            BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps,
        )
    return out


class SegmentReduceFunction(torch.autograd.Function):
    """The reduce; its backward is :class:`SegmentBroadcastFunction` (the adjoint), itself
    differentiable, so double backward (``create_graph=True``) works."""

    @staticmethod
    def forward(ctx, values, offsets, reduce):
        code = _REDUCE_CODES[reduce]
        out, argmax = _reduce_forward(values, offsets, reduce, want_idx=code == _MAX and ctx.needs_input_grad[0])
        ctx.reduce, ctx.total = reduce, values.shape[0]
        ctx.save_for_backward(offsets, argmax)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offsets, argmax = ctx.saved_tensors
        return SegmentBroadcastFunction.apply(grad_out, offsets, ctx.total, ctx.reduce, argmax), None, None


class SegmentBroadcastFunction(torch.autograd.Function):
    """``out[t] = rows[n]`` over segment ``n`` (``mean``: divided by its length; ``max``: only at the
    ``argmax`` row, zero elsewhere): ``segment_expand`` for ``sum``, and the adjoint of
    ``segment_reduce(reduce)``, which is its backward."""

    @staticmethod
    def forward(ctx, rows, offsets, total, reduce, argmax):
        ctx.reduce = reduce
        ctx.save_for_backward(offsets, argmax)
        return _broadcast(rows, offsets, total, _REDUCE_CODES[reduce], argmax)

    @staticmethod
    def backward(ctx, grad):
        offsets, argmax = ctx.saved_tensors
        if ctx.reduce == "max":
            return _gather_argmax(grad, offsets, argmax), None, None, None, None
        return SegmentReduceFunction.apply(grad, offsets, ctx.reduce), None, None, None, None


def _gather_argmax(grad, offsets, argmax):
    """``grad`` at each segment's argmax rows, zero for empty segments (torch ops: only double backward
    of max comes here)."""
    if grad.shape[0] == 0:
        return grad.new_zeros(argmax.shape)
    empty = (offsets.diff() == 0)[:, None]
    return grad.gather(0, argmax.long().masked_fill(empty, 0)).masked_fill(empty, 0.0)


def segment_reduce(values, offsets, reduce="mean"):
    """Arguments as validated by ``hiertcn_kernels.segment.segment_reduce``."""
    return SegmentReduceFunction.apply(values, offsets.contiguous(), reduce)


def segment_expand(rows, offsets):
    """Arguments as validated by ``hiertcn_kernels.segment.segment_expand``."""
    return SegmentBroadcastFunction.apply(rows, offsets.contiguous(), offsets_facts(offsets).last, "sum", None)
