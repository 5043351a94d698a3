"""Plain PyTorch references: the executable spec of every op.

Differentiable (gradchecked in float64), CPU and CUDA. They are also the CPU
training path, so they are written to be fast there: padded convolutions run
through ``F.conv1d`` (mkldnn on CPU, cuDNN on CUDA); packed ones run on cuDNN
over padded buckets on CUDA and as one matmul over each row's taps on CPU.
Arguments are assumed valid; the public functions validate first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def causal_conv1d(x, weight, bias=None, *, dilation=1, cu_seqlens=None):
    """``y[t] = bias + sum_k weight[:, :, k] @ x[t - (K-1-k)*dilation]``, zero before a sequence's start."""
    if cu_seqlens is None:
        return _causal_conv1d_padded(x, weight, bias, dilation)
    return _causal_conv1d_packed(x, weight, bias, dilation, cu_seqlens)


def _causal_conv1d_padded(x, weight, bias, dilation):
    if x.shape[1] == 0:  # F.conv1d rejects empty sequences
        return x.new_zeros(x.shape[0], 0, weight.shape[0]) + (0 if bias is None else bias)
    pad = (weight.shape[-1] - 1) * dilation
    y = F.conv1d(F.pad(x.transpose(1, 2), (pad, 0)), weight, bias, dilation=dilation)
    return y.transpose(1, 2)


def _causal_conv1d_packed(x, weight, bias, dilation, cu_seqlens):
    # CUDA: cuDNN over padded buckets, the plain-PyTorch baseline the fused kernels are raced
    # against. CPU: mkldnn's conv backward is slow on these small per-bucket convs; one matmul
    # over each row's taps trains HierTCN's TCN 2x faster and keeps only the input for backward.
    if x.is_cuda:
        return conv_by_buckets(x, weight, bias, dilation, cu_seqlens)
    return conv_by_taps(x, weight, bias, dilation, cu_seqlens)


def conv_by_buckets(x, weight, bias, dilation, cu_seqlens):
    """Packed causal conv: sequences gathered into padded buckets, ``F.conv1d`` per bucket, scattered back."""
    layout = bucket_layout(cu_seqlens)
    if not layout:  # no rows at all
        y = x.new_zeros(0, weight.shape[0])
        return y if bias is None else y + bias
    padded = [_causal_conv1d_padded(p, weight, bias, dilation) for p in pad_buckets(x, layout)]
    return unpad_buckets(padded, layout, x.shape[0])


def bucket_layout(cu_seqlens):
    """How packed sequences are padded: ``[(valid (n, width) bool, rows)]``, one entry per bucket.

    ``rows`` are the packed rows that ``padded[valid]`` holds, in that order. One
    bucket when padding every non-empty sequence to the longest at most doubles the
    rows (short sessions: one conv call); otherwise sequences are bucketed by length
    rounded up to a power of two, which bounds padding to 2x whatever the length
    distribution. Empty sequences are in no bucket.
    """
    offsets = cu_seqlens.long()
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    nonempty = lengths > 0
    if not bool(nonempty.any()):
        return []
    if int(nonempty.sum()) * int(lengths.max()) <= 2 * int(offsets[-1]):
        bucket = torch.zeros_like(lengths)
    else:
        bucket = torch.ceil(torch.log2(lengths.clamp(min=1).double())).long()
    layout = []
    for b in torch.unique(bucket[nonempty]).tolist():
        seq = torch.nonzero(nonempty & (bucket == b)).squeeze(1)
        pos = torch.arange(int(lengths[seq].max()), device=offsets.device)
        valid = pos[None, :] < lengths[seq, None]
        layout.append((valid, (starts[seq, None] + pos[None, :])[valid]))
    return layout


def pad_buckets(x, layout):
    """Packed ``(T, C)`` to one zero-padded ``(n, width, C)`` block per bucket of ``layout``."""
    return [x.new_zeros(*valid.shape, x.shape[1]).index_put(valid.nonzero(as_tuple=True), x[rows])
            for valid, rows in layout]


