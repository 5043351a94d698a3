"""``segment_reduce`` forward in straightforward CUDA C (``segment_reduce.cu``), built with CuPy/NVRTC."""

from __future__ import annotations

import numpy as np
import torch

from csrc_bench._build import load_module
from hiertcn_kernels._checks import REDUCES, check_segment

KERNELS = {torch.float32: "segment_reduce_f32", torch.float16: "segment_reduce_f16", torch.bfloat16: "segment_reduce_bf16"}
CODES = {"sum": 0, "mean": 1, "max": 2}  # as in segment_reduce.cu
WARPS_PER_BLOCK = 4  # one warp per segment


def segment_reduce_cuda(values: torch.Tensor, offsets: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Same contract as ``hiertcn_kernels.segment_reduce`` (forward only), CUDA fp32/fp16/bf16."""
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    check_segment(values, offsets, "values")
    if not values.is_cuda or values.dtype not in KERNELS:
        raise TypeError(f"values must be a CUDA float32/float16/bfloat16 tensor, got {values.dtype} on {values.device}")
    import cupy

    values, offsets = values.contiguous(), offsets.long().contiguous()
    n, channels = offsets.numel() - 1, values.shape[1]
    out = torch.empty(n, channels, device=values.device, dtype=values.dtype)
    if n == 0 or channels == 0:
        return out.zero_()
    kernel = load_module("segment_reduce.cu").get_function(KERNELS[values.dtype])
    grid = ((n + WARPS_PER_BLOCK - 1) // WARPS_PER_BLOCK,)
    # Pointers travel as 64-bit integers, so bf16 (no CuPy dtype) needs no array wrapper.
    args = (
        np.uint64(values.data_ptr()), np.uint64(offsets.data_ptr()), np.uint64(out.data_ptr()),
        np.int64(n), np.int32(channels), np.int32(CODES[reduce]),
    )
    with torch.cuda.device(values.device), cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
        kernel(grid, (32 * WARPS_PER_BLOCK,), args)
    return out
