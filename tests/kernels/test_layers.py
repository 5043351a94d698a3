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


def test_tcn_block_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be 'relu' or 'gated'"):
        hk.TCNBlock(4, kernel_size=3, activation="tanh")
