"""The CUDA C baseline in csrc_bench: it compiles for an H100, and agrees with the reference."""

import importlib.util

import pytest
import torch
from cuda_c import needs_nvcc, ptx_entries

from hiertcn_kernels import reference as R


@needs_nvcc
def test_cuda_c_compiles_for_sm90(tmp_path):
    assert ptx_entries("segment_reduce.cu", tmp_path) == {"segment_reduce_f32", "segment_reduce_f16", "segment_reduce_bf16"}


@pytest.mark.cuda
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="needs cupy")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
def test_cuda_c_matches_reference(reduce, dtype):
    from csrc_bench.segment import segment_reduce_cuda

    lengths = torch.tensor([3, 0, 7, 1, 40, 0, 2])
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).cuda()
    values = torch.randn(int(lengths.sum()), 130, device="cuda").to(dtype)
    out = segment_reduce_cuda(values, offsets, reduce)
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    expect = R.segment_reduce(values.float(), offsets, reduce)
    torch.testing.assert_close(out.float(), expect, rtol=tol, atol=tol)
