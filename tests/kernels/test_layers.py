"""The nn.Module layers: same results as the functions they wrap, on packed and padded input."""

import pytest
import torch
import torch.nn.functional as F

import hiertcn_kernels as hk


@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv1d_layer_packed_equals_each_padded_row(bias):
    torch.manual_seed(0)
    conv = hk.CausalConv1d(3, 5, kernel_size=3, dilation=2, bias=bias)
    assert (conv.bias is not None) == bias
    assert repr(conv) == f"CausalConv1d(3, 5, kernel_size=3, dilation=2, bias={bias})"
    lengths = [4, 0, 9]
    rows = [torch.randn(n, 3) for n in lengths]
    packed = conv(torch.cat(rows), cu_seqlens=torch.tensor([0, 4, 4, 13]))
    assert packed.shape == (13, 5)
    for row, out in zip(rows, packed.split(lengths)):
        if not len(row):
            assert out.shape == (0, 5)
            continue
        expect = F.conv1d(F.pad(row.T[None], (4, 0)), conv.weight, conv.bias, dilation=2)[0].T
        torch.testing.assert_close(conv(row[None])[0], expect)
        torch.testing.assert_close(out, expect)


def test_causal_conv1d_layer_trains():
    conv = hk.CausalConv1d(2, 2, kernel_size=2)
    conv(torch.randn(1, 5, 2)).sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is not None


@pytest.mark.parametrize(("levels", "kernel_size"), [(2, 5), (3, 3)])
def test_receptive_field_is_the_causal_reach(levels, kernel_size):
    torch.manual_seed(0)
    # Gated blocks: ReLU's dead units could zero a gradient path by chance.
    net = hk.TemporalConvNet(4, levels=levels, kernel_size=kernel_size, activation="gated").eval()
    field = net.receptive_field
    assert field == 1 + (kernel_size - 1) * (2**levels - 1)
    length = field + 3
    x = torch.randn(1, length, 4, requires_grad=True)
    net(x)[0, -1].sum().backward()
    reach = x.grad[0].abs().sum(1) > 0
    # The last output reads exactly the last `field` inputs: nothing earlier, everything inside.
    assert not reach[: length - field].any()
    assert reach[length - field :].all()


def test_segment_agg_layer():
    values = torch.tensor([[1.0], [3.0], [2.0], [5.0]])
    offsets = torch.tensor([0, 2, 2, 4])
    for reduce, expect in [("mean", [2.0, 0.0, 3.5]), ("sum", [4.0, 0.0, 7.0]), ("max", [3.0, 0.0, 5.0])]:
        agg = hk.SegmentAgg(reduce)
        assert repr(agg) == f"SegmentAgg(reduce={reduce!r})"
        torch.testing.assert_close(agg(values, offsets)[:, 0], torch.tensor(expect))
    with pytest.raises(ValueError, match="reduce must be one of"):
        hk.SegmentAgg("median")


def test_segment_agg_takes_cu_seqlens_like_the_other_layers():
    values, cu = torch.tensor([[1.0], [3.0], [2.0]]), torch.tensor([0, 2, 3])
    agg = hk.SegmentAgg("sum")
    expect = torch.tensor([[4.0], [2.0]])
    for out in (agg(values, cu), agg(values, cu_seqlens=cu), agg(values, offsets=cu)):
        torch.testing.assert_close(out, expect)
    for bad in ({}, {"cu_seqlens": cu, "offsets": cu}):
        with pytest.raises(TypeError, match="cu_seqlens"):
            agg(values, **bad)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: hk.CausalConv1d(0, 4, 3), "in_channels"),
        (lambda: hk.CausalConv1d(4, 4, 0), "kernel_size"),
        (lambda: hk.CausalConv1d(4, 4, 3, dilation=0), "dilation"),
        (lambda: hk.TCNBlock(4.0), "channels"),
        (lambda: hk.TCNBlock(4, activation="gated", hidden=0), "hidden"),
        (lambda: hk.TCNBlock(4, dilation=True), "dilation"),
        (lambda: hk.TemporalConvNet(4, levels=-1), "levels"),
        (lambda: hk.TemporalConvNet(4, levels=0), "levels"),
    ],
)
def test_layers_reject_bad_sizes_when_built(build, name):
    with pytest.raises(ValueError, match=f"^{name} must be a positive int"):
        build()


def test_relu_blocks_refuse_a_gate_size():
    """``hidden`` sizes the gated block's gate: a relu block would silently ignore it."""
    for build in (lambda: hk.TCNBlock(4, hidden=6), lambda: hk.TemporalConvNet(4, 2, hidden=6)):
        with pytest.raises(ValueError, match="relu block has none"):
            build()
    assert hk.TemporalConvNet(4, 2, activation="gated", hidden=6).blocks[1].out_weight.shape == (4, 6)


