"""``tcn_block`` forward (relu mode) in straightforward CUDA C (``conv_block.cu``), built with CuPy/NVRTC."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from hiertcn_kernels._checks import check_tcn_block

KERNELS = {torch.float32: "tcn_block_relu_f32", torch.float16: "tcn_block_relu_f16", torch.bfloat16: "tcn_block_relu_bf16"}
BLOCK_ROWS, BLOCK_OUT, THREADS = 64, 64, 256  # as in conv_block.cu


@functools.cache
def _module():
    import cupy

    return cupy.RawModule(code=Path(__file__).with_name("conv_block.cu").read_text(), options=("--std=c++17",))


def tcn_block_cuda(x, conv_weight, conv_bias=None, *, dilation=1, cu_seqlens=None) -> torch.Tensor:
    """``hiertcn_kernels.tcn_block(..., activation="relu")``, forward only, CUDA fp32/fp16/bf16.

    ``x`` is packed ``(T, C)`` with ``cu_seqlens``, or a padded ``(B, L, C)`` batch without.
    """
    check_tcn_block(x, conv_weight, conv_bias, dilation, "relu", None, None, cu_seqlens)
    if not x.is_cuda or x.dtype not in KERNELS:
        raise TypeError(f"x must be a CUDA float32/float16/bfloat16 tensor, got {x.dtype} on {x.device}")
    import cupy

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
    kernel = _module().get_function(KERNELS[x.dtype])
    grid = ((n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS, (channels + BLOCK_OUT - 1) // BLOCK_OUT)
    # Pointers travel as 64-bit integers, so bf16 (no CuPy dtype) needs no array wrapper; 0 is "no bias".
    args = (
        np.uint64(x.data_ptr()), np.uint64(offsets.data_ptr()), np.uint64(wt.data_ptr()),
        np.uint64(0 if bias is None else bias.data_ptr()), np.uint64(y.data_ptr()),
        np.int64(offsets.numel() - 1), np.int64(n_rows), np.int32(channels), np.int32(wt.shape[0]),
        np.int32(dilation),
    )
    with torch.cuda.device(x.device), cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
        kernel(grid, (THREADS,), args)
    return y.view(shape)
