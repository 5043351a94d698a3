"""``hiertcn bench``: the headline comparisons at one size, and the 10k-10M scaling study.

One run of :func:`run_bench` measures, every candidate next to its baseline in the same run:

- **Kernel ops** (``tcn_block`` relu and gated, ``segment_reduce`` mean; forward + backward on
  packed sessions of 1..20 items, at each ``tokens`` size). On CUDA the candidate is the Triton
  kernel and the baseline the PyTorch reference (cuDNN ``conv1d``), plus the hand-written CUDA C
  forward kernels of ``csrc_bench`` when CuPy is importable. On CPU the candidate is the reference
  (the CPU training path) and the baseline a plain padded ``F.conv1d`` block / ``torch.segment_reduce``.
  Timed calls rotate through copies of small inputs (:data:`ROTATE_BYTES`), so caches do not
  flatter them. Each row has the median time, the ratio (baseline time / candidate time), achieved GB/s and
  TFLOP/s from the minimal cost model :func:`op_cost`, the shape's roofline bound on this device
  (:func:`device_roofline`) and the percentage of it reached, and peak memory.
- **Models**: training-step throughput (forward, full-softmax loss, backward, Adam) of HierTCN and
  GRU4Rec, each on its own training batches (HierTCN: carried-state queue lanes; GRU4Rec: whole
  users), timed in interleaved rounds so machine load hits both alike.
- **Memory vs history length**: activation memory of HierTCN on one official queue batch
  (10 windows per lane, state carried) against FlatTCN on the same users' whole histories.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` growth during the call; on CPU (no allocator
statistics) the bytes of the tensors autograd saves for backward, the part that grows with the input.

:func:`scaling_study` (``hiertcn bench --scaling``) trains HierTCN and GRU4Rec on synthetic XING logs
of 10k..10M interactions, each (size, model) in a fresh process under a time budget.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

KERNEL_SIZE = 5
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _check_positive_int(name: str, value) -> None:
    """``ValueError`` naming ``name`` (the option, e.g. ``channels (--channels)``) unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_positive_ints(name: str, values) -> None:
    """``ValueError`` naming ``name`` unless ``values`` is a non-empty list of ints >= 1."""
    if isinstance(values, str | bytes) or not values or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in values
    ):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")


# ---------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable, device: torch.device) -> float:
    """Wall seconds of one call: CUDA events on a GPU (device time), ``perf_counter`` on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def interleaved_medians(
    fns: dict[str, Callable], *, repeats: int, warmup: int = 1, device: torch.device, progress=None
) -> dict[str, float]:
    """Median seconds per call of each fn, timed in rounds that call every fn once.

    The order rotates each round, so a burst of load from elsewhere on a shared machine slows
    every candidate alike instead of whichever happened to run then.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            times[name].append(_seconds(fns[name], device))
        if progress is not None:
            progress.update(1)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---------------------------------------------------------------------------------------------- roofline

# Dense (no sparsity) peak FLOP/s from the vendor datasheets (NVIDIA H100, H200 and A100 datasheets,
# boost clock). fp32 is the TF32 tensor-core rate: ``tl.dot`` and cuDNN run fp32 convolutions on
# TF32 by default. Matched against ``torch.cuda.get_device_name`` in order (H100 PCIe before H100).
GPU_PEAK_TFLOPS = {
    "H200": {"fp32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 494.7, "bf16": 989.4, "fp16": 989.4},  # SXM5
    "A100": {"fp32": 156.0, "bf16": 312.0, "fp16": 312.0},
}
GPU_PEAK_SOURCE = "vendor datasheet, dense tensor-core peak (fp32 = TF32)"


@dataclass(frozen=True)
class Roofline:
    """Peak compute and bandwidth of a device; ``bound_s`` is the fastest a (flops, bytes) op can run."""

    device: str
    dtype: str
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s, counting bytes read plus bytes written
    flops_source: str
    bandwidth_source: str

    def bound_s(self, flops: float, nbytes: float) -> float:
        return max(flops / self.peak_flops, nbytes / self.bandwidth)


def gpu_peak_tflops(name: str, dtype: str) -> float | None:
    """Datasheet dense peak TFLOP/s of a known GPU (by device name), None for an unknown one."""
    for key, peaks in GPU_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return peaks[dtype]
    return None


def measure_copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted), median of ``repeats``."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = interleaved_medians({"copy": lambda: dst.copy_(src)}, repeats=repeats, device=device)["copy"]
    return 2 * nbytes / seconds


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an ``n x n`` matmul (2 n^3 FLOPs), median of ``repeats``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = interleaved_medians({"mm": lambda: a @ b}, repeats=repeats, device=device)["mm"]
    return 2 * n**3 / seconds


