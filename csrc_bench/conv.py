"""``tcn_block`` forward (relu and gated) in straightforward CUDA C (``conv_block.cu``), built with CuPy/NVRTC."""

from __future__ import annotations

import numpy as np
import torch

from csrc_bench._build import load_module
from hiertcn_kernels._checks import check_tcn_block

SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
BLOCK_ROWS, BLOCK_OUT, THREADS = 64, 64, 256  # as in conv_block.cu


def _launch(name, inp, offsets, wt, bias, residual, out, c_out, dilation):
    """One ``conv_tile`` launch: ``wt`` is ``(K, C_in, width)``; ``out`` is ``(T, c_out)``."""
    import cupy

    n_rows, c_in = inp.shape
    kernel = load_module("conv_block.cu").get_function(f"{name}_{SUFFIX[inp.dtype]}")
    grid = ((n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS, (c_out + BLOCK_OUT - 1) // BLOCK_OUT)
    # Pointers travel as 64-bit integers, so bf16 (no CuPy dtype) needs no array wrapper; 0 is "none".
    args = (
        np.uint64(inp.data_ptr()), np.uint64(offsets.data_ptr()), np.uint64(wt.data_ptr()),
        np.uint64(0 if bias is None else bias.data_ptr()), np.uint64(residual.data_ptr()), np.uint64(out.data_ptr()),
        np.int64(offsets.numel() - 1), np.int64(n_rows), np.int32(c_in), np.int32(c_out), np.int32(wt.shape[0]),
        np.int32(dilation),
    )
    with torch.cuda.device(inp.device), cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
        kernel(grid, (THREADS,), args)


def tcn_block_cuda(x, conv_weight, conv_bias=None, *, dilation=1, activation="relu", out_weight=None, out_bias=None,
                   cu_seqlens=None) -> torch.Tensor:
    """``hiertcn_kernels.tcn_block``, forward only, CUDA fp32/fp16/bf16.

    ``x`` is packed ``(T, C)`` with ``cu_seqlens``, or a padded ``(B, L, C)`` batch without.
    ``relu`` is one fused launch; ``gated`` is two (conv + gate to ``h``, then ``x + h @ out_weight.T``).
    """
    check_tcn_block(x, conv_weight, conv_bias, dilation, activation, out_weight, out_bias, cu_seqlens)
    if not x.is_cuda or x.dtype not in SUFFIX:
        raise TypeError(f"x must be a CUDA float32/float16/bfloat16 tensor, got {x.dtype} on {x.device}")
    shape = x.shape
    if cu_seqlens is None:  # a padded batch is packed rows with one sequence of length L per batch row
        batch, length, channels = shape
        x = x.reshape(batch * length, channels)
        cu_seqlens = torch.arange(0, batch * length + 1, max(length, 1), device=x.device)
    x, offsets = x.contiguous(), cu_seqlens.long().contiguous()
    wt = conv_weight.permute(2, 1, 0).contiguous()  # (K, C_in, C_out): coalesced weight tiles
    bias = None if conv_bias is None else conv_bias.contiguous()
    n_rows, channels = x.shape
    y = torch.empty_like(x)
    if n_rows == 0 or channels == 0:
        return y.view(shape)
    if activation == "relu":
        _launch("tcn_block_relu", x, offsets, wt, bias, x, y, channels, dilation)
        return y.view(shape)
    hidden = out_weight.shape[1]
    h = torch.empty(n_rows, hidden, device=x.device, dtype=x.dtype)
    _launch("tcn_block_gate", x, offsets, wt, bias, x, h, hidden, dilation)
    out_wt = out_weight.t().contiguous()[None]  # (1, H, C): a 1x1 conv over h
    out_b = None if out_bias is None else out_bias.contiguous()
    _launch("tcn_block_project_add", h, offsets, out_wt, out_b, x, y, channels, 1)
    return y.view(shape)
