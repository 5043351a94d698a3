"""Segment ops against their baselines, in the same run (our outputs checked against the reference first).

Run: ``pytest tests/benchmarks/test_bench_segment.py --benchmark-only``. Tests of one
``group`` race against each other; pytest-benchmark prints each one's time relative to
the fastest. ``extra_info["GB/s"]`` is the bandwidth over the bytes the op must move;
the ``copy`` entry is a device-to-device copy of the same bytes (the bandwidth ceiling).
"""

import importlib.util

import pytest
import torch

from hiertcn_kernels import reference as R
from hiertcn_kernels import segment_reduce

HAS_TORCH_SCATTER = importlib.util.find_spec("torch_scatter") is not None
HAS_CUPY = importlib.util.find_spec("cupy") is not None


def session_lengths(total, generator=None):
    """Lengths 1..20 (real sessions) summing to ``total``."""
    lengths = torch.randint(1, 21, (total // 10 + 1,), generator=generator)
    lengths = lengths[: int((lengths.cumsum(0) <= total).sum())]
    rest = total - int(lengths.sum())
    return torch.cat([lengths, torch.tensor([rest])]) if rest else lengths


DISTRIBUTIONS = {
    "sessions_1_20": session_lengths,
    "length_1": lambda total, generator=None: torch.ones(total, dtype=torch.int64),
    "few_100k": lambda total, generator=None: torch.tensor(
        [100_000] * (total // 100_000) + ([total % 100_000] if total % 100_000 else [])
    ),
}


def offsets_of(lengths, device):
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(device)


# ----------------------------------------------------------------------------- CPU: the reference is the CPU path

CPU_ROWS, CPU_CHANNELS = 2**17, 128


@pytest.mark.parametrize("impl", ["reference", "torch.segment_reduce"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_cpu_reduce(benchmark, reduce, impl):
    lengths = session_lengths(CPU_ROWS, torch.Generator().manual_seed(0))
    offsets = offsets_of(lengths, "cpu")
    values = torch.randn(CPU_ROWS, CPU_CHANNELS)
    benchmark.group = f"cpu segment_reduce {reduce} T={CPU_ROWS} C={CPU_CHANNELS} lengths 1..20"
    if impl == "reference":
        out = benchmark(R.segment_reduce, values, offsets, reduce)
    else:
        out = benchmark(torch.segment_reduce, values, reduce, lengths=lengths, axis=0)
    torch.testing.assert_close(out, R.segment_reduce(values, offsets, reduce))


# ----------------------------------------------------------------------------- CUDA: Triton vs torch (and copy)

GPU_ROWS, GPU_CHANNELS = 2**20, 128
GPU_IMPLS = ["triton", "torch.segment_reduce", "torch_scatter.segment_csr", "cuda_c", "copy"]


def _gpu_op(impl, reduce, offsets, lengths):
    if impl == "triton":
        return lambda v: segment_reduce(v, offsets, reduce)
    if impl == "torch.segment_reduce":
        return lambda v: torch.segment_reduce(v, reduce, lengths=lengths, axis=0)
    if impl == "torch_scatter.segment_csr":
        if not HAS_TORCH_SCATTER:
            pytest.skip("torch_scatter is not installed")
        from torch_scatter import segment_csr

        return lambda v: segment_csr(v, offsets, reduce=reduce)
    if impl == "cuda_c":  # csrc_bench: hand-written CUDA C, forward only
        if not HAS_CUPY:
            pytest.skip("cupy is not installed")
        from csrc_bench.segment import segment_reduce_cuda

        return lambda v: segment_reduce_cuda(v, offsets, reduce)
    raise ValueError(impl)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
def test_gpu_reduce(benchmark, dist, reduce, dtype, backward, impl):
    lengths = DISTRIBUTIONS[dist](GPU_ROWS, torch.Generator().manual_seed(0)).cuda()
    offsets = offsets_of(lengths, "cuda")
    n = lengths.numel()
    values = torch.randn(GPU_ROWS, GPU_CHANNELS, device="cuda", dtype=dtype)
    moved = (GPU_ROWS + n) * GPU_CHANNELS * values.element_size() * (2 if backward else 1)
    benchmark.group = f"cuda segment_reduce {reduce} {dist} {dtype} {'fwd+bwd' if backward else 'fwd'}"
    if impl == "copy":  # the same bytes read + written once: (rows + segments) * C elements, split evenly
        src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        run = lambda: dst.copy_(src)
    else:
        if backward and impl == "cuda_c":
            pytest.skip("the CUDA C baseline is forward only")
        op = _gpu_op(impl, reduce, offsets, lengths)
        if impl in ("triton", "cuda_c"):  # ours: check before timing (the baselines are trusted)
            expect = R.segment_reduce(values.float(), offsets, reduce)
            err = (op(values).float() - expect).norm() / expect.norm()
            assert err < (1e-5 if dtype == torch.float32 else 1e-2)
        if backward:
            values.requires_grad_()
            grad = torch.randn(n, GPU_CHANNELS, device="cuda", dtype=dtype)
            run = lambda: op(values).backward(grad)
        else:
            run = lambda: op(values)

    def timed():
        run()
        torch.cuda.synchronize()

    timed()
    benchmark.pedantic(timed, rounds=30, warmup_rounds=5)
    benchmark.extra_info["GB/s"] = moved / benchmark.stats.stats.median / 1e9