def unpad_buckets(padded, layout, total: int):
    """Inverse of :func:`pad_buckets`: the valid rows of each block back into packed ``(total, C)``."""
    y = padded[0].new_zeros(total, padded[0].shape[-1])
    for block, (valid, rows) in zip(padded, layout):
        y = y.index_put((rows,), block[valid])
    return y


def conv_by_taps(x, weight, bias, dilation, cu_seqlens):
    """Packed causal conv as one matmul over each row's taps (see :class:`_PackedCausalConv`)."""
    return _PackedCausalConv.apply(x, weight, bias, dilation, cu_seqlens)


class _PackedCausalConv(torch.autograd.Function):
    """Packed causal conv as one matmul over each row's taps (im2col): ``y = cols(x) @ W + bias``.

    ``cols(x)[t]`` is ``[x[t - (K-1)d], ..., x[t - d], x[t]]`` with zeros for taps before
    the start of ``t``'s sequence, so no padding is needed whatever the lengths. Saves
    only ``x`` and the weight: the columns (``K`` times ``x``) are gathered again in
    backward, which is two more matmuls and a gather by the transposed tap rows.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, cu_seqlens):
        ctx.dilation = dilation
        ctx.save_for_backward(x, weight, cu_seqlens)
        cols = _tap_columns(x, tap_rows(cu_seqlens, x.shape[0], weight.shape[-1], dilation))
        flat_weight = _flat_weight(weight)
        return cols @ flat_weight if bias is None else torch.addmm(bias, cols, flat_weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, cu_seqlens = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        (c_out, c_in, k), total = weight.shape, x.shape[0]
        grad_x = grad_w = grad_b = None
        if need_x:
            # Row t's tap k read x[t - (K-1-k)d]: that input row gets grad_cols[t, k] back.
            grad_cols = (grad @ _flat_weight(weight).t()).view(total * k, c_in)
            grad_cols = torch.cat([grad_cols, grad_cols.new_zeros(1, c_in)])
            readers = tap_rows(cu_seqlens, total, k, ctx.dilation, transpose=True)
            grad_x = grad_cols.index_select(0, readers.view(-1)).view(total, k, c_in).sum(1)
        if need_w:
            cols = _tap_columns(x, tap_rows(cu_seqlens, total, k, ctx.dilation))
            grad_w = (cols.t() @ grad).view(k, c_in, c_out).permute(2, 1, 0)
        if need_b:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None, None


def tap_rows(cu_seqlens, total: int, kernel_size: int, dilation: int, transpose: bool = False):
    """``(T, K)`` int64: the input row that row ``t`` reads at tap ``k``, ``t - (K-1-k)*dilation``,
    or ``T`` (a zero row) where that falls before the start of ``t``'s sequence.

    ``transpose``: for input row ``s``, the flat index ``t*K + k`` of the (row, tap) that reads
    it, or ``T*K`` where ``t`` falls past the end of ``s``'s sequence (the input gradient).
    """
    offsets = cu_seqlens.long()
    lengths = offsets.diff()
    row = torch.arange(total, device=offsets.device)
    shift = dilation * torch.arange(kernel_size - 1, -1, -1, device=offsets.device)
    if not transpose:
        start = torch.repeat_interleave(offsets[:-1], lengths, output_size=total)
        source = row[:, None] - shift
        return torch.where(source >= start[:, None], source, total)
    end = torch.repeat_interleave(offsets[1:], lengths, output_size=total)
    reader = row[:, None] + shift
    tap = torch.arange(kernel_size, device=offsets.device)
    return torch.where(reader < end[:, None], reader * kernel_size + tap, total * kernel_size)


def _tap_columns(x, rows):
    """``(T, K * C)``: row ``t`` holds ``x[rows[t, k]]`` for every tap ``k`` (a zero row for index ``T``)."""
    padded = torch.cat([x, x.new_zeros(1, x.shape[1])])
    # index_select on flat indices: several times faster than advanced indexing on CPU.
    return padded.index_select(0, rows.view(-1)).view(x.shape[0], rows.shape[1] * x.shape[1])


def _flat_weight(weight):
    """``(C_out, C_in, K)`` to ``(K * C_in, C_out)``, matching :func:`_tap_columns`' column order."""
    return weight.permute(2, 1, 0).reshape(-1, weight.shape[0])


