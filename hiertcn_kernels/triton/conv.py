"""Fused Triton kernels for the varlen dilated causal conv and the TCN block.

Layout: every input is handled as packed rows ``(T, C)``; a padded ``(B, L, C)``
batch is the packed case with sequences starting every ``L`` rows. Each row
carries ``seq_start[t]`` (int32, built on the host), so a tile may straddle any
number of sequence boundaries and still be exact:

- forward, tap ``k`` of row ``t`` reads row ``t - s_k`` (``s_k = (K-1-k)*dilation``)
  only if ``t - s_k >= seq_start[t]``;
- backward, ``dx[t]`` takes tap ``k`` of row ``u = t + s_k`` only if ``u < T`` and
  ``seq_start[u] <= t`` (i.e. ``u`` is in ``t``'s sequence).

Launches (one forward, two backward):

- forward, ``_fwd_kernel``: conv + bias + activation + residual, and for ``gated``
  the 1x1 output projection + bias.
- backward, ``_act_bwd_kernel`` (relu/gated blocks): recomputes the pre-activation
  from ``x`` (only the inputs are saved) and writes the pre-activation gradient
  ``da``, the residual part of ``dx`` and, for ``gated``, the gate output ``h``.
  A second pass is needed because ``dx[t]`` reads ``da`` from up to
  ``(K-1)*dilation`` rows ahead, which another program computes.
- backward, ``_grads_kernel``: one launch whose programs split three ways: ``dx``
  tiles (transposed conv of ``da``), per-chunk ``x_shifted^T @ da`` and column sums
  (conv weight and bias) and, for ``gated``, per-chunk ``h^T @ dy`` (output
  projection). Partial sums go to ``(n_chunks, ...)`` fp32 buffers that ``torch.sum``
  reduces over chunks: no atomics, so the same inputs give the same bits.

Dots accumulate in fp32; outputs, gradients and the ``da``/``h`` buffers are in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreting

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
                K: tl.constexpr, RELU: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                HAS_OUT_BIAS: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """Plain conv or RELU block: grid (row tiles, out-channel tiles). GATED block: grid (row tiles, 1)."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    start = tl.load(start_ptr + rows, mask=row_ok, other=0)
    rows64 = rows.to(tl.int64)
    if GATED:
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
        if RELU:  # C_out == C_in: residual
            res = tl.load(x_ptr + rows64[:, None] * C_in + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            acc = tl.maximum(res + tl.maximum(acc, 0.0), 0.0)
        tl.store(y_ptr + rows64[:, None] * C_out + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_bwd_kernel(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, dy_ptr, da_ptr, dx_ptr, h_ptr,
                    T, C_in, C_out, dilation,
                    K: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """Recompute the pre-activation; write ``da``, the residual part of ``dx`` and (gated) ``h``."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    start = tl.load(start_ptr + rows, mask=row_ok, other=0)
    rows64 = rows.to(tl.int64)
    if GATED:
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
    else:  # relu block: y = relu(x + relu(a))
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
def _dx_tile(tile, da_ptr, start_ptr, wt_ptr, dx_ptr, T, C_in, C_out, dilation,
             K: tl.constexpr, ACCUMULATE: tl.constexpr,
             BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """``dx[t] (+)= sum_k da[t + s_k] @ wt[k]^T`` over rows ``t + s_k`` of ``t``'s own sequence."""
    n_i = tl.cdiv(C_in, BLOCK_I)
    rows = (tile // n_i) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    ci = (tile % n_i) * BLOCK_I + tl.arange(0, BLOCK_I)
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
def _tn_tile(tile, a_ptr, start_ptr, b_ptr, part_ptr, bsum_ptr, T, C_a, C_b, dilation, rows_per_chunk,
             K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """``part[chunk, k] = sum_t a[t - s_k]^T b[t]`` over one chunk of rows (shifted rows in-sequence only).

    Tiles are numbered (chunk, k, a-channel tile, b-channel tile). The tiles of tap 0 and
    a-channel tile 0 also write the chunk's column sums of ``b`` (the bias gradient).
    """
    n_i = tl.cdiv(C_a, BLOCK_I)
    n_o = tl.cdiv(C_b, BLOCK_O)
    chunk = tile // (K * n_i * n_o)
    rest = tile % (K * n_i * n_o)
    k = rest // (n_i * n_o)
    pid_i = (rest // n_o) % n_i
    ci = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    co = (rest % n_o) * BLOCK_O + tl.arange(0, BLOCK_O)
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
    if k * n_i + pid_i == 0:
        tl.store(bsum_ptr + chunk * C_b + co, bsum, mask=co_ok)


@triton.jit
def _grads_kernel(x_ptr, start_ptr, wt_ptr, da_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                  h_ptr, dy_ptr, dwo_part_ptr, dbo_part_ptr,
                  T, C_in, C_out, dilation, rows_per_chunk, n_dx, n_dw,
                  K: tl.constexpr, ACCUMULATE: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """One launch for every gradient that needs ``da``: the first ``n_dx`` programs write
    ``dx`` tiles, the next ``n_dw`` the per-chunk ``x^T da`` (conv weight and bias), the
    rest (gated only) the per-chunk ``h^T dy`` (output projection and its bias)."""
    pid = tl.program_id(0)
    if pid < n_dx:
        _dx_tile(pid, da_ptr, start_ptr, wt_ptr, dx_ptr, T, C_in, C_out, dilation,
                 K, ACCUMULATE, BLOCK_T, BLOCK_I, BLOCK_O)
    elif pid < n_dx + n_dw:
        _tn_tile(pid - n_dx, x_ptr, start_ptr, da_ptr, dw_part_ptr, db_part_ptr, T, C_in, C_out, dilation,
                 rows_per_chunk, K, BLOCK_T, BLOCK_I, BLOCK_O)
    else:
        _tn_tile(pid - n_dx - n_dw, h_ptr, start_ptr, dy_ptr, dwo_part_ptr, dbo_part_ptr, T, C_out // 2, C_in, 0,
                 rows_per_chunk, 1, BLOCK_T, BLOCK_I, BLOCK_O)


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


def _block_opts(gated: bool, c_in: int, c_out: int) -> dict:
    """Tiles and launch options of the forward and activation-backward kernels, by channel count.

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
    wide = block_h > 128
    return {"BLOCK_T": 16 if wide else 32, "BLOCK_I": _pow2(c_in, 32), "BLOCK_O": block_h, "num_warps": 8,
                "num_stages": 1 if wide else 2}


def _grads_opts() -> dict:
    """Launch options of ``_grads_kernel`` (spill-free on sm_90 in fp32 and bf16 at 64x64 tiles)."""
    return {} if interpreting() else {"num_warps": 8, "num_stages": 2}


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


def _forward(x, start, wt, bias, out_weight, out_bias, dilation, mode):
    t, c_in = x.shape
    k, _, c_out = wt.shape
    gated = mode == "gated"
    y = _empty(t, c_in if gated else c_out, like=x)
    if t == 0:
        return y
    opts = _block_opts(gated, c_in, c_out)
    n_o = 1 if gated else triton.cdiv(c_out, opts["BLOCK_O"])
    _fwd_kernel[(triton.cdiv(t, opts["BLOCK_T"]), n_o)](
        x, start, wt, x if bias is None else bias, x if out_weight is None else out_weight,
        x if out_bias is None else out_bias, y, t, c_in, c_out, dilation,
        K=k, RELU=mode == "relu", GATED=gated, HAS_BIAS=bias is not None, HAS_OUT_BIAS=out_bias is not None,
        BLOCK_C=_channel_block(c_in), **opts,
    )
    return y


def _n_chunks(t: int, tiles_per_chunk: int, device: torch.device) -> int:
    """Row chunks of the weight-gradient sums: enough to fill the GPU (two in the interpreter,
    so the cross-chunk sum is exercised), never more than there are row tiles."""
    if interpreting() or device.type != "cuda":
        target = 2
    else:
        target = max(1, 4 * torch.cuda.get_device_properties(device).multi_processor_count // tiles_per_chunk)
    return max(1, min(target, triton.cdiv(t, _row_block())))


def _zeros_or_none(p):
    return None if p is None else torch.zeros_like(p)


def _backward(dy, x, start, wt, bias, out_weight, dilation, mode, needs):
    """Gradients ``(dx, d_weight (C_out, C_in, K), d_bias, d_out_weight, d_out_bias)`` (None when not needed)."""
    t, c_in = x.shape
    k, _, c_out = wt.shape
    gated = mode == "gated"
    dx = _empty(t, c_in, like=x)
    if t == 0:
        dw = torch.zeros_like(wt).permute(2, 1, 0)
        return dx, dw, _zeros_or_none(bias), _zeros_or_none(out_weight), x.new_zeros(c_in) if gated else None
    dy = dy.contiguous()
    h = None
    if mode == "conv":
        da = dy
    else:  # recompute the pre-activation; write da, dx's residual part and (gated) h
        da = _empty(t, c_out, like=x)
        h = _empty(t, c_out // 2, like=x) if gated else None
        opts = _block_opts(gated, c_in, c_out)
        n_o = 1 if gated else triton.cdiv(c_out, opts["BLOCK_O"])
        _act_bwd_kernel[(triton.cdiv(t, opts["BLOCK_T"]), n_o)](
            x, start, wt, x if bias is None else bias, x if out_weight is None else out_weight, dy, da, dx,
            x if h is None else h, t, c_in, c_out, dilation,
            K=k, GATED=gated, HAS_BIAS=bias is not None,
            BLOCK_C=_channel_block(c_in), **opts,
        )

    block_t, block_i, block_o = _row_block(), _channel_block(max(c_in, c_out // 2)), _channel_block(c_out)
    block_o = max(block_o, _channel_block(c_in))
    n_dx = triton.cdiv(t, block_t) * triton.cdiv(c_in, block_i)
    want_w = needs["weight"] or needs["bias"]
    want_out = gated and (needs["out_weight"] or needs["out_bias"])
    tiles_w = k * triton.cdiv(c_in, block_i) * triton.cdiv(c_out, block_o)
    tiles_out = triton.cdiv(c_out // 2, block_i) * triton.cdiv(c_in, block_o)
    n_chunks = _n_chunks(t, tiles_w, x.device)
    rows_per_chunk = triton.cdiv(triton.cdiv(t, n_chunks), block_t) * block_t
    n_chunks = triton.cdiv(t, rows_per_chunk)
    f32 = torch.float32
    dw_part = _empty(n_chunks, k, c_in, c_out, like=x, dtype=f32) if want_w else None
    db_part = _empty(n_chunks, c_out, like=x, dtype=f32) if want_w else None
    dwo_part = _empty(n_chunks, 1, c_out // 2, c_in, like=x, dtype=f32) if want_out else None
    dbo_part = _empty(n_chunks, c_in, like=x, dtype=f32) if want_out else None
    n_dw = n_chunks * tiles_w if want_w else 0
    n_out = n_chunks * tiles_out if want_out else 0
    _grads_kernel[(n_dx + n_dw + n_out,)](
        x, start, wt, da, dx, x if dw_part is None else dw_part, x if db_part is None else db_part,
        x if h is None else h, dy, x if dwo_part is None else dwo_part, x if dbo_part is None else dbo_part,
        t, c_in, c_out, dilation, rows_per_chunk, n_dx, n_dw,
        K=k, ACCUMULATE=mode != "conv", BLOCK_T=block_t, BLOCK_I=block_i, BLOCK_O=block_o, **_grads_opts(),
    )
    # Deterministic reductions over the chunk axis (no atomics anywhere).
    dw = dw_part.sum(0).permute(2, 1, 0).to(wt.dtype) if want_w else None  # (K, C_in, C_out) -> (C_out, C_in, K)
    db = db_part.sum(0).to(x.dtype) if want_w and bias is not None else None
    dwo = dwo_part.sum(0)[0].T.to(x.dtype) if want_out else None  # h^T dy is (H, C); out_weight is (C, H)
    dbo = dbo_part.sum(0).to(x.dtype) if want_out else None
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
    return _TCNFunction.apply(x, weight, bias, None, None, cu_seqlens, dilation, "conv")


def tcn_block(x, conv_weight, conv_bias=None, *, dilation=1, activation="relu", out_weight=None, out_bias=None,
              cu_seqlens=None):
    """Triton ``tcn_block`` (arguments already validated by ``hiertcn_kernels.conv``)."""
    _check_dtype(x)
    return _TCNFunction.apply(x, conv_weight, conv_bias, out_weight, out_bias, cu_seqlens, dilation, activation)
