"""Plain PyTorch references: the executable spec of every op.

Differentiable twice (gradchecked and gradgradchecked in float64), CPU and CUDA. They
are also the CPU training path, so they are written to be fast there: padded convolutions run
through ``F.conv1d`` (mkldnn on CPU, cuDNN on CUDA); packed ones run on cuDNN
over padded buckets on CUDA and as one matmul per tap over shifted rows on CPU.
Arguments are assumed valid; the public functions validate first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(x, weight, bias=None, *, dilation=1, cu_seqlens=None):
    """``y[t] = bias + sum_k weight[:, :, k] @ x[t - (K-1-k)*dilation]``, zero before a sequence's start."""
    if cu_seqlens is None:
        return _causal_conv1d_padded(x, weight, bias, dilation)
    return _causal_conv1d_packed(x, weight, bias, dilation, cu_seqlens)


def _causal_conv1d_padded(x, weight, bias, dilation):
    if x.shape[1] == 0 or x.shape[2] == 0:
        # F.conv1d rejects empty sequences and gives no channels at all for C_in = 0. A sum over
        # no inputs is zero: the bias alone (the product keeps x and the weight in the graph).
        y = x @ weight[:, :, -1].t()
        return y if bias is None else y + bias
    # Taps shifted by L rows or more read only padding: drop them, so a dilation past the length
    # pads at most L - 1 rows instead of (K-1)*dilation (their weight gradient is zero, via the slice).
    k = weight.shape[-1]
    first = max(0, k - 1 - (x.shape[1] - 1) // dilation)
    pad = (k - 1 - first) * dilation
    y = F.conv1d(F.pad(x.transpose(1, 2), (pad, 0)), weight[:, :, first:], bias, dilation=dilation)
    return y.transpose(1, 2)


def _causal_conv1d_packed(x, weight, bias, dilation, cu_seqlens):
    # CUDA: cuDNN over padded buckets, the plain-PyTorch baseline the fused kernels are raced
    # against. CPU: mkldnn's conv backward is slow on these small per-bucket convs; one matmul
    # per tap over shifted rows trains HierTCN's TCN 3x faster and keeps only the input for backward.
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
    """Packed causal conv as one matmul per tap over shifted rows (see :class:`_PackedCausalConv`)."""
    return _PackedCausalConv.apply(x, weight, bias, dilation, cu_seqlens)


class _PackedCausalConv(torch.autograd.Function):
    """``y = bias + sum_k x[t - (K-1-k)d] @ weight[:, :, k].T``, each tap one matmul over gathered rows.

    A tap's rows come from :func:`tap_rows` (a zero row before the start of ``t``'s
    sequence), so no padding is needed whatever the lengths, and nothing bigger
    than ``x`` is ever held. Saves only ``x`` and the weight; backward gathers the
    rows again for the weight gradient and sends the input gradient back along
    the transposed taps. The backward is made of differentiable ops, so double
    backward (``create_graph=True``) works, as on the padded path.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, cu_seqlens):
        ctx.dilation = dilation
        ctx.save_for_backward(x, weight, cu_seqlens)
        k = weight.shape[-1]
        rows, padded = tap_rows(cu_seqlens, x.shape[0], k, dilation), _with_zero_row(x)
        # The last tap reads row t itself: no gather.
        y = x @ weight[:, :, k - 1].t() if bias is None else torch.addmm(bias, x, weight[:, :, k - 1].t())
        for tap in range(k - 1):
            y.addmm_(padded.index_select(0, rows[:, tap]), weight[:, :, tap].t())
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, cu_seqlens = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        k, total = weight.shape[-1], x.shape[0]
        grad_x = grad_w = grad_b = None
        if need_x:
            # Input row s fed output row t = s + (K-1-tap)d at that tap, within s's sequence.
            readers, padded_grad = tap_rows(cu_seqlens, total, k, ctx.dilation, transpose=True), _with_zero_row(grad)
            grad_x = grad @ weight[:, :, k - 1]
            for tap in range(k - 1):
                grad_x.addmm_(padded_grad.index_select(0, readers[:, tap]), weight[:, :, tap])
        if need_w:
            rows, padded = tap_rows(cu_seqlens, total, k, ctx.dilation), _with_zero_row(x)
            grad_w = torch.empty_like(weight)
            grad_w[:, :, k - 1] = grad.t() @ x
            for tap in range(k - 1):
                grad_w[:, :, tap] = grad.t() @ padded.index_select(0, rows[:, tap])
        if need_b:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None, None


def tap_rows(cu_seqlens, total: int, kernel_size: int, dilation: int, transpose: bool = False):
    """``(T, K)`` int64: the row that row ``t`` reads at tap ``k``, ``t - (K-1-k)*dilation``,
    or ``T`` (a zero row) where that falls before the start of ``t``'s sequence.

    ``transpose``: the row that reads row ``s`` at tap ``k``, ``s + (K-1-k)*dilation``, or
    ``T`` where that falls past the end of ``s``'s sequence (for the input gradient).
    """
    offsets = cu_seqlens.long()
    lengths = offsets.diff()
    row = torch.arange(total, device=offsets.device)
    shift = dilation * torch.arange(kernel_size - 1, -1, -1, device=offsets.device)
    if transpose:
        end = torch.repeat_interleave(offsets[1:], lengths, output_size=total)
        reader = row[:, None] + shift
        return torch.where(reader < end[:, None], reader, total)
    start = torch.repeat_interleave(offsets[:-1], lengths, output_size=total)
    source = row[:, None] - shift
    return torch.where(source >= start[:, None], source, total)


def _with_zero_row(x):
    """``x`` with one zero row appended: where :func:`tap_rows` points outside a sequence."""
    return torch.cat([x, x.new_zeros(1, x.shape[1])])


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
    if reduce in ("sum", "mean"):
        return _SegmentSum.apply(values, lengths, reduce == "mean")
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
    """Segment sum (or mean) whose backward, an expand, keeps only the lengths.

    (``torch.segment_reduce``'s own backward keeps ``values`` and the output for every reduce.)
    16-bit values are summed and divided in fp32, as the kernels do: a bf16 running sum stops
    growing at 256 times its addend, and an fp16 length past 65,504 is inf.
    """

    @staticmethod
    def forward(ctx, values, lengths, mean):
        ctx.save_for_backward(lengths)
        ctx.total, ctx.mean = values.shape[0], mean
        wide = values.float() if values.element_size() < 4 else values
        out = torch.segment_reduce(wide, "sum", lengths=lengths, axis=0)
        if mean:
            out = out / lengths.clamp(min=1).to(out.dtype)[:, None]
        return out.to(values.dtype)

    @staticmethod
    def backward(ctx, grad):
        (lengths,) = ctx.saved_tensors
        if ctx.mean:
            wide = grad.float() if grad.element_size() < 4 else grad
            grad = (wide / lengths.clamp(min=1).to(wide.dtype)[:, None]).to(grad.dtype)
        return grad.repeat_interleave(lengths, dim=0, output_size=ctx.total), None, None


def segment_expand(rows, offsets):
    """``out[t] = rows[n]`` for ``offsets[n] <= t < offsets[n+1]``."""
    total = int(offsets[-1])
    return rows.repeat_interleave(offsets.long().diff(), dim=0, output_size=total)
