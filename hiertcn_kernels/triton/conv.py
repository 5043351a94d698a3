"""Fused Triton kernels for the varlen dilated causal conv and the TCN block.

Layout: every input is handled as packed rows ``(T, C)``; a padded ``(B, L, C)``
batch is the packed case with sequences starting every ``L`` rows. Each row
carries ``seq_start[t]`` (int32, built on the host), so a tile may straddle any
number of sequence boundaries and still be exact:

- forward, tap ``k`` of row ``t`` reads row ``t - s_k`` (``s_k = (K-1-k)*dilation``)
  only if ``t - s_k >= seq_start[t]``;
- backward, ``dx[t]`` takes tap ``k`` of row ``u = t + s_k`` only if ``u < T`` and
  ``seq_start[u] <= t`` (i.e. ``u`` is in ``t``'s sequence).

Launches: one forward, one backward.

- forward, ``_fwd_kernel``: conv + bias + activation + residual, and for ``gated``
  the 1x1 output projection + bias.
- backward, ``_bwd_kernel``: one program per chunk of rows ``[r0, r1)`` (two to four per
  SM on GPU, ``_bwd_programs_per_sm``), three phases:

  1. (relu/gated) recompute the pre-activation from ``x`` (only the inputs are saved) and
     write the pre-activation gradient ``da`` to the program's private window, for its own
     rows *and* the halo ``[r1, halo_end)``: ``dx[t]`` reads ``da`` up to ``(K-1)*dilation``
     rows ahead, which belong to the next chunk. The halo stops at the end of the sequence
     straddling ``r1`` (the program counts the rows past ``r1`` whose ``seq_start`` is before
     it: a prefix, as ``seq_start`` is sorted), so with short sessions it is a few rows
     whatever the dilation. Own rows also get the residual part of ``dx`` (relu)
     and the gate output ``h`` (gated). A ``tl.debug_barrier()`` (CTA barrier: the program's
     global writes are visible to all its threads after it) closes the phase. For the plain
     conv there is no phase 1: ``da`` is ``dy``.
  2. ``dx`` for own rows: the transposed conv of ``da`` read from the window, plus the residual.
  3. ``x_shifted^T @ da`` and column sums over the chunk (conv weight and bias) and, for
     ``gated``, ``h^T @ dy`` and column sums (output projection), each tile accumulated over
     the whole chunk in registers and stored once to ``(n_chunks, ...)`` fp32 partials.

  Deterministic: programs never share a written byte (private windows, disjoint rows,
  one partial slot each), there are no atomics, and ``torch.sum`` over the chunk axis
  reduces the partials in a fixed order: the same inputs give the same bits.

  Cost model: the halo recompute is ``(halo_end - r1) / (r1 - r0)`` of phase 1, at most
  ``(K-1)*dilation / chunk rows`` (and ``_chunk_rows`` keeps chunks at least one halo long);
  the window is ``n_chunks * (chunk rows + halo)`` rows of ``da``; the partials are
  ``n_chunks * K * C_in * C_out`` fp32 (plus ``n_chunks * H * C`` for gated), read once by
  the sum.

Dots accumulate in fp32; outputs, gradients and the ``da`` window / ``h`` are in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreting, launch_device

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _tanh(x):
    # No libdevice in the interpreter; tanh(x) = 2 * sigmoid(2x) - 1 works on both.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _shifted_x(x_ptr, rows, row_ok, start, shift, ci, ci_ok, C_in):
    """The ``(rows, ci)`` tile of ``x`` shifted back by ``shift`` rows; rows that would fall before
    their sequence's ``start`` read as 0."""
    src = rows - shift
    src_ok = row_ok & (src >= start)
    return tl.load(x_ptr + src.to(tl.int64)[:, None] * C_in + ci[None, :],
                   mask=src_ok[:, None] & ci_ok[None, :], other=0.0)


