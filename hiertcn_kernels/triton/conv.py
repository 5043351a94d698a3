"""Fused Triton kernels for the varlen dilated causal conv and the TCN block.

Layout: every input is handled as packed rows ``(T, C)``; a padded ``(B, L, C)``
batch is the packed case with sequences starting every ``L`` rows. Each row
carries ``seq_start[t]`` (int32, built on the host), so a tile may straddle any
number of sequence boundaries and still be exact:

- forward, tap ``k`` of row ``t`` reads row ``t - s_k`` (``s_k = (K-1-k)*dilation``)
  only if ``t - s_k >= seq_start[t]``;
- backward, ``dx[t]`` takes tap ``k`` of row ``u = t + s_k`` only if ``u < T`` and
  ``seq_start[u] <= t`` (i.e. ``u`` is in ``t``'s sequence).

Launches:

- forward: one kernel per block (conv + bias + activation + residual, and for
  ``gated`` the 1x1 output projection + bias).
- backward: (1) ``_act_bwd_kernel`` recomputes the pre-activation from ``x``
  (nothing but the inputs is saved) and writes the pre-activation gradient
  ``da``, the residual part of ``dx`` and, for ``gated``, the gate output ``h``;
  (2) ``_conv_dx_kernel`` adds the transposed conv of ``da`` to ``dx``;
  (3) ``_tn_partial_kernel`` computes ``x_shifted^T @ da`` (and the bias sums)
  per chunk of rows into a ``(n_chunks, ...)`` fp32 buffer, summed over chunks by
  ``torch.sum``; for ``gated`` it runs once more for ``h^T @ dy``. No atomics:
  same inputs, same bits. Fusing (2) and (3) into one launch is future work.

Dots accumulate in fp32; outputs and gradients come back in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreting

MODE_CONV, MODE_RELU, MODE_GATED = 0, 1, 2
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _tanh(x):
    # No libdevice in the interpreter; tanh(x) = 2 * sigmoid(2x) - 1 works on both.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _conv_acc(acc, x_ptr, wt_ptr, rows, row_ok, start, cols, col_ok, C_in, C_out, dilation,
              K: tl.constexpr, BLOCK_I: tl.constexpr):
    """``acc += sum_k x[rows - s_k] @ wt[k][:, cols]``, rows before their sequence start read as 0."""
    for k in range(K):
        src = rows - (K - 1 - k) * dilation
        src_ok = row_ok & (src >= start)
        for i0 in range(0, C_in, BLOCK_I):
            ci = i0 + tl.arange(0, BLOCK_I)
            ci_ok = ci < C_in
            xt = tl.load(x_ptr + src.to(tl.int64)[:, None] * C_in + ci[None, :],
                         mask=src_ok[:, None] & ci_ok[None, :], other=0.0)
            wt = tl.load(wt_ptr + (k * C_in + ci[:, None]) * C_out + cols[None, :],
                         mask=ci_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tl.dot(xt, wt, acc)
    return acc


@triton.jit
def _gated_preact(x_ptr, wt_ptr, b_ptr, rows, row_ok, start, C_in, H, dilation,
                  K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr):
    """Both halves of the gated pre-activation, ``(BLOCK_T, BLOCK_H)`` each, x loaded once."""
    hh = tl.arange(0, BLOCK_H)
    h_ok = hh < H
    acc_t = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for k in range(K):
        src = rows - (K - 1 - k) * dilation
        src_ok = row_ok & (src >= start)
        for i0 in range(0, C_in, BLOCK_I):
            ci = i0 + tl.arange(0, BLOCK_I)
            ci_ok = ci < C_in
            xt = tl.load(x_ptr + src.to(tl.int64)[:, None] * C_in + ci[None, :],
                         mask=src_ok[:, None] & ci_ok[None, :], other=0.0)
            w_off = (k * C_in + ci[:, None]) * (2 * H) + hh[None, :]
            w_mask = ci_ok[:, None] & h_ok[None, :]
            acc_t = tl.dot(xt, tl.load(wt_ptr + w_off, mask=w_mask, other=0.0), acc_t)
            acc_s = tl.dot(xt, tl.load(wt_ptr + w_off + H, mask=w_mask, other=0.0), acc_s)
    if HAS_BIAS:
        acc_t += tl.load(b_ptr + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
        acc_s += tl.load(b_ptr + H + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    return acc_t, acc_s


@triton.jit
def _fwd_kernel(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, bout_ptr, y_ptr, T, C_in, C_out, dilation,
                K: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """MODE_CONV/MODE_RELU: grid (row tiles, out-channel tiles). MODE_GATED: grid (row tiles, 1)."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    start = tl.load(start_ptr + rows, mask=row_ok, other=0)
    rows64 = rows.to(tl.int64)
    if MODE == MODE_GATED:
        H = C_out // 2
        a_t, a_s = _gated_preact(x_ptr, wt_ptr, b_ptr, rows, row_ok, start, C_in, H, dilation,
                                 K, HAS_BIAS, BLOCK_T, BLOCK_I, BLOCK_O)
        h = (_tanh(a_t) * tl.sigmoid(a_s)).to(y_ptr.dtype.element_ty)
        hh = tl.arange(0, BLOCK_O)
        for c0 in range(0, C_in, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            cc_ok = cc < C_in
            # out_weight is (C, H): the (BLOCK_O, BLOCK_C) tile of its transpose.
            wo = tl.load(wout_ptr + cc[None, :] * H + hh[:, None], mask=(hh < H)[:, None] & cc_ok[None, :], other=0.0)
            mask = row_ok[:, None] & cc_ok[None, :]
            y = tl.load(x_ptr + rows64[:, None] * C_in + cc[None, :], mask=mask, other=0.0).to(tl.float32)
            y = tl.dot(h, wo, y)
            if HAS_OUT_BIAS:
                y += tl.load(bout_ptr + cc, mask=cc_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rows64[:, None] * C_in + cc[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        cols = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        col_ok = cols < C_out
        acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
        acc = _conv_acc(acc, x_ptr, wt_ptr, rows, row_ok, start, cols, col_ok, C_in, C_out, dilation, K, BLOCK_I)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        if MODE == MODE_RELU:  # C_out == C_in: residual
            res = tl.load(x_ptr + rows64[:, None] * C_in + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            acc = tl.maximum(res + tl.maximum(acc, 0.0), 0.0)
        tl.store(y_ptr + rows64[:, None] * C_out + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_bwd_kernel(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, dy_ptr, da_ptr, dx_ptr, h_ptr,
                    T, C_in, C_out, dilation,
                    K: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """Recompute the pre-activation; write ``da``, the residual part of ``dx`` and (gated) ``h``."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    start = tl.load(start_ptr + rows, mask=row_ok, other=0)
    rows64 = rows.to(tl.int64)
    if MODE == MODE_GATED:
        H = C_out // 2
        a_t, a_s = _gated_preact(x_ptr, wt_ptr, b_ptr, rows, row_ok, start, C_in, H, dilation,
                                 K, HAS_BIAS, BLOCK_T, BLOCK_I, BLOCK_O)
        th = _tanh(a_t)
        sg = tl.sigmoid(a_s)
        hh = tl.arange(0, BLOCK_O)
        h_ok = hh < H
        h_mask = row_ok[:, None] & h_ok[None, :]
        tl.store(h_ptr + rows64[:, None] * H + hh[None, :], (th * sg).to(h_ptr.dtype.element_ty), mask=h_mask)
        # dh = dy @ out_weight; the residual passes dy straight to dx.
        dh = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
        for c0 in range(0, C_in, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            cc_ok = cc < C_in
            mask = row_ok[:, None] & cc_ok[None, :]
            dy = tl.load(dy_ptr + rows64[:, None] * C_in + cc[None, :], mask=mask, other=0.0)
            tl.store(dx_ptr + rows64[:, None] * C_in + cc[None, :], dy, mask=mask)
            wo = tl.load(wout_ptr + cc[:, None] * H + hh[None, :], mask=cc_ok[:, None] & h_ok[None, :], other=0.0)
            dh = tl.dot(dy, wo, dh)
        da_t = dh * sg * (1.0 - th * th)
        da_s = dh * th * sg * (1.0 - sg)
        da_off = rows64[:, None] * C_out + hh[None, :]
        tl.store(da_ptr + da_off, da_t.to(da_ptr.dtype.element_ty), mask=h_mask)
        tl.store(da_ptr + da_off + H, da_s.to(da_ptr.dtype.element_ty), mask=h_mask)
    else:  # MODE_RELU: y = relu(x + relu(a))
        cols = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        col_ok = cols < C_out
        acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
        acc = _conv_acc(acc, x_ptr, wt_ptr, rows, row_ok, start, cols, col_ok, C_in, C_out, dilation, K, BLOCK_I)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        off = rows64[:, None] * C_out + cols[None, :]
        res = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        g = tl.where(res + tl.maximum(acc, 0.0) > 0.0, dy, 0.0)
        tl.store(dx_ptr + off, g.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(da_ptr + off, tl.where(acc > 0.0, g, 0.0).to(da_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_dx_kernel(da_ptr, start_ptr, wt_ptr, dx_ptr, T, C_in, C_out, dilation,
                    K: tl.constexpr, ACCUMULATE: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """``dx[t] (+)= sum_k da[t + s_k] @ wt[k]^T`` over rows ``t + s_k`` of ``t``'s own sequence."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    ci = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    ci_ok = ci < C_in
    mask = row_ok[:, None] & ci_ok[None, :]
    dx_off = rows.to(tl.int64)[:, None] * C_in + ci[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_I), dtype=tl.float32)
    if ACCUMULATE:
        acc += tl.load(dx_ptr + dx_off, mask=mask, other=0.0).to(tl.float32)
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
            acc = tl.dot(da, wt, acc)
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tn_partial_kernel(a_ptr, start_ptr, b_ptr, part_ptr, bsum_ptr, T, C_a, C_b, dilation, rows_per_chunk,
                       K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """``part[chunk, k] = sum_t a[t - s_k]^T b[t]`` over the chunk's rows (shifted rows in-sequence only).

    Grid (chunks, K * a-channel tiles, b-channel tiles). Programs of the first a-channel
    tile of tap 0 also write the chunk's column sums of ``b`` (the bias gradient).
    """
    chunk = tl.program_id(0)
    n_i = tl.cdiv(C_a, BLOCK_I)
    k = tl.program_id(1) // n_i
    ci = (tl.program_id(1) % n_i) * BLOCK_I + tl.arange(0, BLOCK_I)
    co = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    ci_ok = ci < C_a
    co_ok = co < C_b
    shift = (K - 1 - k) * dilation
    acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=tl.float32)
    bsum = tl.zeros((BLOCK_O,), dtype=tl.float32)
    row0 = chunk * rows_per_chunk
    for r0 in range(row0, tl.minimum(row0 + rows_per_chunk, T), BLOCK_T):
        rows = r0 + tl.arange(0, BLOCK_T)
        row_ok = rows < T
        src = rows - shift
        src_ok = row_ok & (src >= tl.load(start_ptr + rows, mask=row_ok, other=0))
        a_t = tl.load(a_ptr + src.to(tl.int64)[None, :] * C_a + ci[:, None],
                      mask=ci_ok[:, None] & src_ok[None, :], other=0.0)
        b = tl.load(b_ptr + rows.to(tl.int64)[:, None] * C_b + co[None, :],
                    mask=row_ok[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(a_t, b, acc)
        bsum += tl.sum(b.to(tl.float32), axis=0)
    part_off = ((chunk * K + k) * C_a + ci[:, None]) * C_b + co[None, :]
    tl.store(part_ptr + part_off, acc, mask=ci_ok[:, None] & co_ok[None, :])
    if tl.program_id(1) == 0:
        tl.store(bsum_ptr + chunk * C_b + co, bsum, mask=co_ok)


# ---------------------------------------------------------------------------------------------------------
# Host side


def _empty(*shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests poison it to catch unwritten elements)."""
    return torch.empty(*shape, device=like.device, dtype=dtype or like.dtype)


def _pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    """Power-of-two block size >= n (at least 16: the smallest ``tl.dot`` size on GPU), capped at hi."""
    b = max(lo, triton.next_power_of_2(max(int(n), 1)))
    return b if hi is None else min(b, hi)


def _blocks(c_in: int, c_out: int, mode: int) -> dict:
    """Tile sizes by channel count: small tiles in the interpreter (speed), larger on GPU."""
    small = interpreting()
    if mode == MODE_GATED:  # the whole gate width H stays in registers
        block_o = _pow2(c_out // 2)
        block_t = 16 if small or block_o > 128 else 32
    else:
        block_o = _pow2(c_out, hi=32 if small else 64)
        block_t = 16 if small else 64
    return dict(BLOCK_T=block_t, BLOCK_I=_pow2(c_in, hi=32 if small else 64), BLOCK_O=block_o)


def _launch_opts(block_o: int) -> dict:
    return {} if interpreting() else dict(num_warps=8 if block_o > 128 else 4)


def _as_rows(x: torch.Tensor, cu_seqlens):
    """``(T, C)`` contiguous rows plus ``seq_start`` (int32, T) for packed or padded ``x``."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    t = rows.shape[0]
    if cu_seqlens is None:  # padded (B, L, C): a sequence starts every L rows
        length = x.shape[1]
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


def _forward(x, start, wt, bias, out_weight, out_bias, dilation, mode):
    t, c_in = x.shape
    k, _, c_out = wt.shape
    c_y = c_in if mode == MODE_GATED else c_out
    y = _empty(t, c_y, like=x)
    if t == 0:
        return y
    blk = _blocks(c_in, c_out, mode)
    n_o = 1 if mode == MODE_GATED else triton.cdiv(c_out, blk["BLOCK_O"])
    grid = (triton.cdiv(t, blk["BLOCK_T"]), n_o)
    _fwd_kernel[grid](
        x, start, wt, x if bias is None else bias, x if out_weight is None else out_weight,
        x if out_bias is None else out_bias, y, t, c_in, c_out, dilation,
        K=k, MODE=mode, HAS_BIAS=bias is not None, HAS_OUT_BIAS=out_bias is not None,
        BLOCK_C=_pow2(c_in, hi=32 if interpreting() else 64), **blk, **_launch_opts(blk["BLOCK_O"]),
    )
    return y


def _tn_sums(a, start, b, k, dilation):
    """``(sum_t a[t - s_k]^T b[t] for each k)`` as ``(K, C_a, C_b)`` fp32, and ``b``'s column sums ``(C_b,)``."""
    t, c_a = a.shape
    c_b = b.shape[1]
    small = interpreting()
    block_t = 16 if small else 64
    block_i = _pow2(c_a, hi=32 if small else 64)
    block_o = _pow2(c_b, hi=32 if small else 64)
    per_chunk = k * triton.cdiv(c_a, block_i) * triton.cdiv(c_b, block_o)
    # Enough chunks to fill the GPU (two in the interpreter, to exercise the cross-chunk sum).
    target = 2 if small else max(1, 4 * torch.cuda.get_device_properties(a.device).multi_processor_count // per_chunk)
    n_chunks = max(1, min(target, triton.cdiv(t, block_t)))
    rows_per_chunk = triton.cdiv(triton.cdiv(t, n_chunks), block_t) * block_t
    n_chunks = triton.cdiv(t, rows_per_chunk)
    part = _empty(n_chunks, k, c_a, c_b, like=a, dtype=torch.float32)
    bsum = _empty(n_chunks, c_b, like=a, dtype=torch.float32)
    grid = (n_chunks, k * triton.cdiv(c_a, block_i), triton.cdiv(c_b, block_o))
    _tn_partial_kernel[grid](a, start, b, part, bsum, t, c_a, c_b, dilation, rows_per_chunk,
                             K=k, BLOCK_T=block_t, BLOCK_I=block_i, BLOCK_O=block_o)
    return part.sum(0), bsum.sum(0)


def _backward(dy, x, start, wt, bias, out_weight, dilation, mode, needs):
    """Gradients ``(dx, d_weight (C_out, C_in, K), d_bias, d_out_weight, d_out_bias)`` (None when not needed)."""
    t, c_in = x.shape
    k, _, c_out = wt.shape
    dy = dy.contiguous()
    dx = _empty(t, c_in, like=x)
    dw = db = dwo = dbo = None
    if t == 0:
        dx = dx.zero_()
        dw = wt.new_zeros(wt.shape).permute(2, 1, 0)
        db = None if bias is None else bias.new_zeros(bias.shape)
        if mode == MODE_GATED:
            dwo, dbo = out_weight.new_zeros(out_weight.shape), x.new_zeros(c_in)
        return dx, dw, db, dwo, dbo
    blk = _blocks(c_in, c_out, mode)
    opts = _launch_opts(blk["BLOCK_O"])
    h = None
    if mode == MODE_CONV:
        da = dy
    else:
        da = _empty(t, c_out, like=x)
        h = _empty(t, c_out // 2, like=x) if mode == MODE_GATED else None
        n_o = 1 if mode == MODE_GATED else triton.cdiv(c_out, blk["BLOCK_O"])
        _act_bwd_kernel[(triton.cdiv(t, blk["BLOCK_T"]), n_o)](
            x, start, wt, x if bias is None else bias, x if out_weight is None else out_weight, dy, da, dx,
            x if h is None else h, t, c_in, c_out, dilation,
            K=k, MODE=mode, HAS_BIAS=bias is not None,
            BLOCK_C=_pow2(c_in, hi=32 if interpreting() else 64), **blk, **opts,
        )
    dx_blk = dict(BLOCK_T=blk["BLOCK_T"] if mode != MODE_GATED else (16 if interpreting() else 64),
                  BLOCK_I=blk["BLOCK_I"], BLOCK_O=_pow2(c_out, hi=32 if interpreting() else 64))
    _conv_dx_kernel[(triton.cdiv(t, dx_blk["BLOCK_T"]), triton.cdiv(c_in, dx_blk["BLOCK_I"]))](
        da, start, wt, dx, t, c_in, c_out, dilation, K=k, ACCUMULATE=mode != MODE_CONV, **dx_blk,
    )
    if needs["weight"] or needs["bias"]:
        dw32, db32 = _tn_sums(x, start, da, k, dilation)
        dw = dw32.permute(2, 1, 0).to(wt.dtype)  # (K, C_in, C_out) -> (C_out, C_in, K)
        db = db32.to(x.dtype) if bias is not None else None
    if mode == MODE_GATED and (needs["out_weight"] or needs["out_bias"]):
        dwo32, dbo32 = _tn_sums(h, start, dy, 1, 0)  # h^T dy: (H, C); dy's column sums give d(out_bias)
        dwo, dbo = dwo32[0].T.to(x.dtype), dbo32.to(x.dtype)
    return dx, dw, db, dwo, dbo


class _TCNFunction(torch.autograd.Function):
    """One fused forward launch; the backward recomputes activations from the saved inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, out_weight, out_bias, cu_seqlens, dilation, mode):
        rows, start = _as_rows(x, cu_seqlens)
        wt = weight.permute(2, 1, 0).contiguous()  # (K, C_in, C_out): contiguous out-channel tiles
        ow = None if out_weight is None else out_weight.contiguous()
        ob = None if out_bias is None else out_bias.contiguous()
        b = None if bias is None else bias.contiguous()
        y = _forward(rows, start, wt, b, ow, ob, dilation, mode)
        ctx.save_for_backward(rows, start, weight, b, ow)
        ctx.dilation, ctx.mode, ctx.x_shape = dilation, mode, x.shape
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        rows, start, weight, bias, out_weight = ctx.saved_tensors
        wt = weight.permute(2, 1, 0).contiguous()
        needs = dict(zip(("x", "weight", "bias", "out_weight", "out_bias"), ctx.needs_input_grad[:5]))
        dx, dw, db, dwo, dbo = _backward(dy.reshape(-1, dy.shape[-1]), rows, start, wt, bias, out_weight,
                                         ctx.dilation, ctx.mode, needs)
        grads = [dx.reshape(ctx.x_shape), dw, db, dwo, dbo]
        return (*(g if need else None for g, need in zip(grads, needs.values())), None, None, None)


def causal_conv1d(x, weight, bias=None, *, dilation=1, cu_seqlens=None):
    """Triton ``causal_conv1d`` (arguments already validated by ``hiertcn_kernels.conv``)."""
    _check_dtype(x)
    return _TCNFunction.apply(x, weight, bias, None, None, cu_seqlens, dilation, MODE_CONV)


def tcn_block(x, conv_weight, conv_bias=None, *, dilation=1, activation="relu", out_weight=None, out_bias=None,
              cu_seqlens=None):
    """Triton ``tcn_block`` (arguments already validated by ``hiertcn_kernels.conv``)."""
    _check_dtype(x)
    mode = MODE_RELU if activation == "relu" else MODE_GATED
    return _TCNFunction.apply(x, conv_weight, conv_bias, out_weight, out_bias, cu_seqlens, dilation, mode)