def tcn_block(
    x, conv_weight, conv_bias=None, *, dilation=1, activation="relu", out_weight=None, out_bias=None, cu_seqlens=None
):
    """One residual TCN block: ``relu`` (Bai et al., official HierTCN) or ``gated`` (WaveNet)."""
    a = causal_conv1d(x, conv_weight, conv_bias, dilation=dilation, cu_seqlens=cu_seqlens)
    if activation == "relu":
        return torch.relu(x + torch.relu(a))
    h_dim = a.shape[-1] // 2
    h = torch.tanh(a[..., :h_dim]) * torch.sigmoid(a[..., h_dim:])
    return x + F.linear(h, out_weight, out_bias)


def segment_ids(offsets, total: int):
    """Segment index of every row: ``(T,)`` int64."""
    offsets = offsets.long()
    n = offsets.numel() - 1
    return torch.repeat_interleave(torch.arange(n, device=offsets.device), offsets.diff(), output_size=total)


def segment_reduce(values, offsets, reduce="mean"):
    """Reduce rows ``offsets[n]:offsets[n+1]`` of ``values`` to row ``n``; empty segments give zeros."""
    lengths = offsets.long().diff()
    if lengths.numel() == 0:  # torch.segment_reduce rejects zero segments
        return values[:0].clone()
    if reduce == "sum":
        return _SegmentSum.apply(values, lengths)
    if reduce == "mean":
        return _SegmentSum.apply(values, lengths) / lengths.clamp(min=1).to(values.dtype)[:, None]
    # max: the gradient goes to the first maximal row, so pick that row explicitly and gather it.
    with torch.no_grad():
        peak = torch.segment_reduce(values, "max", lengths=lengths, axis=0)
        seg = segment_ids(offsets, values.shape[0])
        row = torch.arange(values.shape[0], device=values.device)[:, None].expand_as(values)
        at_peak = peak[seg]
        # A NaN peak is the segment's NaN: it is the maximum (NaN in, NaN out, as torch's max), not a miss.
        candidate = torch.where((values == at_peak) | (values.isnan() & at_peak.isnan()), row, values.shape[0])
        first = torch.full_like(peak, values.shape[0], dtype=torch.long)
        first = first.scatter_reduce(0, seg[:, None].expand_as(values), candidate, "amin")
    empty = (lengths == 0)[:, None]
    # No rows: zeros that stay in the graph, like the mean and sum of empty segments.
    gathered = values.gather(0, first.masked_fill(empty, 0)) if values.shape[0] else values.sum(0).expand_as(peak)
    return gathered.masked_fill(empty, 0.0)


class _SegmentSum(torch.autograd.Function):
    """``torch.segment_reduce(values, "sum")`` whose backward, an expand, keeps only the lengths.

    (``torch.segment_reduce``'s own backward keeps ``values`` and the output for every reduce.)
    """

    @staticmethod
    def forward(ctx, values, lengths):
        ctx.save_for_backward(lengths)
        ctx.total = values.shape[0]
        return torch.segment_reduce(values, "sum", lengths=lengths, axis=0)

    @staticmethod
    def backward(ctx, grad):
        (lengths,) = ctx.saved_tensors
        return grad.repeat_interleave(lengths, dim=0, output_size=ctx.total), None


def segment_expand(rows, offsets):
    """``out[t] = rows[n]`` for ``offsets[n] <= t < offsets[n+1]``."""
    total = int(offsets[-1])
    return rows.repeat_interleave(offsets.long().diff(), dim=0, output_size=total)
