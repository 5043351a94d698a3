"""Conv block benchmarks: every candidate raced against its baseline in the same run.

    PYTHONPATH=. pytest tests/benchmarks/test_bench_conv.py --benchmark-only -s

CPU: the packed reference (what trains models on CPU) against a plain padded
``F.conv1d`` on the same sessions. CUDA: the fused Triton ``tcn_block`` against the
reference built on cuDNN ``conv1d``, forward+backward at T = 2^20 tokens, with peak
extra memory and achieved TFLOP/s / GB/s next to the shape's roofline on the GPU that runs it:
the datasheet dense tensor-core peak of that device (``hiertcn.bench.gpu_peak_tflops``; a measured
matmul on an unknown GPU) and its measured device-to-device copy bandwidth, both in ``extra_info``.
Every timed call synchronises, so the times are the GPU's work, not the launches.
The ratio (baseline time / candidate time, > 1 means the candidate is faster) is
printed and stored in the benchmark's ``extra_info``.
"""

import time

import pytest
import torch
import torch.nn.functional as F

from hiertcn.bench import GPU_PEAK_SOURCE, gpu_peak_tflops, measure_copy_bandwidth, measure_matmul_flops
from hiertcn_kernels import reference as R

K = 5
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def sessions(total, max_len, device, seed=0):
    """Packed offsets of sessions with lengths 1..max_len, about ``total`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (2 * total // max_len + 1,), generator=gen)
    lengths = lengths[lengths.cumsum(0) <= total]
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(device), lengths


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def synced(fn, device):
    """``fn`` followed by a device synchronisation: a timed call then covers the work, not just its launch."""

    def call():
        fn()
        sync(device)

    return call


def race(benchmark, candidate, baseline, device, rounds):
    """Benchmark ``candidate`` (each timed call synchronised), then time candidate and baseline in
    alternation (fastest round of each: robust to other load on a shared machine); record and print
    the speed ratio."""
    benchmark.pedantic(synced(candidate, device), setup=lambda: sync(device), rounds=rounds, warmup_rounds=1)
    baseline()
    mine = base = float("inf")
    for _ in range(rounds):
        mine = min(mine, timed(candidate, device))
        base = min(base, timed(baseline, device))
    benchmark.extra_info.update(candidate_ms=mine * 1e3, baseline_ms=base * 1e3, speedup=base / mine)
    print(f"\n{benchmark.name}: candidate {mine * 1e3:.2f} ms, baseline {base * 1e3:.2f} ms, "
          f"baseline/candidate {base / mine:.2f}x")
    return mine, base


def fwd_bwd(fn, inputs):
    def step():
        y = fn()
        torch.autograd.grad(y, inputs, torch.ones_like(y))

    return step


# --------------------------------------------------------------------------------------- CPU


@pytest.fixture(scope="module")
def cpu_batch():
    # One thread: the CPU numbers are ratios, and one thread keeps them stable on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    off, lengths = sessions(2**15, 20, "cpu")
    t, c = int(off[-1]), 128
    x = torch.randn(t, c, requires_grad=True)
    w = (torch.randn(c, c, K) / (c * K) ** 0.5).requires_grad_()
    b = torch.randn(c, requires_grad=True)
    # The same sessions as a padded (N, L, C) batch, gathered once outside the timing.
    valid = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    padded = x.new_zeros(len(lengths), int(lengths.max()), c)
    padded[valid] = x.detach()
    yield x, w, b, off, padded.transpose(1, 2).contiguous().requires_grad_()
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dilation", [1, 8])
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_cpu_reference_vs_padded_conv1d(benchmark, cpu_batch, dilation, backward):
    x, w, b, off, padded_ncl = cpu_batch
    benchmark.group = f"cpu conv d={dilation} {'fwd+bwd' if backward else 'fwd'}"

    def ours():
        return R.causal_conv1d(x, w, b, dilation=dilation, cu_seqlens=off)

    def plain():
        return F.conv1d(F.pad(padded_ncl, ((K - 1) * dilation, 0)), w, b, dilation=dilation)

    if backward:
        ours, plain = fwd_bwd(ours, [x, w, b]), fwd_bwd(plain, [padded_ncl, w, b])
    with torch.inference_mode(not backward):
        race(benchmark, ours, plain, "cpu", rounds=7)


# --------------------------------------------------------------------------------------- CUDA


@pytest.fixture(scope="module")
def cuda_roofline():
    """This GPU's ceilings: datasheet dense peak TFLOP/s per dtype (measured matmul if the GPU is not
    in ``hiertcn.bench.GPU_PEAK_TFLOPS``) and the measured device-to-device copy bandwidth."""
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peaks, sources = {}, {}
    for dtype, dname in DTYPE_NAMES.items():
        tflops = gpu_peak_tflops(name, dname)
        if tflops is None:
            tflops, sources[dtype] = measure_matmul_flops(device, dtype, n=4096) / 1e12, f"measured {dname} matmul"
        else:
            sources[dtype] = GPU_PEAK_SOURCE
        peaks[dtype] = tflops
    gbps = measure_copy_bandwidth(device) / 1e9
    return {"device": name, "tflops": peaks, "tflops_source": sources, "copy_gbps": gbps}


def _peak_extra_bytes(fn):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dilation", [1, 8])
@pytest.mark.parametrize("activation", ["relu", "gated"])
def test_cuda_triton_vs_reference_tcn_block(benchmark, cuda_roofline, dtype, dilation, activation):
    from hiertcn_kernels.triton import conv as tconv

    torch.manual_seed(0)
    off, _ = sessions(2**20, 20, "cuda")
    t, c = int(off[-1]), 128
    c_out = c if activation == "relu" else 2 * c
    x = torch.randn(t, c, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.randn(c_out, c, K, device="cuda") / (c * K) ** 0.5).to(dtype).requires_grad_()
    b = torch.randn(c_out, device="cuda", dtype=dtype, requires_grad=True)
    params = [x, w, b]
    kw = {"dilation": dilation, "activation": activation, "cu_seqlens": off}
    if activation == "gated":
        ow = (torch.randn(c, c, device="cuda") / c**0.5).to(dtype).requires_grad_()
        ob = torch.randn(c, device="cuda", dtype=dtype, requires_grad=True)
        params += [ow, ob]
        kw.update(out_weight=ow, out_bias=ob)
    ours = fwd_bwd(lambda: tconv.tcn_block(x, w, b, **kw), params)
    ref = fwd_bwd(lambda: R.tcn_block(x, w, b, **kw), params)
    benchmark.group = f"cuda tcn_block {activation} d={dilation} {dtype}"
    mine, _ = race(benchmark, ours, ref, "cuda", rounds=10)

    mem_ours, mem_ref = _peak_extra_bytes(ours), _peak_extra_bytes(ref)
    # Algorithmic work of forward + backward: conv forward, dx and d(weight) (3 convs), plus the
    # 1x1 projection (3 GEMMs) for gated. Minimum traffic: read x (fwd), write y, read x and dy, write dx.
    flops = 3 * 2 * t * c * c_out * K + (3 * 2 * t * c * (c_out // 2) if activation == "gated" else 0)
    nbytes = 5 * t * c * x.element_size()
    peak_tflops, copy_gbps = cuda_roofline["tflops"][dtype], cuda_roofline["copy_gbps"]
    roofline_s = max(flops / (peak_tflops * 1e12), nbytes / (copy_gbps * 1e9))
    benchmark.extra_info.update(device=cuda_roofline["device"], peak_tflops_source=cuda_roofline["tflops_source"][dtype])
    info = {
        "peak_tflops": peak_tflops, "copy_gbps": copy_gbps,
        "peak_extra_mb": mem_ours / 2**20, "ref_peak_extra_mb": mem_ref / 2**20, "memory_ratio": mem_ours / mem_ref,
        "tflops": flops / mine / 1e12, "gbps": nbytes / mine / 1e9, "roofline_ms": roofline_s * 1e3,
        "fraction_of_roofline": roofline_s / mine,
    }
    benchmark.extra_info.update(info)
    print("  ".join(f"{k}={v:.3g}" for k, v in info.items()))