def test_layers_take_integer_likes_as_sizes():
    import numpy as np

    block = hk.TCNBlock(np.int64(4), kernel_size=np.int32(3), dilation=np.int64(2), activation="gated", hidden=6)
    assert block.conv_weight.shape == (12, 4, 3) and block.dilation == 2 and type(block.dilation) is int


def test_tcn_block_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be 'relu' or 'gated'"):
        hk.TCNBlock(4, kernel_size=3, activation="tanh")


def _branch(block, x):
    """The block's residual branch without dropout: ``relu(conv(x))`` or ``h @ out_weight.T + out_bias``."""
    conv = hk.causal_conv1d(x, block.conv_weight, block.conv_bias, dilation=block.dilation)
    if block.activation == "relu":
        return torch.relu(conv)
    a, b = conv.chunk(2, dim=-1)
    return (torch.tanh(a) * torch.sigmoid(b)) @ block.out_weight.T + block.out_bias


@pytest.mark.parametrize("activation", ["relu", "gated"])
@pytest.mark.parametrize("recompute", [False, True])
def test_tcn_block_dropout_drops_whole_branch_channels_never_the_residual(activation, recompute):
    torch.manual_seed(0)
    p, channels = 0.5, 32
    block = hk.TCNBlock(
        channels, kernel_size=3, dilation=2, activation=activation, dropout=p, recompute=recompute
    )
    finish = torch.relu if activation == "relu" else (lambda v: v)
    x = torch.randn(3, 9, channels)
    with torch.no_grad():
        branch = _branch(block, x)
        torch.testing.assert_close(block.eval()(x), finish(x + branch))  # eval: no dropout
    y = block.train()(x)
    y.sum().backward()
    y = y.detach()
    dropped = torch.isclose(y, finish(x)).flatten(0, 1).all(0)
    kept = torch.isclose(y, finish(x + branch / (1 - p)), atol=1e-5).flatten(0, 1).all(0)
    # Every channel is either dropped for every row and step or kept (and rescaled) for all of them.
    assert bool((dropped | kept).all())
    assert 0 < int((dropped & ~kept).sum()) < channels
    # A dropped channel gets no gradient through the weights that produce it.
    producer = block.conv_weight if activation == "relu" else block.out_weight
    row_grad = producer.grad.flatten(1).abs().sum(1)
    assert bool((row_grad[dropped] == 0).all()) and bool((row_grad[~dropped] > 0).any())


def test_dropout_is_checked_and_reaches_every_block():
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        hk.TCNBlock(4, dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        hk.TemporalConvNet(4, levels=2, dropout=-0.1)
    net = hk.TemporalConvNet(4, levels=3, dropout=0.2)
    assert [b.dropout for b in net.blocks] == [0.2] * 3
    assert "dropout=0.2" in repr(net.blocks[0])


def test_output_dropout_is_element_wise_on_every_block_output():
    torch.manual_seed(0)
    net = hk.TemporalConvNet(16, levels=2, kernel_size=3, activation="gated", output_dropout=0.5)
    x = torch.randn(2, 30, 16)
    with torch.no_grad():
        clean = net.eval()(x)
        noisy = net.train()(x)
    zeros = noisy == 0
    assert 0.3 < zeros.float().mean() < 0.7 and not (clean == 0).any()
    # Zeros fall element by element (not whole channels or steps), and what survives is rescaled.
    assert zeros.any(1).all() and not zeros.all(1).any()
    with pytest.raises(ValueError, match=r"output_dropout must be in \[0, 1\)"):
        hk.TemporalConvNet(4, levels=1, output_dropout=1.0)


def test_tcn_block_repr_shows_the_gate_width_and_a_missing_bias():
    assert repr(hk.TCNBlock(4, kernel_size=3)) == "TCNBlock(4, kernel_size=3, dilation=1, activation='relu')"
    gated = hk.TCNBlock(4, kernel_size=3, dilation=2, activation="gated", hidden=6, bias=False)
    assert repr(gated) == "TCNBlock(4, kernel_size=3, dilation=2, activation='gated', hidden=6, bias=False)"


@pytest.mark.parametrize(
    "make",
    [lambda: hk.CausalConv1d(3, 5, kernel_size=3), lambda: hk.CausalConv1d(3, 5, kernel_size=2, bias=False),
     lambda: hk.TCNBlock(4, kernel_size=3), lambda: hk.TCNBlock(4, kernel_size=3, activation="gated", hidden=3),
     lambda: hk.TCNBlock(4, kernel_size=3, activation="gated", bias=False)],
    ids=["conv", "conv-no-bias", "relu", "gated", "gated-no-bias"],
)
def test_reset_parameters_draws_what_the_constructor_draws(make):
    torch.manual_seed(7)
    layer = make()
    built = {name: p.detach().clone() for name, p in layer.named_parameters()}
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(3.0)
    torch.manual_seed(7)
    layer.reset_parameters()
    for name, p in layer.named_parameters():
        assert torch.equal(p, built[name]), name
    assert all(p.requires_grad and isinstance(p, torch.nn.Parameter) for p in layer.parameters())
