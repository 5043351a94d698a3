"""The references are the spec: gradcheck them in float64 and pin their semantics."""

import pytest
import torch
import torch.nn.functional as F

from hiertcn_kernels import reference as R


def offsets_of(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)


# Packed input: cuDNN over padded buckets on CUDA, one matmul per tap on CPU (both tested here).
PACKED_CONVS = {"dispatch": lambda x, w, b, dilation, off: R.causal_conv1d(x, w, b, dilation=dilation, cu_seqlens=off),
                "buckets": R.conv_by_buckets, "taps": R.conv_by_taps}


@pytest.mark.parametrize("impl", PACKED_CONVS)
@pytest.mark.parametrize("lengths", [[3, 0, 7, 1, 12], [1, 1, 1], [0], [25], [1, 30, 2, 2]])  # the last: 3 buckets
@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 2), (5, 1), (7, 3)])
def test_packed_conv_equals_per_sequence_conv(impl, lengths, k, dilation):
    off = offsets_of(lengths)
    x = torch.randn(int(off[-1]), 4, dtype=torch.float64)
    w = torch.randn(6, 4, k, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    y = PACKED_CONVS[impl](x, w, b, dilation, off)
    for s, e in zip(off[:-1].tolist(), off[1:].tolist()):
        if s == e:
            continue
        seq = x[s:e].T[None]
        expect = F.conv1d(F.pad(seq, ((k - 1) * dilation, 0)), w, b, dilation=dilation)[0].T
        torch.testing.assert_close(y[s:e], expect)


def _per_sequence_conv(x, w, b, off, dilation):
    k = w.shape[-1]
    pieces = [F.conv1d(F.pad(x[s:e].T[None], ((k - 1) * dilation, 0)), w, b, dilation=dilation)[0].T
              for s, e in zip(off[:-1].tolist(), off[1:].tolist()) if e > s]
    return torch.cat([x.new_zeros(0, w.shape[0]), *pieces])


@pytest.mark.parametrize("impl", ["buckets", "taps"])
@pytest.mark.parametrize("wanted", [(0,), (1,), (2,), (0, 1, 2), (1, 2)])  # x, weight, bias
@pytest.mark.parametrize("bias", [True, False])
def test_packed_conv_gradients_of_what_is_asked(impl, wanted, bias):
    """Each requested gradient equals per-sequence ``F.conv1d``'s; the others are not computed (int32 offsets)."""
    off = offsets_of([4, 0, 1, 9, 2]).int()
    torch.manual_seed(0)
    x, w = torch.randn(16, 3, dtype=torch.float64), torch.randn(5, 3, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64) if bias else None
    inputs = [t for i, t in enumerate((x, w, b)) if i in wanted and t is not None]
    if not inputs:
        return
    for t in inputs:
        t.requires_grad_()
    weights = torch.randn(16, 5, dtype=torch.float64)
    y = PACKED_CONVS[impl](x, w, b, 2, off)
    grads = torch.autograd.grad((y * weights).sum(), inputs)
    expect = torch.autograd.grad((_per_sequence_conv(x, w, b, off, 2) * weights).sum(), inputs)
    for g, e in zip(grads, expect):
        torch.testing.assert_close(g, e)


def test_packed_conv_on_cpu_keeps_only_its_input_for_backward():
    """On CPU the packed conv is the per-tap matmul: backward gathers each tap's rows again rather than keeping them."""
    off = offsets_of([6, 3, 11])
    x = torch.randn(20, 8, requires_grad=True)
    w, b = torch.randn(8, 8, 5, requires_grad=True), torch.randn(8, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        R.causal_conv1d(x, w, b, dilation=2, cu_seqlens=off)
    assert sum(t.numel() * t.element_size() for t in saved) <= (x.numel() + w.numel()) * 4 + off.numel() * 8


@pytest.mark.parametrize("activation", ["relu", "gated"])
@pytest.mark.parametrize("packed", [True, False])
def test_tcn_block_gradcheck(activation, packed):
    c, h, k = 3, 2, 3
    out_c = c if activation == "relu" else 2 * h
    args = [
        torch.randn(9 if packed else 2 * 5, c, dtype=torch.float64),
        torch.randn(out_c, c, k, dtype=torch.float64),
        torch.randn(out_c, dtype=torch.float64),
    ]
    if activation == "gated":
        args += [torch.randn(c, h, dtype=torch.float64), torch.randn(c, dtype=torch.float64)]
    if not packed:
        args[0] = args[0].reshape(2, 5, c)
    args = [a.requires_grad_() for a in args]
    off = offsets_of([4, 0, 1, 4]) if packed else None

    def fn(x, w, b, ow=None, ob=None):
        return R.tcn_block(x, w, b, dilation=2, activation=activation, out_weight=ow, out_bias=ob, cu_seqlens=off)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
def test_segment_reduce_gradcheck(reduce):
    lengths = [3, 0, 1, 5, 1]
    values = torch.randn(sum(lengths), 3, dtype=torch.float64, requires_grad=True)
    off = offsets_of(lengths)
    assert torch.autograd.gradcheck(lambda v: R.segment_reduce(v, off, reduce), (values,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_segment_reduce_16_bit_adds_up_in_fp32(dtype, reduce):
    """A bf16 running sum of values in [1, 2) stops growing near 512; an fp16 length past 65,504 is inf.
    The 16-bit result must be the fp32 one rounded once, value and gradient."""
    lengths = [1000, 3, 70_000] if dtype == torch.float16 else [1000, 3, 300]
    off = offsets_of(lengths)
    gen = torch.Generator().manual_seed(0)
    exact = (1 + torch.rand(sum(lengths), 2, generator=gen, dtype=torch.float64)) / (16 if reduce == "sum" else 1)
    values = exact.to(dtype).requires_grad_()
    out = R.segment_reduce(values, off, reduce)
    want = R.segment_reduce(values.detach().double(), off, reduce)
    torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=0)
    grad = torch.ones_like(out)
    (got,) = torch.autograd.grad(out, values, grad)
    scale = 1 / off.diff().double()[:, None] if reduce == "mean" else torch.ones(len(lengths), 1, dtype=torch.float64)
    torch.testing.assert_close(got.double(), scale.repeat_interleave(off.diff(), dim=0).expand(-1, 2), rtol=1e-2, atol=0)


def test_segment_max_ties_go_to_first_and_empty_is_zero():
    values = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 6.0], [5.0, 6.0]], requires_grad=True)
    out = R.segment_reduce(values, torch.tensor([0, 2, 2, 4]), "max")
    assert out.tolist() == [[3.0, 2.0], [0.0, 0.0], [5.0, 6.0]]
    out.sum().backward()
    assert values.grad.tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    # No rows at all: zeros that stay in the autograd graph, as for mean and sum.
    no_rows = torch.zeros(0, 2, requires_grad=True)
    for reduce in ("max", "mean", "sum"):
        out = R.segment_reduce(no_rows, torch.tensor([0, 0]), reduce)
        assert out.tolist() == [[0.0, 0.0]] and out.requires_grad, reduce


