"""Hand-written CUDA C (csrc_bench) against the Triton kernel and the cuDNN reference, same run.

    PYTHONPATH=. pytest tests/benchmarks/test_bench_csrc.py --benchmark-only -s

Forward of ``tcn_block`` (the CUDA C baseline is forward only; relu at dilation 1/2/4/8, gated
with H = 128 at 1/8) at T = 2^20 packed tokens in sessions of length 1..20, C = 128, K = 5. All three are checked against a float64
reference first. Ratios are time ratios against the CUDA C kernel (``cuda_c_ms / triton_ms``
> 1: Triton is faster), fastest of alternating rounds, stored in ``extra_info`` and printed.
The segment-reduce CUDA C baseline races in ``test_bench_segment.py`` (impl ``cuda_c``).
"""

import importlib.util
import time

import pytest
import torch

from hiertcn_kernels import reference as R

HAS_CUPY = importlib.util.find_spec("cupy") is not None
ROWS, CHANNELS, TAPS = 2**20, 128, 5


def _sessions(total, max_len, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (2 * total // max_len + 1,), generator=gen)
    lengths = lengths[lengths.cumsum(0) <= total]
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).cuda()


def _seconds(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("activation", "dilation"), [("relu", 1), ("relu", 2), ("relu", 4), ("relu", 8),
                                                     ("gated", 1), ("gated", 8)])
def test_cuda_c_vs_triton_vs_cudnn_tcn_block_fwd(benchmark, dtype, activation, dilation):
    if not HAS_CUPY:
        pytest.skip("cupy is not installed")
    from csrc_bench.conv import tcn_block_cuda
    from hiertcn_kernels.triton import conv as tconv

    off = _sessions(ROWS, 20)
    t = int(off[-1])
    x = torch.randn(t, CHANNELS, device="cuda").to(dtype)
    c_out = CHANNELS if activation == "relu" else 2 * CHANNELS  # gated: H = C
    w = (torch.randn(c_out, CHANNELS, TAPS, device="cuda") / (CHANNELS * TAPS) ** 0.5).to(dtype)
    b = torch.randn(c_out, device="cuda").to(dtype)
    kw = {"dilation": dilation, "activation": activation, "cu_seqlens": off}
    if activation == "gated":
        kw["out_weight"] = (torch.randn(CHANNELS, CHANNELS, device="cuda") / CHANNELS**0.5).to(dtype)
        kw["out_bias"] = torch.randn(CHANNELS, device="cuda").to(dtype)
    impls = {
        "cuda_c": lambda: tcn_block_cuda(x, w, b, **kw),
        "triton": lambda: tconv.tcn_block(x, w, b, **kw),
        "cudnn": lambda: R.tcn_block(x, w, b, **kw),
    }
    # fp32 tolerances: CUDA C is exact fp32; Triton's tl.dot and cuDNN use TF32 on the GPU.
    tolerance = {"cuda_c": 1e-5, "triton": 1e-3, "cudnn": 1e-3} if dtype == torch.float32 else dict.fromkeys(impls, 1e-2)
    with torch.inference_mode():
        double = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kw.items()}
        expect = R.tcn_block(x.double(), w.double(), b.double(), **double)
        for name, fn in impls.items():
            err = float((fn().double() - expect).norm() / expect.norm())
            assert err < tolerance[name], f"{name}: relative error {err:.3g}"
        del expect

        benchmark.group = f"cuda csrc tcn_block {activation} fwd d={dilation} {dtype}"
        benchmark.pedantic(_seconds, (impls["cuda_c"],), rounds=10, warmup_rounds=2)  # synchronised calls
        best = dict.fromkeys(impls, float("inf"))
        for _ in range(10):  # alternate, keep each one's fastest round: robust to other load
            for name, fn in impls.items():
                best[name] = min(best[name], _seconds(fn))

    flops = 2 * t * CHANNELS * c_out * TAPS + (2 * t * CHANNELS * CHANNELS if activation == "gated" else 0)
    info = {f"{name}_ms": s * 1e3 for name, s in best.items()}
    info.update({f"{name}_tflops": flops / s / 1e12 for name, s in best.items()})
    info["cuda_c/triton"] = best["cuda_c"] / best["triton"]
    info["cuda_c/cudnn"] = best["cuda_c"] / best["cudnn"]
    benchmark.extra_info.update(info, device=torch.cuda.get_device_name())
    print(f"\n{benchmark.name}: " + "  ".join(f"{k}={v:.3g}" for k, v in info.items()))