def device_roofline(device: torch.device, dtype: str = "fp32") -> Roofline:
    """The roofline of ``device``: datasheet FLOP/s on known GPUs (else measured), measured copy GB/s."""
    bandwidth = measure_copy_bandwidth(device, nbytes=(256 if device.type == "cuda" else 64) * 2**20)
    copy_source = "measured device-to-device copy" if device.type == "cuda" else "measured memory copy"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = gpu_peak_tflops(name, dtype)
        if tflops is not None:
            return Roofline(name, dtype, tflops * 1e12, bandwidth, GPU_PEAK_SOURCE, copy_source)
    else:
        name = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    flops = measure_matmul_flops(device, DTYPES[dtype], n=4096 if device.type == "cuda" else 1024)
    return Roofline(name, dtype, flops, bandwidth, f"measured {dtype} matmul", copy_source)


# ---------------------------------------------------------------------------------------------- cost model

KERNEL_OPS = ("tcn_block(relu)", "tcn_block(gated)", "segment_reduce(mean)")


def op_cost(op: str, *, tokens: int, channels: int, segments: int, element_size: int = 4,
            kernel_size: int = KERNEL_SIZE) -> tuple[int, int]:  # fmt: skip
    """``(flops, bytes)`` an ideal forward + backward of ``op`` must do; the basis of GB/s, TFLOP/s, roofline.

    Minimal model: every activation tensor crosses memory once per pass that needs it, weights
    are read once and their gradients written once, recomputation and elementwise FLOPs are free.

    - ``tcn_block(relu)``, ``C`` channels, ``K`` taps: FLOPs = 3 convolutions (forward, grad input,
      grad weight) of ``2 T C C K`` each. Bytes = ``5 T C`` activations (forward reads x, writes y;
      backward reads x and dy, writes dx) + 2 ``C C K`` weights (read w, write dw), times the size.
    - ``tcn_block(gated)``, hidden ``H = C``: the conv has ``2H`` outputs (``3 * 2 T 2H C K``) plus the
      ``H -> C`` projection (``3 * 2 T H C``); bytes as relu with ``2 (2H C K + C H)`` weights.
    - ``segment_reduce(mean)`` over ``N`` segments: FLOPs = ``T C`` adds forward + ``T C`` scales
      backward. Bytes = ``T C`` read + ``N C`` written forward, ``N C`` read + ``T C`` written backward,
      plus the ``N + 1`` int64 offsets once per pass.
    """
    t, c, k = tokens, channels, kernel_size
    if op == "tcn_block(relu)":
        return 3 * 2 * t * c * c * k, (5 * t * c + 2 * c * c * k) * element_size
    if op == "tcn_block(gated)":
        h = c
        flops = 3 * 2 * t * (2 * h) * c * k + 3 * 2 * t * h * c
        return flops, (5 * t * c + 2 * (2 * h * c * k + c * h)) * element_size
    if op == "segment_reduce(mean)":
        return 2 * t * c, 2 * (t * c + segments * c) * element_size + 2 * (segments + 1) * 8
    raise ValueError(f"op must be one of {KERNEL_OPS}, got {op!r}")


# ---------------------------------------------------------------------------------------------- memory