def test_segment_expand_gradcheck():
    rows = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    off = offsets_of([2, 0, 3, 1])
    assert torch.autograd.gradcheck(lambda r: R.segment_expand(r, off), (rows,))


def test_padded_conv_of_empty_sequences():
    y = R.causal_conv1d(torch.randn(2, 0, 3), torch.randn(4, 3, 5), torch.randn(4))
    assert y.shape == (2, 0, 4)


@pytest.mark.parametrize("impl", PACKED_CONVS)
def test_conv_without_input_channels_is_its_bias(impl):
    """``C_in = 0``: every output row is the bias (``F.conv1d`` itself returns no channels)."""
    off = offsets_of([3, 0, 2])
    x, w = torch.randn(5, 0, requires_grad=True), torch.randn(4, 0, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = PACKED_CONVS[impl](x, w, b, 2, off)
    assert torch.equal(y, b.detach().expand(5, 4))
    padded = R.causal_conv1d(x.detach()[None], w, b)
    assert torch.equal(padded, b.detach().expand(1, 5, 4))
    grads = torch.autograd.grad(y.sum(), [x, w, b])
    assert grads[0].shape == (5, 0) and grads[1].shape == (4, 0, 3) and grads[2].tolist() == [5.0] * 4




@pytest.mark.parametrize("impl", ["padded", *PACKED_CONVS])
@pytest.mark.parametrize("dilation", [2, 3, 7, 2**40])  # 3: the first tap reads only zeros, the others not
def test_taps_past_the_longest_sequence_read_only_zeros(impl, dilation):
    """A tap shifted by the length or more reads only zeros: a dilation of 2**40 gives what a dilation
    of the longest length (7) gives, with a zero weight gradient for every tap but the last, and
    pads nothing (its (K-1) * 2**40 rows of padding would not fit in memory)."""
    off = offsets_of([7, 7] if impl == "padded" else [3, 0, 7, 1])
    x = torch.randn(int(off[-1]), 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    if impl == "padded":
        y = R.causal_conv1d(x.view(2, 7, 3), w, b, dilation=dilation).reshape(14, 5)
    else:
        y = PACKED_CONVS[impl](x, w, b, dilation, off)
    expect = _per_sequence_conv(x, w, b, off, min(dilation, 7))
    torch.testing.assert_close(y, expect)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, w, b])
    for g, e in zip(grads, torch.autograd.grad((expect * weights).sum(), [x, w, b])):
        torch.testing.assert_close(g, e)
    if dilation >= 7:
        assert grads[1].shape == w.shape and grads[1][:, :, :-1].abs().max() == 0


@pytest.mark.parametrize("impl", ["padded", *PACKED_CONVS])
def test_conv_gradgradcheck(impl):
    """Double backward (``create_graph=True``, e.g. a gradient penalty) on every path of the reference."""
    off = offsets_of([2, 0, 1, 4] if impl != "padded" else [4, 4])
    x = torch.randn(int(off[-1]), 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        if impl == "padded":
            return R.causal_conv1d(x.view(2, 4, 2), w, b, dilation=2)
        return PACKED_CONVS[impl](x, w, b, 2, off)

    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("activation", ["relu", "gated"])
def test_tcn_block_gradgradcheck(activation):
    c, h = 3, 2
    out_c = c if activation == "relu" else 2 * h
    args = [torch.randn(9, c, dtype=torch.float64), torch.randn(out_c, c, 3, dtype=torch.float64),
            torch.randn(out_c, dtype=torch.float64)]
    if activation == "gated":
        args += [torch.randn(c, h, dtype=torch.float64), torch.randn(c, dtype=torch.float64)]
    off = offsets_of([4, 0, 1, 4])

    def fn(x, w, b, ow=None, ob=None):
        return R.tcn_block(x, w, b, dilation=2, activation=activation, out_weight=ow, out_bias=ob, cu_seqlens=off)

    assert torch.autograd.gradgradcheck(fn, [a.requires_grad_() for a in args])


@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
def test_segment_ops_gradgradcheck(reduce):
    off = offsets_of([3, 0, 1, 5, 1])
    values = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: R.segment_reduce(v, off, reduce), (values,))
    rows = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda r: R.segment_expand(r, off), (rows,))
