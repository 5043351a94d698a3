"""The CUDA C conv-block baseline in csrc_bench: it compiles for an H100, and agrees with the reference."""

import importlib.util
import re
import subprocess

import pytest
import torch
from cuda_c import CSRC, needs_nvcc, ptx_entries

from hiertcn_kernels import reference as R

ENTRIES = {f"tcn_block_{op}_{dt}" for op in ("relu", "gate", "project_add") for dt in ("f32", "f16", "bf16")}
needs_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="needs cupy")


@needs_nvcc
def test_cuda_c_compiles_for_sm90_without_spills(tmp_path):
    assert ptx_entries("conv_block.cu", tmp_path) == ENTRIES
    done = subprocess.run(
        ["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", str(CSRC / "conv_block.cu"), "-o",
         str(tmp_path / "conv_block.cubin")],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    spills = re.findall(r"(\d+) bytes spill stores", done.stderr)
    assert len(spills) == len(ENTRIES) and set(spills) == {"0"}, done.stderr


def test_cuda_c_rejects_bad_input():
    from csrc_bench.conv import tcn_block_cuda

    x, w = torch.randn(6, 4), torch.randn(4, 4, 3)
    off = torch.tensor([0, 2, 6])
    with pytest.raises(TypeError, match="CUDA"):
        tcn_block_cuda(x, w, None, dilation=1, cu_seqlens=off)
    with pytest.raises(ValueError, match="conv_weight"):
        tcn_block_cuda(x, torch.randn(8, 4, 3), None, dilation=1, cu_seqlens=off)
    with pytest.raises(ValueError, match="cu_seqlens"):
        tcn_block_cuda(x, w, None, dilation=1, cu_seqlens=torch.tensor([0, 4, 2, 6]))
    with pytest.raises(ValueError, match="out_weight"):
        tcn_block_cuda(x, torch.randn(8, 4, 3), None, dilation=1, activation="gated", cu_seqlens=off)


def _poisoned_cache(*numels, dtype):
    """Fill and free blocks of the kernel's output sizes: the caching allocator hands them (best fit)
    to its ``torch.empty`` outputs next, so elements the kernel fails to write stay NaN."""
    blocks = [torch.full((n,), float("nan"), device="cuda", dtype=dtype) for n in numels]
    del blocks


@pytest.mark.cuda
@needs_cupy
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("taps", "dilation"), [(5, 1), (5, 3), (2, 8), (1, 1)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", ["relu", "gated"])
def test_cuda_c_matches_reference_packed(activation, dtype, taps, dilation, bias):
    from csrc_bench.conv import tcn_block_cuda

    # Empty sessions, sessions shorter and longer than the receptive field, a 64-row tile boundary
    # inside a session, and C = 130, H = 70 (not multiples of the 64/16 channel tiles).
    lengths = torch.tensor([3, 0, 70, 1, 20, 0, 2, 33])
    off = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).cuda()
    t, c, hidden = int(off[-1]), 130, 70
    c_out = c if activation == "relu" else 2 * hidden
    x = torch.randn(t, c, device="cuda").to(dtype)
    w = (torch.randn(c_out, c, taps, device="cuda") / (c * taps) ** 0.5).to(dtype)
    b = torch.randn(c_out, device="cuda").to(dtype) if bias else None
    kw = {"dilation": dilation, "activation": activation, "cu_seqlens": off}
    if activation == "gated":
        kw["out_weight"] = (torch.randn(c, hidden, device="cuda") / hidden**0.5).to(dtype)
        kw["out_bias"] = torch.randn(c, device="cuda").to(dtype) if bias else None
    _poisoned_cache(t * c, t * hidden, dtype=dtype)
    out = tcn_block_cuda(x, w, b, **kw)
    # The reference in float64 (no TF32 in cuDNN), on the same rounded inputs.
    double = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kw.items()}
    expect = R.tcn_block(x.double(), w.double(), None if b is None else b.double(), **double)
    err = (out.double() - expect).norm() / expect.norm()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert err < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.cuda
@needs_cupy
def test_cuda_c_matches_reference_padded():
    from csrc_bench.conv import tcn_block_cuda

    x = torch.randn(3, 45, 64, device="cuda")
    w = torch.randn(64, 64, 5, device="cuda") / (64 * 5) ** 0.5
    b = torch.randn(64, device="cuda")
    _poisoned_cache(x.numel(), dtype=x.dtype)
    out = tcn_block_cuda(x, w, b, dilation=4)
    expect = R.tcn_block(x.double(), w.double(), b.double(), dilation=4)
    assert out.shape == x.shape
    assert (out.double() - expect).norm() / expect.norm() < 1e-5