def saved_tensor_bytes(fn: Callable, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs (``exclude``: not counted)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip and t.numel():
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_memory_bytes(fn: Callable, device: torch.device, exclude=()) -> tuple[int, str]:
    """``(bytes, method)``: CUDA allocator peak growth during ``fn``; on CPU autograd's saved tensors."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "cuda_max_memory_allocated"
    return saved_tensor_bytes(fn, exclude), "autograd_saved_tensors"


# ---------------------------------------------------------------------------------------------- kernel ops


def packed_lengths(tokens: int, seed: int = 0, max_len: int = 20) -> torch.Tensor:
    """Session lengths 1..``max_len`` (uniform) summing to at most ``tokens``; at least one session."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (2 * tokens // max_len + 2,), generator=gen)
    keep = max(1, int((lengths.cumsum(0) <= tokens).sum()))
    return lengths[:keep]


@contextlib.contextmanager
def backend(name: str):
    """Force ``HIERTCN_BACKEND`` for the duration (the ops read it at each call)."""
    before = os.environ.get("HIERTCN_BACKEND")
    os.environ["HIERTCN_BACKEND"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HIERTCN_BACKEND", None)
        else:
            os.environ["HIERTCN_BACKEND"] = before


def _in_backend(name: str, fn: Callable) -> Callable:
    def call(*args):
        with backend(name):
            return fn(*args)

    return call


# Small inputs would stay in cache between timed calls; each call takes the next of several input
# copies (weights shared, as in training) until the copies together pass this many bytes.
ROTATE_BYTES = 64 * 2**20
MAX_INPUT_COPIES = 16


@dataclass
class KernelCase:
    """Implementations of one op on one input: name -> closure (fwd+bwd unless the name says otherwise)."""

    impls: dict[str, Callable]  # the first one is the candidate
    baseline: str
    inputs: list[torch.Tensor]  # every input tensor (left out of the memory accounting)
    tokens: int
    segments: int
    copies: int  # input copies the closures rotate through

    @property
    def candidate(self) -> str:
        return next(iter(self.impls))


def _rotating(fn: Callable, copies: list) -> Callable:
    """``fn(copy)`` on the next input copy at each call."""
    turn = [0]

    def step():
        fn(copies[turn[0] % len(copies)])
        turn[0] += 1

    return step


def kernel_case(op: str, tokens: int, channels: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The :class:`KernelCase` of ``op`` on packed sessions of 1..20 items, about ``tokens`` in all.

    Inputs are random (never zeros); the padded copies the CPU baseline takes are gathered here,
    outside any timing.
    """
    from hiertcn_kernels import reference as R
    from hiertcn_kernels import segment_reduce, tcn_block

    if op not in KERNEL_OPS:
        raise ValueError(f"op must be one of {KERNEL_OPS}, got {op!r}")
    _check_positive_int("tokens", tokens)
    _check_positive_int("channels", channels)
    gen = torch.Generator().manual_seed(seed)
    lengths = packed_lengths(tokens, seed)
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(device)
    t = int(lengths.sum())
    gpu = device.type == "cuda"
    n_copies = max(1, min(MAX_INPUT_COPIES, math.ceil(ROTATE_BYTES / (t * channels * dtype.itemsize))))

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device, dtype).requires_grad_()

    xs = [rand(t, channels) for _ in range(n_copies)]
    weights: list[torch.Tensor] = []
    kw: dict = {}
    if op != "segment_reduce(mean)":
        activation = op[len("tcn_block(") : -1]
        c_out = channels if activation == "relu" else 2 * channels
        weights = [rand(c_out, channels, KERNEL_SIZE, scale=(channels * KERNEL_SIZE) ** -0.5), rand(c_out, scale=0.1)]
        kw = {"dilation": 2, "activation": activation}
        if activation == "gated":
            weights += [rand(channels, channels, scale=channels**-0.5), rand(channels, scale=0.1)]
            kw.update(out_weight=weights[2], out_bias=weights[3])

    if op == "segment_reduce(mean)":
        def packed(x):
            return segment_reduce(x, cu, "mean")
    else:
        def packed(x):
            return tcn_block(x, *weights[:2], cu_seqlens=cu, **kw)

    def fwd_bwd(x, forward=packed):
        y = forward(x)
        torch.autograd.grad(y, [x, *weights], torch.ones_like(y))

    candidate = "triton" if gpu else "reference"
    impls = {candidate: _rotating(_in_backend(candidate, fwd_bwd), xs)}
    inputs = [*xs, *weights]
    if gpu:
        impls["reference"] = _rotating(_in_backend("reference", fwd_bwd), xs)
    elif op == "segment_reduce(mean)":
        lengths_dev = lengths.to(device)
        impls["torch.segment_reduce"] = _rotating(
            partial(fwd_bwd, forward=lambda x: torch.segment_reduce(x, "mean", lengths=lengths_dev, axis=0)), xs
        )
    else:
        valid = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).to(device)
        padded = []
        for x in xs:
            p = x.new_zeros(len(lengths), int(lengths.max()), channels)
            p[valid] = x.detach()
            padded.append(p.requires_grad_())
        impls["padded F.conv1d"] = _rotating(partial(fwd_bwd, forward=lambda p: R.tcn_block(p, *weights[:2], **kw)),
                                             padded)  # fmt: skip
        inputs += padded
    if gpu and _has_cupy():  # forward only: the CUDA C kernels have no backward
        if op == "segment_reduce(mean)":
            from csrc_bench.segment import segment_reduce_cuda

            impls["cuda_c(fwd only)"] = _rotating(lambda x: segment_reduce_cuda(x.detach(), cu, "mean"), xs)
        else:
            from csrc_bench.conv import tcn_block_cuda

            plain = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
            w, b = (v.detach() for v in weights[:2])
            impls["cuda_c(fwd only)"] = _rotating(lambda x: tcn_block_cuda(x.detach(), w, b, cu_seqlens=cu, **plain), xs)
    return KernelCase(impls, list(impls)[1], inputs, t, len(lengths), n_copies)


def _has_cupy() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


def bench_kernels(
    tokens_list: list[int], *, channels: int = 128, repeats: int = 5, device: torch.device, dtype: str = "fp32",
    roofline: Roofline, progress: bool = False,
) -> list[dict]:  # fmt: skip
    """One row per (op, tokens, implementation); see the module docstring and :func:`op_cost`."""
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype (--dtype) must be one of {tuple(DTYPES)}, got {dtype!r}")
    _check_positive_ints("tokens (--tokens)", tokens_list)
    _check_positive_int("channels (--channels)", channels)
    _check_positive_int("repeats (--steps)", repeats)
    torch_dtype = DTYPES[dtype]
    rows = []
    bar = tqdm(total=len(KERNEL_OPS) * len(tokens_list) * repeats, desc="kernel ops", disable=not progress)
    for tokens in tokens_list:
        for op in KERNEL_OPS:
            case = kernel_case(op, tokens, channels, device, torch_dtype)
            medians = interleaved_medians(case.impls, repeats=repeats, device=device, progress=bar)
            flops, nbytes = op_cost(op, tokens=case.tokens, channels=channels, segments=case.segments,
                                    element_size=case.inputs[0].element_size())  # fmt: skip
            bound = roofline.bound_s(flops, nbytes)
            for impl, seconds in medians.items():
                role = {case.candidate: "candidate", case.baseline: "baseline"}.get(impl, "extra")
                memory, method = peak_memory_bytes(case.impls[impl], device, exclude=case.inputs)
                row = {
                    "op": op, "impl": impl, "role": role, "tokens": case.tokens, "segments": case.segments,
                    "input_copies": case.copies, "channels": channels, "dtype": dtype, "ms": 1e3 * seconds,
                    "peak_bytes": memory, "memory_method": method,
                    "pass": "fwd" if impl.startswith("cuda_c") else "fwd+bwd",
                }  # fmt: skip
                if role == "candidate":
                    row["ratio"] = medians[case.baseline] / seconds
                if row["pass"] == "fwd+bwd":  # the cost model is forward + backward
                    row.update(flops=flops, bytes=nbytes, gbps=nbytes / seconds / 1e9, tflops=flops / seconds / 1e12,
                               roofline_ms=1e3 * bound, roofline_pct=100 * bound / seconds)  # fmt: skip
                rows.append(row)
    bar.close()
    return rows


# ---------------------------------------------------------------------------------------------- models


def _train_step(step_loss, optimizer, batch, state):
    """One optimiser step of ``step_loss`` (a :class:`hiertcn.train.LossStep`); returns the carried
    state (detached) for the next batch."""
    loss, state = step_loss(batch, state)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return state


def model_step(name: str, dataset, config, loss_fn, device: torch.device, batch=None):
    """``(step, model, batch)``: ``step()`` is one optimiser step of a fresh ``name`` (seeded by
    ``config.seed``, built with ``config.model_config``) on ``batch``, by default its first training
    batch (:func:`hiertcn.train.batch_source`); the same batch and initial state every call.
    A model with nothing to train (moving average) runs its forward and loss only."""
    from .models import build_model
    from .train import LossStep, batch_source, build_adam

    torch.manual_seed(config.seed)
    model = build_model(name, n_items=dataset.csr.n_items, **config.model_config.get(name, {})).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_adam(trainable, lr=config.lr) if trainable else None
    if batch is None:
        batch = next(iter(batch_source(model, dataset, config, loss_fn=loss_fn).batches(0)))
    batch = batch.to(device)
    state = model.init_state(batch.n_lanes, device) if model.carries_state else None
    step_loss = LossStep(model, loss_fn)

    def step():
        if optimizer is None:
            step_loss(batch, state)
            return
        _train_step(step_loss, optimizer, batch, state)

    return step, model, batch


def bench_models(dataset, config, names: list[str], *, repeats: int = 3, progress: bool = False) -> dict[str, dict]:
    """Training-step throughput per model on its first training batch, interleaved; ``speedup_vs_gru4rec``.

    Each model gets the batches it trains on (:func:`hiertcn.train.batch_source`): queue lanes
    for the models that carry state, whole users for the others. ``interactions_per_s`` is the
    batch's interactions over its median step time, every model timed in the same interleaved
    rounds after the same warm-up, so ``speedup_vs_gru4rec`` (a model's rate over GRU4Rec's)
    compares steady-state steps alike. ``peak_bytes`` is the step's memory (see :func:`peak_memory_bytes`).
    """
    from tqdm.auto import tqdm

    from .train import resolve_device, training_loss

    device = resolve_device(config.device)
    loss_fn = training_loss(config.loss, dataset)
    steps, info = {}, {}
    for name in names:
        step, model, batch = model_step(name, dataset, config, loss_fn, device)
        steps[name] = step
        memory, method = peak_memory_bytes(step, device, exclude=list(model.parameters()))
        info[name] = {"tokens": batch.n_tokens, "peak_bytes": memory, "memory_method": method,
                      "batching": "queue lanes" if model.carries_state else "whole users"}  # fmt: skip
    with tqdm(total=repeats, desc="model steps", disable=not progress) as bar:
        medians = interleaved_medians(steps, repeats=repeats, device=device, progress=bar)
    results = {}
    for name, seconds in medians.items():
        row = {"step_ms": 1e3 * seconds, "interactions_per_s": info[name]["tokens"] / seconds, **info[name]}
        results[name] = row
    if "gru4rec" in results:
        for row in results.values():
            row["speedup_vs_gru4rec"] = row["interactions_per_s"] / results["gru4rec"]["interactions_per_s"]
    return results


def fixed_history_csr(n_users: int, events_per_user: int, n_items: int = 2000, seed: int = 0,
                      session_lengths: np.ndarray | None = None):  # fmt: skip
    """Users with exactly ``events_per_user`` events, random items, in sessions of 1..20 items (uniform) or of
    lengths drawn from ``session_lengths`` (an empirical distribution)."""
    from hiertcn_kernels.packing import SessionCSR

    rng = np.random.default_rng(seed)
    user_ptr, session_ptr = [0], [0]
    for _ in range(n_users):
        left = events_per_user
        while left:
            drawn = rng.integers(1, 21) if session_lengths is None else rng.choice(session_lengths)
            length = min(left, int(drawn))
            session_ptr.append(session_ptr[-1] + length)
            left -= length
        user_ptr.append(len(session_ptr) - 1)
    n = session_ptr[-1]
    return SessionCSR(
        user_ptr=np.array(user_ptr), session_ptr=np.array(session_ptr), item=rng.integers(0, n_items, n),
        timestamp=np.cumsum(rng.integers(1, 4000, n)), user_ids=np.arange(n_users), item_ids=np.arange(n_items),
    )  # fmt: skip


def memory_vs_history(history_lengths: list[int], *, n_users: int = 8, n_items: int = 2000,
                      device: torch.device, progress: bool = False) -> list[dict]:  # fmt: skip
    """Per history length: HierTCN on one official queue batch vs FlatTCN on the users' whole histories.

    The queue batch is the first batch of :class:`~hiertcn.batching.QueueBatcher` with one lane
    per user and 10 windows per lane (state carried across batches, so its memory does not grow
    with the history); FlatTCN must see each whole history at once. Memory is that of one forward
    and backward of the model body (item ids to user embeddings; the scoring head costs the same
    per token for every model and is left out): see :func:`peak_memory_bytes`.
    """
    from tqdm.auto import tqdm

    from .batching import QueueBatcher, user_batches
    from .models import build_model

    rows = []
    for length in tqdm(history_lengths, desc="memory vs history", disable=not progress):
        csr = fixed_history_csr(n_users, length, n_items)
        queue = next(QueueBatcher(csr, n_queues=n_users, sessions_per_lane=10, shuffle=False).batches(0))
        (whole,) = list(user_batches(csr, batch_users=n_users))
        row = {"history": length, "users": n_users}
        for key, name, batch in (("hiertcn_queue", "hiertcn", queue), ("flat_tcn_whole", "flat_tcn", whole)):
            torch.manual_seed(0)
            model = build_model(name, n_items=n_items).to(device)
            batch = batch.to(device)

            def fwd_bwd(model=model, batch=batch):
                state = model.init_state(batch.n_lanes, device) if model.carries_state else None
                user_emb, _ = model(batch, state)
                user_emb.sum().backward()

            row[f"{key}_bytes"], row["memory_method"] = peak_memory_bytes(fwd_bwd, device, list(model.parameters()))
            row[f"{key}_tokens"] = batch.n_tokens
        row["ratio"] = row["hiertcn_queue_bytes"] / row["flat_tcn_whole_bytes"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- one run


def git_commit(path: str | Path = ".") -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` when files changed), None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=path, capture_output=True, text=True, check=False)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)))
    return info


def run_bench(dataset, config, *, models: list[str], tokens: list[int], channels: int, history_lengths: list[int],
              repeats: int, dtype: str = "fp32", progress: bool = False) -> dict:  # fmt: skip
    """Everything ``hiertcn bench`` measures, as one JSON-able dict (without command/commit).

    Every option is checked before anything runs: a ``ValueError`` names the bad one.
    """
    from .train import resolve_device

    if dtype not in DTYPES:
        raise ValueError(f"dtype (--dtype) must be one of {tuple(DTYPES)}, got {dtype!r}")
    _check_positive_ints("tokens (--tokens)", tokens)
    _check_positive_ints("history_lengths (--history-lengths)", history_lengths)
    _check_positive_int("channels (--channels)", channels)
    _check_positive_int("repeats (--steps)", repeats)
    if "gru4rec" not in models:
        models = [*models, "gru4rec"]  # the baseline of the throughput ratio runs in the same process
    device = resolve_device(config.device)
    roofline = device_roofline(device, dtype)
    return {
        "device": {**device_info(device), "roofline": asdict(roofline)},
        "kernels": bench_kernels(tokens, channels=channels, repeats=repeats, device=device, dtype=dtype,
                                 roofline=roofline, progress=progress),
        "models": bench_models(dataset, config, models, repeats=repeats, progress=progress),
        "memory_vs_history": memory_vs_history(history_lengths, device=device, progress=progress),
    }


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_table(result: dict) -> str:
    """The one table ``hiertcn bench`` prints: kernel ops, models, memory vs history."""
    roof = result["device"]["roofline"]
    head = (f"{'row':<40}{'impl':<20}{'ms':>10}{'ratio':>8}{'GB/s':>9}{'TFLOP/s':>9}{'roof ms':>10}"
            f"{'% roof':>8}{'peak MiB':>10}")  # fmt: skip
    device = (f"device: {roof['device']}; roofline {roof['peak_flops'] / 1e12:.3g} TFLOP/s ({roof['flops_source']}), "
              f"{roof['bandwidth'] / 1e9:.3g} GB/s ({roof['bandwidth_source']})")  # fmt: skip
    lines = [device, head, "-" * len(head)]
    for r in result["kernels"]:
        lines.append(
            f"{r['op'] + ' T=' + str(r['tokens']) + ' ' + r['pass']:<40}{r['impl']:<20}{r['ms']:>10.3f}"
            f"{_fmt(r.get('ratio'), '.2f'):>8}{_fmt(r.get('gbps'), '.2f'):>9}{_fmt(r.get('tflops'), '.4f'):>9}"
            f"{_fmt(r.get('roofline_ms'), '.3f'):>10}{_fmt(r.get('roofline_pct'), '.1f'):>8}"
            f"{r['peak_bytes'] / 2**20:>10.2f}"
        )
    for name, r in result["models"].items():
        lines.append(
            f"{'train step ' + name + ' (' + str(r['tokens']) + ' tok)':<40}{r['batching']:<20}{r['step_ms']:>10.1f}"
            f"{_fmt(r.get('speedup_vs_gru4rec'), '.2f'):>8}{'':>9}{'':>9}{'':>10}{'':>8}{r['peak_bytes'] / 2**20:>10.2f}"
        )
    for r in result["memory_vs_history"]:
        for key, label in (("flat_tcn_whole", "flat_tcn whole"), ("hiertcn_queue", "hiertcn queue")):
            ratio = _fmt(r["ratio"], ".3f") if key == "hiertcn_queue" else ""
            lines.append(f"{'memory history=' + str(r['history']):<40}{label:<20}{'':>10}{ratio:>8}{'':>9}{'':>9}"
                         f"{'':>10}{'':>8}{r[key + '_bytes'] / 2**20:>10.2f}")  # fmt: skip
    lines.append(
        "ratio: kernels = baseline ms / candidate ms (first impl of each op is the candidate); train step = "
        "interactions/s vs gru4rec; memory = hiertcn queue / flat_tcn whole. Peak memory: "
        + ("CUDA allocator peak growth." if result["device"]["type"] == "cuda" else "autograd saved tensors (CPU).")
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- scaling study


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def epoch_estimate(step_seconds: list[float], step_tokens: list[int], *, epoch_tokens: int, finished: bool,
                   warmup_steps: int) -> dict:  # fmt: skip
    """Epoch time and throughput from per-step timings, by one rule for every model.

    A finished epoch reports its measured time. An unfinished one reports the PROJECTED time
    (``projected: True``): its measured steps plus the epoch's remaining interactions at the
    steady-state rate, the interactions/s of the steps after the first ``warmup_steps`` when at
    least ``max(1, warmup_steps)`` steps follow them, else of all its steps.

    Either way ``interactions_per_s`` is ``epoch_tokens / epoch_s``: the whole epoch's rate, warm-up
    included once. Two models on the same log thus compare like with like (the ratio of their rates
    is the inverse ratio of their epoch times), however many steps each takes: a rate over a
    finished epoch's post-warm-up steps alone would, for a short epoch, time just its small last
    batch for one model and all the steps for another.
    """
    if len(step_seconds) != len(step_tokens) or not step_seconds:
        raise ValueError("step_seconds and step_tokens must be non-empty and of equal length")
    if warmup_steps < 0 or epoch_tokens < 1:
        raise ValueError(f"need warmup_steps >= 0 and epoch_tokens >= 1, got {warmup_steps} and {epoch_tokens}")
    measured_s = sum(step_seconds)
    if finished:
        epoch_s = measured_s
    else:
        enough = len(step_seconds) - warmup_steps >= max(1, warmup_steps)
        steady = slice(warmup_steps if enough else 0, None)
        rate = sum(step_tokens[steady]) / sum(step_seconds[steady])
        epoch_s = measured_s + max(0, epoch_tokens - sum(step_tokens)) / rate
    return {"epoch_s": epoch_s, "projected": not finished, "interactions_per_s": epoch_tokens / epoch_s,
            "steps": len(step_seconds), "measured_s": measured_s}  # fmt: skip


def train_within_budget(dataset_dir: str, model_name: str, *, budget_s: float, device: str = "auto", seed: int = 0,
                        threads: int = 0, warmup_steps: int = 3) -> dict:  # fmt: skip
    """Train ``model_name`` for one epoch or ``budget_s`` seconds, whichever ends first; run in a fresh process.

    Steps time the whole loop (batch building, forward, full-softmax loss, backward, Adam). Peak
    memory: CUDA allocator peak, or on CPU the growth of the process's peak RSS over its RSS
    after loading the data and building the model and the batcher.
    """
    from .config import Config
    from .data.splits import TRAIN, Dataset
    from .losses import build_loss
    from .models import build_model
    from .train import LossStep, batch_source, build_adam, resolve_device

    if threads:
        torch.set_num_threads(threads)
    config = Config(seed=seed, device=device)
    dev = resolve_device(device)
    dataset = Dataset.load(dataset_dir)
    torch.manual_seed(seed)
    setup = time.perf_counter()
    model = build_model(model_name, n_items=dataset.csr.n_items).to(dev)
    loss_fn, optimizer = build_loss("softmax"), build_adam(model.parameters(), lr=config.lr)
    step_loss = LossStep(model, loss_fn)
    # One pass over every training window, its tail of emptying lanes included (training runs on into the next
    # epoch instead, a little faster): the same interactions for every model, and the numbers recorded before.
    source = batch_source(model, dataset, config, loss_fn=loss_fn, carry_over=False)
    n_batches = source.n_batches(0)  # builds the epoch's plan
    setup_s = time.perf_counter() - setup
    lengths = np.diff(np.asarray(dataset.csr.session_ptr))
    epoch_tokens = int(lengths[np.asarray(dataset.role) == TRAIN].sum())
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = rss_bytes()
    state = model.init_state(config.n_queues, dev) if model.carries_state else None
    seconds, tokens, finished = [], [], True
    begin = time.perf_counter()
    for batch in source.batches(0):
        batch = batch.to(dev)
        state = _train_step(step_loss, optimizer, batch, state)
        synchronize(dev)
        now = time.perf_counter()
        seconds.append(now - begin)
        tokens.append(batch.n_tokens)
        begin = now
        if sum(seconds) >= budget_s and len(seconds) < n_batches:
            finished = False
            break
    estimate = epoch_estimate(seconds, tokens, epoch_tokens=epoch_tokens, finished=finished, warmup_steps=warmup_steps)
    if dev.type == "cuda":
        peak, method = torch.cuda.max_memory_allocated(dev), "cuda_max_memory_allocated"
    else:
        peak, method = peak_rss_bytes() - rss_before, "peak_rss_growth"
    return {**estimate, "setup_s": setup_s, "epoch_interactions": epoch_tokens, "batches_per_epoch": n_batches,
            "peak_bytes": peak, "memory_method": method, "threads": torch.get_num_threads()}  # fmt: skip


def _in_fresh_process(fn_name: str, **kwargs) -> dict:
    """Run ``hiertcn.bench.<fn_name>(**kwargs)`` in a new interpreter (its own peak RSS); return its dict."""
    import json

    code = (f"import json, sys; from hiertcn import bench; "
            f"print(json.dumps(bench.{fn_name}(**json.loads(sys.argv[1]))))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env,
                          check=False)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"{fn_name}({kwargs}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pilot_rows_per_user(work_dir: str | Path, seed: int = 0) -> float:
    """Interaction rows per user of ``generate_xing`` (a 2000-user pilot log in ``work_dir``).

    Preparing the pilot also compiles the Numba packer, so no size's ``prepare_s`` pays for that.
    """
    from .data.prepare import prepare_dataset
    from .data.synthetic import generate_xing

    files = generate_xing(Path(work_dir) / "pilot", n_users=2000, seed=seed, impressions=False)
    dataset, _ = prepare_dataset(files.interactions, format="xing", preset="none", cache_dir=Path(work_dir) / "cache")
    return dataset.csr.n_interactions / 2000


def scaling_study(sizes: list[int], models: list[str], *, budget_s: float, work_dir: str | Path | None = None,
                  device: str = "auto", threads: int = 0, seed: int = 0, progress: bool = False) -> list[dict]:  # fmt: skip
    """HierTCN vs GRU4Rec over synthetic XING logs of ``sizes`` interactions; one row per (size, model).

    Per size: ``generate_xing`` (timed apart, not part of data prep) and ``prepare_dataset`` with
    preset ``none`` (read, pack, last-session split, save: ``prepare_s``), so every size keeps all
    its interactions and the same item catalogue size. Per model: :func:`train_within_budget` in
    a fresh process (its own peak memory). Logs and caches live in a temporary folder inside
    ``work_dir`` (default: the system's), removed at the end, so every prepare starts cold.
    """
    from tqdm.auto import tqdm

    from .data.prepare import prepare_dataset
    from .data.synthetic import generate_xing

    if isinstance(budget_s, bool) or not isinstance(budget_s, int | float) or not 0 < budget_s < math.inf:
        raise ValueError(f"budget_s (--budget) must be a positive finite number of seconds, got {budget_s!r}")
    _check_positive_ints("sizes (--sizes)", sizes)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="hiertcn-scaling-") as tmp:
        per_user = 1 / pilot_rows_per_user(tmp, seed)
        rows = []
        bar = tqdm(total=len(sizes) * (1 + len(models)), desc="scaling", disable=not progress)
        for size in sizes:
            start = time.perf_counter()
            files = generate_xing(Path(tmp) / f"xing-{size}", n_users=max(1, round(size * per_user)), seed=seed,
                                  impressions=False)  # fmt: skip
            generate_s = time.perf_counter() - start
            start = time.perf_counter()
            dataset, entry = prepare_dataset(files.interactions, format="xing", preset="none",
                                             cache_dir=Path(tmp) / f"cache-{size}")  # fmt: skip
            prepare_s = time.perf_counter() - start
            bar.update(1)
            csr = dataset.csr
            for name in models:
                bar.set_postfix_str(f"{size:,} {name}")
                row = _in_fresh_process("train_within_budget", dataset_dir=str(entry / "dataset"), model_name=name,
                                        budget_s=budget_s, device=device, seed=seed, threads=threads)  # fmt: skip
                rows.append({"size": size, "model": name, "interactions": csr.n_interactions, "users": csr.n_users,
                             "items": csr.n_items, "generate_s": generate_s, "prepare_s": prepare_s,
                             "budget_s": budget_s, **row})  # fmt: skip
                bar.update(1)
            del dataset, csr
            shutil.rmtree(files.interactions.parent)  # the next size's log needs the disk more
        bar.close()
    return rows


def format_scaling_table(rows: list[dict]) -> str:
    head = (f"{'size':>11}{'model':>10}{'prepare s':>11}{'epoch s':>11}{'':>11}{'inter/s':>10}"
            f"{'peak MiB':>10}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['size']:>11,}{r['model']:>10}{r['prepare_s']:>11.2f}{r['epoch_s']:>11.1f}"
                     f"{'projected' if r['projected'] else 'measured':>11}{r['interactions_per_s']:>10.0f}"
                     f"{r['peak_bytes'] / 2**20:>10.1f}")  # fmt: skip
    return "\n".join(lines)


def speedups(rows: list[dict], model: str = "hiertcn", baseline: str = "gru4rec") -> dict[int, float]:
    """Per size: ``model``'s interactions/s over ``baseline``'s (``speedup_vs_gru4rec`` of ``bench --scaling``).

    Both rates are whole-epoch rates on the same log (:func:`epoch_estimate`: epoch interactions
    over the measured or projected epoch time), so this is the baseline's epoch time over the
    model's, warm-up counted once in each, whatever their batch counts.
    """
    by = {(r["size"], r["model"]): r for r in rows}
    return {s: by[s, model]["interactions_per_s"] / by[s, baseline]["interactions_per_s"]
            for s in sorted({r["size"] for r in rows}) if (s, model) in by and (s, baseline) in by}  # fmt: skip

