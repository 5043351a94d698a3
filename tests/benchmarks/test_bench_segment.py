"""Segment ops against their baselines, in the same run (our outputs checked against the reference first).

Run: ``pytest tests/benchmarks/test_bench_segment.py --benchmark-only``. Tests of one
``group`` race against each other; pytest-benchmark prints each one's time relative to
the fastest. ``extra_info["GB/s"]`` is the bandwidth over the bytes the op must move;
the ``copy`` entry is a device-to-device copy of the same bytes (the bandwidth ceiling).

CUDA timing: pytest-benchmark's own numbers time one call followed by a synchronisation (the
work plus the launch and sync latency, an upper bound); ``extra_info["device_ms"]`` is the median
of CUDA-event times of single calls queued behind a GPU spin (``torch.cuda._sleep``), so the
host's launch overhead is hidden, and ``GB/s`` is computed from it. fwd+bwd takes the gradient
with ``torch.autograd.grad`` each call (nothing accumulates into ``values.grad``).
"""

import importlib.util
import statistics

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
ROUNDS, WARMUP = 20, 3
SPIN_CYCLES = 2_000_000  # ~1 ms of GPU spin at boost clock: longer than any one call's host-side launch work


def device_seconds(run, rounds):
    """Median seconds of ``run`` on the GPU by CUDA events, each call queued behind a GPU spin so the
    events time the kernels, not the host launching them (the host enqueues while the GPU spins)."""
    spin = getattr(torch.cuda, "_sleep", None)
    pairs = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        if spin is not None:
            spin(SPIN_CYCLES)
        start.record()
        run()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs) / 1e3


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
            expect = R.segment_reduce(values.double(), offsets, reduce)  # float64: fp32 sums of 100k rows drift
            err = (op(values).double() - expect).norm() / expect.norm()
            assert err < (1e-5 if dtype == torch.float32 else 1e-2)
        if backward:  # the gradient by autograd.grad: each call does one forward and one backward, no accumulation
            values.requires_grad_()
            grad = torch.randn(n, GPU_CHANNELS, device="cuda", dtype=dtype)
            run = lambda: torch.autograd.grad(op(values), values, grad)
        else:
            run = lambda: op(values)

    def synced():  # the timed target: one call, then wait for the GPU to finish it
        run()
        torch.cuda.synchronize()

    synced()
    benchmark.pedantic(synced, rounds=ROUNDS, warmup_rounds=WARMUP)
    seconds = device_seconds(run, ROUNDS)
    benchmark.extra_info.update({"device_ms": seconds * 1e3, "GB/s": moved / seconds / 1e9,
                                 "wall_GB/s": moved / benchmark.stats.stats.median / 1e9})
