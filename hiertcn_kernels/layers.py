"""Drop-in ``nn.Module`` layers over the functional ops (packed or padded input)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_count
from .conv import _use_triton, autocast_state, causal_conv1d, tcn_block
from .segment import segment_reduce


def _conv_init(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    # Same as nn.Conv1d's default initialisation.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight.shape[1] * weight.shape[2]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


class CausalConv1d(nn.Module):
    """Dilated causal conv; ``forward(x, cu_seqlens=None)`` with ``x`` ``(B, L, C)`` or packed ``(T, C)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__()
        in_channels, out_channels, kernel_size = (check_count(name, value) for name, value in (
            ("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)))  # fmt: skip
        self.dilation = check_count("dilation", dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the parameters afresh, as the constructor does (``nn.Conv1d``'s initialisation)."""
        _conv_init(self.weight, self.bias)

    def forward(self, x, cu_seqlens=None):
        return causal_conv1d(x, self.weight, self.bias, dilation=self.dilation, cu_seqlens=cu_seqlens)

    def extra_repr(self) -> str:
        o, i, k = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, dilation={self.dilation}, bias={self.bias is not None}"


class _Recomputed(torch.autograd.Function):
    """``fn(x, *params)`` keeping only its inputs for backward, where ``fn`` runs again under autograd.

    What the fused Triton blocks do by design (their backward recomputes from ``x``),
    for the reference path: one extra forward per block in exchange for its activations.
    Under ``create_graph=True`` the recomputed gradients keep their graph back to the
    saved inputs, so double backward works as without recomputation. The recomputation
    runs under the forward's ``torch.autocast`` state, as ``torch.utils.checkpoint`` does.
    """

    @staticmethod
    def forward(ctx, fn, x, *params):
        ctx.fn = fn
        ctx.autocast = autocast_state(x)
        ctx.save_for_backward(x, *params)
        return fn(x, *params)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        create_graph = torch.is_grad_enabled()  # True only under create_graph=True
        device_type, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            y = ctx.fn(x, *params)
        wanted = [t for t, need in zip((x, *params), needs) if need]
        grads = iter(torch.autograd.grad(y, wanted, grad, create_graph=create_graph))
        return (None, *(next(grads) if need else None for need in needs))


class TCNBlock(nn.Module):
    """Residual block: ``relu`` (Bai et al.; official HierTCN) or ``gated`` (WaveNet, ``hidden`` gate units).

    ``dropout``: channel dropout on the residual branch, as in the official
    ``TemporalBlock`` (noise shape ``(1, 1, C)``): in training, one Bernoulli mask
    over the branch's ``C`` output channels per forward call, shared by every row,
    kept channels scaled by ``1 / (1 - dropout)``; the residual path is never
    dropped. It is applied by scaling the weights that produce those channels
    (relu: the conv's output rows and bias, as ``relu(s z) = s relu(z)`` for
    ``s >= 0``; gated: ``out_weight`` rows and ``out_bias``), so the fused kernels
    run unchanged.

    ``recompute``: on the reference path keep only the block's input for backward and
    run the block again there (the fused Triton backward always does this; there the
    flag changes nothing).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 5,
        dilation: int = 1,
        activation: str = "relu",
        hidden: int | None = None,
        bias: bool = True,
        recompute: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if activation not in ("relu", "gated"):
            raise ValueError(f"activation must be 'relu' or 'gated', got {activation!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        channels, kernel_size = check_count("channels", channels), check_count("kernel_size", kernel_size)
        if hidden is not None and activation == "relu":  # the relu block's conv is (channels, channels, K)
            raise ValueError(f"hidden={hidden!r} sizes the gated block's gate; a relu block has none (leave it None)")
        hidden = channels if hidden is None else check_count("hidden", hidden)
        self.dilation = check_count("dilation", dilation)
        self.dropout = float(dropout)
        self.recompute = recompute
        self.activation = activation
        conv_out = channels if activation == "relu" else 2 * hidden
        self.conv_weight = nn.Parameter(torch.empty(conv_out, channels, kernel_size))
        self.conv_bias = nn.Parameter(torch.empty(conv_out)) if bias else None
        if activation == "gated":
            self.out_weight = nn.Parameter(torch.empty(channels, conv_out // 2))
            self.out_bias = nn.Parameter(torch.empty(channels)) if bias else None
        else:
            self.register_parameter("out_weight", None)
            self.register_parameter("out_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the parameters afresh, as the constructor does: the conv as ``nn.Conv1d``, the gated
        block's output projection Kaiming-uniform with a zero bias."""
        _conv_init(self.conv_weight, self.conv_bias)
        if self.out_weight is not None:
            nn.init.kaiming_uniform_(self.out_weight, a=math.sqrt(5))
        if self.out_bias is not None:
            nn.init.zeros_(self.out_bias)

    def forward(self, x, cu_seqlens=None):
        return self.run(x, self.effective_params(), cu_seqlens)

    def effective_params(self) -> tuple:
        """``(conv_weight, conv_bias, out_weight, out_bias)`` for one forward call: in training with
        dropout, a fresh branch-channel mask applied."""
        params = (self.conv_weight, self.conv_bias, self.out_weight, self.out_bias)
        if self.training and self.dropout > 0:
            params = self._drop_branch_channels(*params)
        return params

    def run(self, x, params: tuple, cu_seqlens=None):
        """The block on ``x`` with the given :meth:`effective_params`."""

        def block(x, conv_weight, conv_bias, out_weight, out_bias):
            return tcn_block(
                x, conv_weight, conv_bias, dilation=self.dilation, activation=self.activation,
                out_weight=out_weight, out_bias=out_bias, cu_seqlens=cu_seqlens,
            )

        if self.recompute and torch.is_grad_enabled() and not _use_triton(x):
            return _Recomputed.apply(block, x, *params)
        return block(x, *params)

    def _drop_branch_channels(self, conv_weight, conv_bias, out_weight, out_bias):
        """The parameters with the rows behind each dropped branch channel zeroed, the kept ones scaled."""
        if self.activation == "relu":
            weight, bias = conv_weight, conv_bias
        else:
            weight, bias = out_weight, out_bias
        keep = torch.empty(weight.shape[0], device=weight.device, dtype=weight.dtype).bernoulli_(1 - self.dropout)
        scale = keep / (1 - self.dropout)
        weight = weight * scale.view(-1, *[1] * (weight.dim() - 1))
        bias = None if bias is None else bias * scale
        if self.activation == "relu":
            return weight, bias, out_weight, out_bias
        return conv_weight, conv_bias, weight, bias

    def extra_repr(self) -> str:
        conv_out, c, k = self.conv_weight.shape
        extra = f", hidden={conv_out // 2}" if self.activation == "gated" else ""
        extra += ", bias=False" if self.conv_bias is None else ""
        extra += f", dropout={self.dropout}" if self.dropout else ""
        extra += ", recompute=True" if self.recompute else ""
        return f"{c}, kernel_size={k}, dilation={self.dilation}, activation={self.activation!r}{extra}"


class TemporalConvNet(nn.Module):
    """``levels`` TCN blocks with dilation ``2**level`` (the official HierTCN low level).

    ``dropout``: each block's channel dropout on its residual branch (see
    :class:`TCNBlock`; the official default is 0). ``output_dropout`` (not in
    the release): element-wise dropout on every block's output, the residual
    stream included, as between the layers of a stacked RNN; on the synthetic
    log it regularises HierTCN better than the branch dropout
    (``benchmarks/README.md``).
    ``recompute``: see :class:`TCNBlock`.
    """

    def __init__(
        self,
        channels: int,
        levels: int,
        kernel_size: int = 5,
        activation: str = "relu",
        hidden: int | None = None,
        dropout: float = 0.0,
        recompute: bool = False,
        output_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0 <= output_dropout < 1:
            raise ValueError(f"output_dropout must be in [0, 1), got {output_dropout!r}")
        levels = check_count("levels", levels)
        self.blocks = nn.ModuleList(
            TCNBlock(channels, kernel_size, 2**level, activation, hidden, recompute=recompute, dropout=dropout)
            for level in range(levels)
        )
        self.output_dropout = nn.Dropout(output_dropout) if output_dropout > 0 else nn.Identity()

    def forward(self, x, cu_seqlens=None):
        params = [block.effective_params() for block in self.blocks]  # every mask first: the RNG order of recorded runs
        for block, block_params in zip(self.blocks, params):
            x = self.output_dropout(block.run(x, block_params, cu_seqlens))
        return x

    @property
    def receptive_field(self) -> int:
        return 1 + sum((b.conv_weight.shape[-1] - 1) * b.dilation for b in self.blocks)


class SegmentAgg(nn.Module):
    """Per-session aggregation ``(T, C) -> (N, C)`` (``mean`` in the official code)."""

    def __init__(self, reduce: str = "mean"):
        super().__init__()
        if reduce not in ("mean", "sum", "max"):
            raise ValueError(f"reduce must be one of 'mean', 'sum', 'max', got {reduce!r}")
        self.reduce = reduce

    def forward(self, values, cu_seqlens=None, *, offsets=None):
        """``(N, C)`` from ``values`` ``(T, C)`` and the segments' ``cu_seqlens`` ``(N+1,)``, as the other
        layers take them (``offsets=``, ``segment_reduce``'s name, is the same argument)."""
        if (cu_seqlens is None) == (offsets is None):
            raise TypeError("SegmentAgg needs the segment offsets once: cu_seqlens (or offsets=)")
        return segment_reduce(values, offsets if cu_seqlens is None else cu_seqlens, self.reduce)

    def extra_repr(self) -> str:
        return f"reduce={self.reduce!r}"