@triton.jit
def _conv_acc(acc, x_ptr, wt_ptr, rows, row_ok, start, cols, col_ok, C_in, C_out, dilation,
              K: tl.constexpr, BLOCK_I: tl.constexpr, DOT_PREC: tl.constexpr):
    """``acc += sum_k x[rows - s_k] @ wt[k][:, cols]``, rows before their sequence start read as 0."""
    for k in range(K):
        for i0 in range(0, C_in, BLOCK_I):
            ci = i0 + tl.arange(0, BLOCK_I)
            ci_ok = ci < C_in
            xt = _shifted_x(x_ptr, rows, row_ok, start, (K - 1 - k) * dilation, ci, ci_ok, C_in)
            wt = tl.load(wt_ptr + (k * C_in + ci[:, None]) * C_out + cols[None, :],
                         mask=ci_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tl.dot(xt, wt, acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def _gated_preact(x_ptr, wt_ptr, b_ptr, rows, row_ok, start, C_in, H, dilation,
                  K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PREC: tl.constexpr):
    """Both halves of the gated pre-activation, ``(BLOCK_T, BLOCK_H)`` each, x loaded once."""
    hh = tl.arange(0, BLOCK_H)
    h_ok = hh < H
    acc_t = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for k in range(K):
        for i0 in range(0, C_in, BLOCK_I):
            ci = i0 + tl.arange(0, BLOCK_I)
            ci_ok = ci < C_in
            xt = _shifted_x(x_ptr, rows, row_ok, start, (K - 1 - k) * dilation, ci, ci_ok, C_in)
            w_off = (k * C_in + ci[:, None]) * (2 * H) + hh[None, :]
            w_mask = ci_ok[:, None] & h_ok[None, :]
            acc_t = tl.dot(xt, tl.load(wt_ptr + w_off, mask=w_mask, other=0.0), acc_t, input_precision=DOT_PREC)
            acc_s = tl.dot(xt, tl.load(wt_ptr + w_off + H, mask=w_mask, other=0.0), acc_s, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc_t += tl.load(b_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
        acc_s += tl.load(b_ptr + H + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    return acc_t, acc_s


@triton.jit
def _fwd_kernel(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, bout_ptr, y_ptr, T, C_in, C_out, dilation,
                K: tl.constexpr, RELU: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                HAS_OUT_BIAS: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
                DOT_PREC: tl.constexpr):
    """Plain conv or RELU block: grid (row tiles, out-channel tiles). GATED block: grid (row tiles, 1)."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    start = tl.load(start_ptr + rows, mask=row_ok, other=0)
    rows64 = rows.to(tl.int64)
    if GATED:
        H = C_out // 2
        a_t, a_s = _gated_preact(x_ptr, wt_ptr, b_ptr, rows, row_ok, start, C_in, H, dilation,
                                 K, HAS_BIAS, BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)
        h = (_tanh(a_t) * tl.sigmoid(a_s)).to(y_ptr.dtype.element_ty)
        hh = tl.arange(0, BLOCK_O)
        for c0 in range(0, C_in, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            cc_ok = cc < C_in
            # out_weight is (C, H): the (BLOCK_O, BLOCK_C) tile of its transpose.
            wo = tl.load(wout_ptr + cc[None, :] * H + hh[:, None], mask=(hh < H)[:, None] & cc_ok[None, :], other=0.0)
            mask = row_ok[:, None] & cc_ok[None, :]
            y = tl.load(x_ptr + rows64[:, None] * C_in + cc[None, :], mask=mask, other=0.0).to(tl.float32)
            y = tl.dot(h, wo, y, input_precision=DOT_PREC)
            if HAS_OUT_BIAS:
                y += tl.load(bout_ptr + cc, mask=cc_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rows64[:, None] * C_in + cc[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        cols = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        col_ok = cols < C_out
        acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
        acc = _conv_acc(acc, x_ptr, wt_ptr, rows, row_ok, start, cols, col_ok, C_in, C_out, dilation, K, BLOCK_I,
                        DOT_PREC)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        if RELU:  # C_out == C_in: residual
            res = tl.load(x_ptr + rows64[:, None] * C_in + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            # NaN propagates as in torch's relu (the default maximum would turn it into 0)
            acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
            acc = tl.maximum(res + acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
        tl.store(y_ptr + rows64[:, None] * C_out + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_rows(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, dy_ptr, da_ptr, dx_ptr, h_ptr, rows, row_ok, own,
              C_in, C_out, dilation,
              K: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr, WANT_H: tl.constexpr,
              BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
              DOT_PREC: tl.constexpr):
    """Phase 1 on one row tile: recompute the pre-activation, write ``da`` for every row of the
    tile and, for the program's own rows only (``own``), the residual part of ``dx`` (relu) and
    the gate output ``h`` (gated). ``da_ptr`` is addressed by global row."""
    start = tl.load(start_ptr + rows, mask=row_ok, other=0)
    rows64 = rows.to(tl.int64)
    if GATED:
        H = C_out // 2
        a_t, a_s = _gated_preact(x_ptr, wt_ptr, b_ptr, rows, row_ok, start, C_in, H, dilation,
                                 K, HAS_BIAS, BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)
        th = _tanh(a_t)
        sg = tl.sigmoid(a_s)
        hh = tl.arange(0, BLOCK_O)
        h_ok = hh < H
        h_mask = row_ok[:, None] & h_ok[None, :]
        if WANT_H:
            tl.store(h_ptr + rows64[:, None] * H + hh[None, :], (th * sg).to(h_ptr.dtype.element_ty),
                     mask=h_mask & own[:, None])
        # dh = dy @ out_weight (the residual part of dx is dy itself: phase 2 reads it from dy).
        dh = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
        for c0 in range(0, C_in, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            cc_ok = cc < C_in
            dy = tl.load(dy_ptr + rows64[:, None] * C_in + cc[None, :], mask=row_ok[:, None] & cc_ok[None, :],
                         other=0.0)
            wo = tl.load(wout_ptr + cc[:, None] * H + hh[None, :], mask=cc_ok[:, None] & h_ok[None, :], other=0.0)
            dh = tl.dot(dy, wo, dh, input_precision=DOT_PREC)
        da_t = dh * sg * (1.0 - th * th)
        da_s = dh * th * sg * (1.0 - sg)
        da_off = rows64[:, None] * C_out + hh[None, :]
        tl.store(da_ptr + da_off, da_t.to(da_ptr.dtype.element_ty), mask=h_mask)
        tl.store(da_ptr + da_off + H, da_s.to(da_ptr.dtype.element_ty), mask=h_mask)
    else:  # relu block: y = relu(x + relu(a)), C_out == C_in
        for c0 in range(0, C_out, BLOCK_O):
            cols = c0 + tl.arange(0, BLOCK_O)
            col_ok = cols < C_out
            acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
            acc = _conv_acc(acc, x_ptr, wt_ptr, rows, row_ok, start, cols, col_ok, C_in, C_out, dilation, K,
                            BLOCK_I, DOT_PREC)
            if HAS_BIAS:
                acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            mask = row_ok[:, None] & col_ok[None, :]
            off = rows64[:, None] * C_out + cols[None, :]
            res = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
            # As torch.relu's backward: zero only where the value is <= 0, so a NaN passes the gradient.
            g = tl.where(res + tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL) <= 0.0, 0.0, dy)
            tl.store(dx_ptr + off, g.to(dx_ptr.dtype.element_ty), mask=mask & own[:, None])
            tl.store(da_ptr + off, tl.where(acc <= 0.0, 0.0, g).to(da_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dx_rows(res_ptr, da_ptr, start_ptr, wt_ptr, dx_ptr, rows, row_ok, T, C_in, C_out, dilation,
             K: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr,
             BLOCK_O: tl.constexpr, DOT_PREC: tl.constexpr):
    """Phase 2 on one row tile: ``dx[t] = res[t] + sum_k da[t + s_k] @ wt[k]^T`` over rows
    ``t + s_k`` of ``t``'s own sequence (``da_ptr`` addressed by global row)."""
    rows64 = rows.to(tl.int64)
    for i0 in range(0, C_in, BLOCK_I):
        ci = i0 + tl.arange(0, BLOCK_I)
        ci_ok = ci < C_in
        mask = row_ok[:, None] & ci_ok[None, :]
        dx_off = rows64[:, None] * C_in + ci[None, :]
        acc = tl.zeros((BLOCK_T, BLOCK_I), dtype=tl.float32)
        if HAS_RES:
            acc += tl.load(res_ptr + dx_off, mask=mask, other=0.0).to(tl.float32)
        for k in range(K):
            dst = rows + (K - 1 - k) * dilation
            dst_in = row_ok & (dst < T)
            dst_ok = dst_in & (tl.load(start_ptr + dst, mask=dst_in, other=0) <= rows)
            for o0 in range(0, C_out, BLOCK_O):
                co = o0 + tl.arange(0, BLOCK_O)
                co_ok = co < C_out
                da = tl.load(da_ptr + dst.to(tl.int64)[:, None] * C_out + co[None, :],
                             mask=dst_ok[:, None] & co_ok[None, :], other=0.0)
                wt = tl.load(wt_ptr + (k * C_in + ci[None, :]) * C_out + co[:, None],
                             mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
                acc = tl.dot(da, wt, acc, input_precision=DOT_PREC)
        tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tn_chunk(a_ptr, b_ptr, start_ptr, part_ptr, bsum_ptr, chunk, r0, r1, C_a, C_b, dilation,
              K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
              DOT_PREC: tl.constexpr):
    """Phase 3: ``part[chunk, k] = sum_t a[t - s_k]^T b[t]`` and ``bsum[chunk] = sum_t b[t]`` over the
    chunk's rows ``[r0, r1)`` (shifted rows in-sequence only; ``b_ptr`` addressed by global row).
    Each (tap, a-tile, b-tile) accumulates over the whole chunk in registers, then stores once."""
    for k in range(K):
        shift = (K - 1 - k) * dilation
        for i0 in range(0, C_a, BLOCK_I):
            ci = i0 + tl.arange(0, BLOCK_I)
            ci_ok = ci < C_a
            for o0 in range(0, C_b, BLOCK_O):
                co = o0 + tl.arange(0, BLOCK_O)
                co_ok = co < C_b
                acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=tl.float32)
                bsum = tl.zeros((BLOCK_O,), dtype=tl.float32)
                for t0 in range(r0, r1, BLOCK_T):
                    rows = t0 + tl.arange(0, BLOCK_T)
                    row_ok = rows < r1
                    src = rows - shift
                    src_ok = row_ok & (src >= tl.load(start_ptr + rows, mask=row_ok, other=0))
                    a_t = tl.load(a_ptr + src.to(tl.int64)[None, :] * C_a + ci[:, None],
                                  mask=ci_ok[:, None] & src_ok[None, :], other=0.0)
                    b = tl.load(b_ptr + rows.to(tl.int64)[:, None] * C_b + co[None, :],
                                mask=row_ok[:, None] & co_ok[None, :], other=0.0)
                    acc = tl.dot(a_t, b, acc, input_precision=DOT_PREC)
                    bsum += tl.sum(b.to(tl.float32), axis=0)
                part_off = ((chunk * K + k) * C_a + ci[:, None]).to(tl.int64) * C_b + co[None, :]
                tl.store(part_ptr + part_off, acc, mask=ci_ok[:, None] & co_ok[None, :])
                if (k == 0) & (i0 == 0):
                    tl.store(bsum_ptr + chunk * C_b + co, bsum, mask=co_ok)


@triton.jit
def _bwd_kernel(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, dy_ptr, win_ptr, h_ptr, dx_ptr,
                dw_part_ptr, db_part_ptr, dwo_part_ptr, dbo_part_ptr,
                T, C_in, C_out, dilation, chunk_rows, win_rows,
                K: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                WANT_W: tl.constexpr, WANT_OUT: tl.constexpr,
                ACT_BLOCK_T: tl.constexpr, ACT_BLOCK_I: tl.constexpr, ACT_BLOCK_O: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
                HALO_BLOCK: tl.constexpr, DOT_PREC: tl.constexpr):
    """The whole backward of one row chunk ``[r0, r1)``: program ``chunk`` runs three phases
    (see the module docstring). ``ACT`` is False for the plain conv: then ``da`` is ``dy``."""
    chunk = tl.program_id(0)
    r0 = chunk * chunk_rows
    r1 = tl.minimum(r0 + chunk_rows, T)
    if ACT:
        # The program's private window of da: rows [r0, halo_end), addressed by global row.
        da_ptr = win_ptr + (chunk.to(tl.int64) * win_rows - r0) * C_out
        # The halo: the rows of [r1, r1 + (K-1)*dilation) still in the sequence straddling r1.
        # Those rows are a prefix of it (seq_start is sorted): count them, HALO_BLOCK rows at a time.
        halo_stop = tl.minimum(r1 + (K - 1) * dilation, T)
        halo_end = r1
        for h0 in range(r1, halo_stop, HALO_BLOCK):
            ahead = h0 + tl.arange(0, HALO_BLOCK)
            ahead_start = tl.load(start_ptr + ahead, mask=ahead < halo_stop, other=r1)
            halo_end += tl.sum((ahead_start < r1).to(tl.int32), axis=0)
        for t0 in range(r0, halo_end, ACT_BLOCK_T):
            rows = t0 + tl.arange(0, ACT_BLOCK_T)
            _act_rows(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, dy_ptr, da_ptr, dx_ptr, h_ptr,
                      rows, rows < halo_end, rows < r1, C_in, C_out, dilation,
                      K, GATED, HAS_BIAS, WANT_OUT, ACT_BLOCK_T, ACT_BLOCK_I, ACT_BLOCK_O, BLOCK_C, DOT_PREC)
        # Phase 1's global writes (window, dx, h) become visible to all of this program's threads.
        tl.debug_barrier()
    else:
        da_ptr = dy_ptr
    # relu: dx already holds the residual part; gated: the residual part is dy.
    res_ptr = dy_ptr if GATED else dx_ptr
    for t0 in range(r0, r1, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        _dx_rows(res_ptr, da_ptr, start_ptr, wt_ptr, dx_ptr, rows, rows < r1, T, C_in, C_out, dilation,
                 K, ACT, BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)
    if WANT_W:
        _tn_chunk(x_ptr, da_ptr, start_ptr, dw_part_ptr, db_part_ptr, chunk, r0, r1, C_in, C_out, dilation,
                  K, BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)
    if WANT_OUT:
        _tn_chunk(h_ptr, dy_ptr, start_ptr, dwo_part_ptr, dbo_part_ptr, chunk, r0, r1, C_out // 2, C_in, 0,
                  1, BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)


# ---------------------------------------------------------------------------------------------------------
# Host side


def _empty(*shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests poison it to catch unwritten elements)."""
    return torch.empty(*shape, device=like.device, dtype=dtype or like.dtype)


def _pow2(n: int, hi: int) -> int:
    """Power-of-two block >= n, at least 16 (the smallest ``tl.dot`` size on GPU), at most ``hi``."""
    return min(max(16, triton.next_power_of_2(max(int(n), 1))), hi)


def _row_block() -> int:
    return 16 if interpreting() else 64  # small tiles keep the interpreter fast


def _channel_block(c: int) -> int:
    return _pow2(c, 32 if interpreting() else 64)


def _block_opts(gated: bool, c_in: int, c_out: int, dot_prec: str = "tf32") -> dict:
    """Tiles and launch options of the forward kernel and the backward's phase 1, by channel count.

    GPU choices are free of register spills on sm_90 in fp32 and bf16 (``ptxas -v``, C = 128/256):
    8 warps, and a shallow pipeline where the tiles are wide.
    """
    if not gated:
        if interpreting():
            return {"BLOCK_T": _row_block(), "BLOCK_I": _channel_block(c_in), "BLOCK_O": _channel_block(c_out)}
        return {"BLOCK_T": 64, "BLOCK_I": _channel_block(c_in), "BLOCK_O": _channel_block(c_out), "num_warps": 8,
                    "num_stages": 2}
    # The whole gate width H stays in registers (two accumulators): fewer rows per tile when wide.
    block_h = _pow2(c_out // 2, 1 << 30)
    if interpreting():
        return {"BLOCK_T": 16, "BLOCK_I": _channel_block(c_in), "BLOCK_O": block_h}
    wide = block_h > 128 or dot_prec == "tf32x3"  # 3xTF32 holds more per product: as for a wide gate
    return {"BLOCK_T": 16 if wide else 32, "BLOCK_I": _pow2(c_in, 32), "BLOCK_O": block_h, "num_warps": 8,
                "num_stages": 1 if wide else 2}


def _bwd_opts(gated: bool, c_in: int, c_out: int, dot_prec: str = "tf32") -> dict:
    """Tiles and launch options of ``_bwd_kernel``: phase 1 (``ACT_*``, ``BLOCK_C``) tiles like the
    forward; phases 2 and 3 use ``BLOCK_T`` rows and ``BLOCK_I`` x ``BLOCK_O`` channel tiles.
    Launch options from the H200 sweep (``scripts/tune_gpu_kernels.py``, T = 2^20, C = 128; see
    ``_bwd_programs_per_sm``): 4 warps beat 8 in every case (1.25-2.35x, with 2-4 programs per SM),
    a second pipeline stage helps gated and hurts relu."""
    act = _block_opts(gated, c_in, c_out, dot_prec)
    opts = {"ACT_BLOCK_T": act["BLOCK_T"], "ACT_BLOCK_I": act["BLOCK_I"], "ACT_BLOCK_O": act["BLOCK_O"],
            "BLOCK_C": _channel_block(c_in), "BLOCK_T": _row_block(),
            "BLOCK_I": _channel_block(max(c_in, c_out // 2)),
            "BLOCK_O": max(_channel_block(c_out), _channel_block(c_in))}
    if not interpreting():
        # relu's phase 1 at 32 rows (64 spilled at 8 warps). The 4 warps spill (ptxas: 40-390 bytes
        # in bf16, up to 4 KB for fp32 gated) and were still 1.25-2.35x faster than spill-free 8 warps.
        if not gated:
            opts["ACT_BLOCK_T"] = 32
        opts.update(num_warps=4, num_stages=2 if gated else 1)
        if dot_prec == "tf32x3":  # three products per dot: narrower tiles keep phases 2-3 spill-free (not swept)
            opts.update(BLOCK_I=min(opts["BLOCK_I"], 32), BLOCK_O=min(opts["BLOCK_O"], 32),
                        BLOCK_C=min(opts["BLOCK_C"], 32), num_warps=8, num_stages=1)
    return opts


def _as_rows(x: torch.Tensor, cu_seqlens):
    """``(T, C)`` contiguous rows plus ``seq_start`` (int32, T) for packed or padded ``x``."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    t = rows.shape[0]
    if cu_seqlens is None:  # padded (B, L, C): a sequence starts every L rows
        length = max(1, x.shape[1])
        start = torch.arange(t, device=x.device, dtype=torch.int32).div_(length, rounding_mode="floor").mul_(length)
    else:
        cu = cu_seqlens.to(torch.int32)
        start = torch.repeat_interleave(cu[:-1], cu.diff(), output_size=t)
    return rows, start


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; the Triton backend supports float32/float16/bfloat16 "
                        "(use HIERTCN_BACKEND=reference for float64)")
    if not x.is_cuda and x.dtype != torch.float32:
        raise TypeError(f"x has dtype {x.dtype}; Triton's interpreter (CPU tensors) supports float32 only")


def _dot_precision(x: torch.Tensor) -> str:
    """fp32 dots as in the cuDNN conv this replaces: TF32 while ``torch.backends.cudnn.allow_tf32`` (torch's
    default), else 3xTF32 (about fp32 accuracy). 16-bit inputs ignore it; the interpreter's dots are exact."""
    return "tf32" if x.dtype != torch.float32 or torch.backends.cudnn.allow_tf32 else "tf32x3"


def _forward(x, start, wt, bias, out_weight, out_bias, dilation, mode):
    t, c_in = x.shape
    k, _, c_out = wt.shape
    gated = mode == "gated"
    y = _empty(t, c_in if gated else c_out, like=x)
    if t == 0:
        return y
    dot_prec = _dot_precision(x)
    opts = _block_opts(gated, c_in, c_out, dot_prec)
    n_o = 1 if gated else triton.cdiv(c_out, opts["BLOCK_O"])
    with launch_device(x):
        _fwd_kernel[(triton.cdiv(t, opts["BLOCK_T"]), n_o)](
            x, start, wt, x if bias is None else bias, x if out_weight is None else out_weight,
            x if out_bias is None else out_bias, y, t, c_in, c_out, dilation,
            K=k, RELU=mode == "relu", GATED=gated, HAS_BIAS=bias is not None, HAS_OUT_BIAS=out_bias is not None,
            BLOCK_C=_channel_block(c_in), DOT_PREC=dot_prec, **opts,
        )
    return y


def _bwd_programs_per_sm(gated: bool, x: torch.Tensor) -> int:
    """Backward programs per SM, from the H200 sweep (``scripts/tune_gpu_kernels.py``, T = 2^20, C = 128,
    4 warps; against one program per SM): bf16 relu 2.35x at 4 (1.68x at 2), bf16 gated 2.14x at 2
    (2.07x at 4), fp32 relu 1.79x at 2, fp32 gated 1.25x at 2. Two 4-warp programs fit an SM's registers
    at 255 each, and smaller chunks even out the tail; each program adds one fp32 weight partial."""
    if _dot_precision(x) == "tf32x3":  # not swept: the one-per-SM choice of before
        return 1
    return 4 if not gated and x.element_size() == 2 else 2


# Fewest rows per backward program on GPU: each program's fp32 weight partial (327 KB at C = 128,
# K = 5) outweighed its rows below this. On an H200 (2026-11-30, relu fp32 C = 128) the floor cut
# the backward's transient memory at T = 12k from 81 to 34 MiB, and at T = 1.5k from 11 to 5 MiB,
# for the same time (within noise from T = 0.9k to 65k; HierTCN's step at 256 lanes 10% faster).
_MIN_CHUNK_ROWS = 256
# Halo rows read per vector load in the backward: every halo up to (K-1)*dilation = 1024 in one load, longer
# ones in a loop (a tl.arange holds at most 2^20 elements).
_MAX_HALO_BLOCK = 1024


def _chunk_rows(t: int, halo: int, device: torch.device, per_sm: int = 1) -> int:
    """Rows per backward program: a multiple of the row tile (the kernel takes any count >= 1;
    tests replace this function to force many chunk boundaries). On GPU ``per_sm`` programs per SM
    (``_bwd_programs_per_sm``), but at least ``_MIN_CHUNK_ROWS`` rows each: every program adds one
    ``(K, C_in, C_out)`` fp32 partial. Never fewer rows than the halo, so the recompute is at most
    100%. Two programs in the interpreter, so the cross-chunk sum is exercised."""
    if interpreting() or device.type != "cuda":
        programs, least = 2, 1
    else:
        programs = torch.cuda.get_device_properties(device).multi_processor_count * per_sm
        least = _MIN_CHUNK_ROWS
    block = _row_block()
    return triton.cdiv(max(triton.cdiv(t, programs), halo, least), block) * block


def _zeros_or_none(p):
    return None if p is None else torch.zeros_like(p)


def _backward(dy, x, start, wt, bias, out_weight, dilation, mode, needs):
    """Gradients ``(dx, d_weight (C_out, C_in, K), d_bias, d_out_weight, d_out_bias)`` (None when not
    needed), from one launch of ``_bwd_kernel`` plus ``torch.sum`` over its per-chunk partials."""
    t, c_in = x.shape
    k, _, c_out = wt.shape
    gated = mode == "gated"
    dx = _empty(t, c_in, like=x)
    if t == 0:
        dw = torch.zeros_like(wt).permute(2, 1, 0)
        return dx, dw, _zeros_or_none(bias), _zeros_or_none(out_weight), x.new_zeros(c_in) if gated else None
    dy = dy.contiguous()
    act = mode != "conv"
    want_w = needs["weight"] or needs["bias"]
    want_out = gated and (needs["out_weight"] or needs["out_bias"])
    halo = (k - 1) * dilation
    rows = _chunk_rows(t, halo, x.device, per_sm=_bwd_programs_per_sm(gated, x))
    n_chunks = triton.cdiv(t, rows)
    win_rows = min(rows + halo, t)
    f32 = torch.float32
    win = _empty(n_chunks, win_rows, c_out, like=x) if act else None
    h = _empty(t, c_out // 2, like=x) if want_out else None
    dw_part = _empty(n_chunks, k, c_in, c_out, like=x, dtype=f32) if want_w else None
    db_part = _empty(n_chunks, c_out, like=x, dtype=f32) if want_w else None
    dwo_part = _empty(n_chunks, 1, c_out // 2, c_in, like=x, dtype=f32) if want_out else None
    dbo_part = _empty(n_chunks, c_in, like=x, dtype=f32) if want_out else None

    def buf(p):  # absent buffers: any pointer, never touched (their constexpr flag is off)
        return x if p is None else p

    dot_prec = _dot_precision(x)
    with launch_device(x):
        _bwd_kernel[(n_chunks,)](
            x, start, wt, buf(bias), buf(out_weight), dy, buf(win), buf(h), dx,
            buf(dw_part), buf(db_part), buf(dwo_part), buf(dbo_part), t, c_in, c_out, dilation, rows, win_rows,
            K=k, ACT=act, GATED=gated, HAS_BIAS=bias is not None, WANT_W=want_w, WANT_OUT=want_out,
            HALO_BLOCK=min(triton.next_power_of_2(max(halo, 1)), _MAX_HALO_BLOCK), DOT_PREC=dot_prec,
            **_bwd_opts(gated, c_in, c_out, dot_prec),
        )
    # Deterministic reductions over the chunk axis (no atomics anywhere).
    dw = dw_part.sum(0).permute(2, 1, 0).to(wt.dtype) if want_w else None  # (K, C_in, C_out) -> (C_out, C_in, K)
    db = db_part.sum(0).to(x.dtype) if want_w and bias is not None else None
    dwo = dwo_part.sum(0)[0].T.to(x.dtype) if want_out else None  # h^T dy is (H, C); out_weight is (C, H)
    dbo = dbo_part.sum(0).to(x.dtype) if want_out else None
    return dx, dw, db, dwo, dbo


class _TCNFunction(torch.autograd.Function):
    """One fused forward launch; the backward recomputes activations from the saved inputs.

    Differentiable once: the backward's kernels build no graph, so double backward raises.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, out_weight, out_bias, cu_seqlens, dilation, mode):
        rows, start = _as_rows(x, cu_seqlens)
        # A tap shifted by T rows or more reads before every sequence, so any dilation >= T gives what T
        # gives; clamping keeps the kernels' int32 row offsets (t - (K-1-k)*dilation) from overflowing.
        dilation = min(dilation, max(rows.shape[0], 1))
        wt = weight.permute(2, 1, 0).contiguous()  # (K, C_in, C_out): contiguous out-channel tiles
        ow = None if out_weight is None else out_weight.contiguous()
        ob = None if out_bias is None else out_bias.contiguous()
        b = None if bias is None else bias.contiguous()
        y = _forward(rows, start, wt, b, ow, ob, dilation, mode)
        ctx.save_for_backward(rows, start, wt, b, ow)  # wt, not weight: no second permute copy in backward
        ctx.dilation, ctx.mode, ctx.x_shape = dilation, mode, x.shape
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():  # only under create_graph=True: the kernels' gradients carry no graph
            raise NotImplementedError(
                "double backward (create_graph=True) is not supported by the fused Triton causal_conv1d/tcn_block; "
                "run them on the PyTorch reference (HIERTCN_BACKEND=reference), which supports it"
            )
        rows, start, wt, bias, out_weight = ctx.saved_tensors
        needs = dict(zip(("x", "weight", "bias", "out_weight", "out_bias"), ctx.needs_input_grad[:5]))
        dx, dw, db, dwo, dbo = _backward(dy.reshape(-1, dy.shape[-1]), rows, start, wt, bias, out_weight,
                                         ctx.dilation, ctx.mode, needs)
        grads = [dx.reshape(ctx.x_shape), dw, db, dwo, dbo]
        return (*(g if need else None for g, need in zip(grads, needs.values())), None, None, None)


def causal_conv1d(x, weight, bias=None, *, dilation=1, cu_seqlens=None):
    """Triton ``causal_conv1d`` (arguments already validated by ``hiertcn_kernels.conv``); no double backward."""
    _check_dtype(x)
    return _TCNFunction.apply(x, weight, bias, None, None, cu_seqlens, dilation, "conv")


def tcn_block(x, conv_weight, conv_bias=None, *, dilation=1, activation="relu", out_weight=None, out_bias=None,
              cu_seqlens=None):
    """Triton ``tcn_block`` (arguments already validated by ``hiertcn_kernels.conv``); no double backward."""
    _check_dtype(x)
    return _TCNFunction.apply(x, conv_weight, conv_bias, out_weight, out_bias, cu_seqlens, dilation, activation)
