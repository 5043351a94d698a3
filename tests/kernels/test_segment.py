"""segment_reduce / segment_expand: Triton kernels against the reference, reference gradchecks, validation."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import hiertcn_kernels as K
from hiertcn_kernels import reference as R


def offsets_of(lengths, dtype=torch.int64, device="cpu"):
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=dtype, device=device)


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30)).item()


@pytest.fixture
def poisoned(monkeypatch):
    """Every fresh ``torch.empty`` is filled with NaN (ints: -7), so unwritten output elements show."""
    empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else -7)

    monkeypatch.setattr(torch, "empty", poisoned_empty)


@pytest.fixture
def triton_backend(monkeypatch, poisoned):
    monkeypatch.setenv("HIERTCN_BACKEND", "triton")


# Interpreter tiling: 4 narrow segments, 4-row wide tiles, pieces of >= 8 rows, 16 channels per block;
# these cover the narrow and wide tiles, one and several split levels, and several channel blocks.
LENGTHS = {
    "mixed": [3, 0, 7, 1, 12, 2],
    "length_1": [1] * 37,
    "sessions_1_20": torch.randint(1, 21, (23,), generator=torch.Generator().manual_seed(1)).tolist(),
    "empty_edges": [0, 0, 5, 0, 3, 0, 0],
    "long": [150],
    "long_mixed": [2, 0, 90, 1, 1, 33, 0],
}


def _compare_reduce(lengths, reduce, channels=20, offset_dtype=torch.int64, make_values=torch.randn):
    off = offsets_of(lengths, offset_dtype)
    values = make_values(int(off[-1]), channels)
    v_ref = values.clone().requires_grad_()
    v_tri = values.clone().requires_grad_()
    ref = R.segment_reduce(v_ref, off, reduce)
    out = K.segment_reduce(v_tri, off, reduce)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    return out, ref, v_tri.grad, v_ref.grad


@pytest.mark.interpreter
@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
@pytest.mark.parametrize("case", list(LENGTHS))
def test_reduce_matches_reference(triton_backend, case, reduce):
    out, ref, grad, grad_ref = _compare_reduce(LENGTHS[case], reduce)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert rel_err(out, ref) < 1e-5
    assert rel_err(grad, grad_ref) < 1e-5
    if reduce == "max":  # a pure selection: exact
        assert torch.equal(out, ref) and torch.equal(grad, grad_ref)


@pytest.mark.interpreter
@pytest.mark.parametrize("case", ["mixed", "long_mixed"])
def test_max_ties_take_the_first_row(triton_backend, case):
    def few_values(t, c):  # values in {0, 1, 2}: ties everywhere
        return torch.randint(0, 3, (t, c)).float()

    out, ref, grad, grad_ref = _compare_reduce(LENGTHS[case], "max", make_values=few_values)
    assert torch.equal(out, ref)
    assert torch.equal(grad, grad_ref)


@pytest.mark.interpreter
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_gpu_tiling_in_the_interpreter(triton_backend, monkeypatch, reduce):
    """The H100 tile shapes and chunking (narrow 32 x 1, wide 1 x 32, pieces of >= 128 rows)."""
    from hiertcn_kernels.triton import segment as S

    monkeypatch.setattr(S, "_tiling", lambda: S._GPU_TILING)
    for lengths in ([1, 20, 0, 7] * 10, [3, 0, 700, 1, 20]):
        out, ref, grad, grad_ref = _compare_reduce(lengths, reduce, channels=3)
        assert rel_err(out, ref) < 1e-5 and rel_err(grad, grad_ref) < 1e-5
        rows = torch.randn(len(lengths), 3)
        assert torch.equal(K.segment_expand(rows, offsets_of(lengths)), R.segment_expand(rows, offsets_of(lengths)))


def _check_nan_max(device):
    # NaN rows in short segments, in the middle and at the end of long ones (several combine levels), and in
    # one channel only: the max is NaN there and the gradient goes to the first NaN row, as the reference does.
    lengths = [3, 0, 90, 1, 33, 700]
    off = offsets_of(lengths).to(device)
    values = torch.randn(int(off[-1]), 3)
    for row, chan in ((1, 0), (50, 1), (60, 1), (92, 2), (130, 0), (826, 0), (400, 1)):
        values[row, chan] = float("nan")
    v_tri, v_ref = values.to(device, copy=True).requires_grad_(), values.clone().requires_grad_()
    out, ref = K.segment_reduce(v_tri, off, "max"), R.segment_reduce(v_ref, off.cpu(), "max")
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0, equal_nan=True)
    assert out.isnan().sum() == 5
    out.backward(torch.ones_like(out))
    ref.backward(torch.ones_like(ref))
    assert torch.equal(v_tri.grad.cpu(), v_ref.grad)


@pytest.mark.interpreter
@pytest.mark.parametrize("tiling", ["interpreter", "gpu"])
def test_max_propagates_nan_to_the_first_nan_row(triton_backend, monkeypatch, tiling):
    from hiertcn_kernels.triton import segment as S

    if tiling == "gpu":
        monkeypatch.setattr(S, "_tiling", lambda: S._GPU_TILING)
    _check_nan_max("cpu")


@pytest.mark.interpreter
def test_max_of_all_minus_inf_segment(triton_backend):
    values = torch.full((40, 3), float("-inf"), requires_grad=True)
    off = offsets_of([30, 10])
    out = K.segment_reduce(values, off, "max")
    assert torch.equal(out, R.segment_reduce(values, off, "max"))
    out.backward(torch.ones_like(out))
    assert values.grad[0].tolist() == [1.0] * 3 and values.grad[30].tolist() == [1.0] * 3
    assert values.grad.sum().item() == 6


@pytest.mark.interpreter
@pytest.mark.parametrize("case", ["mixed", "length_1", "empty_edges", "long_mixed"])
def test_expand_matches_reference(triton_backend, case):
    off = offsets_of(LENGTHS[case])
    rows = torch.randn(off.numel() - 1, 20)
    r_ref, r_tri = rows.clone().requires_grad_(), rows.clone().requires_grad_()
    ref, out = R.segment_expand(r_ref, off), K.segment_expand(r_tri, off)
    assert torch.equal(out, ref)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    assert rel_err(r_tri.grad, r_ref.grad) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
def test_int32_offsets(triton_backend, reduce):
    out, ref, grad, grad_ref = _compare_reduce(LENGTHS["long_mixed"], reduce, offset_dtype=torch.int32)
    assert rel_err(out, ref) < 1e-5 and rel_err(grad, grad_ref) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_non_contiguous_input_and_grad(triton_backend, reduce):
    off = offsets_of(LENGTHS["long_mixed"])
    base = torch.randn(24, int(off[-1]))
    values = base[::2].t()  # (T, 12), strides (1, 2T)
    out = K.segment_reduce(values, off, reduce)
    torch.testing.assert_close(out, R.segment_reduce(values, off, reduce), rtol=1e-5, atol=1e-6)
    rows = torch.randn(12, off.numel() - 1).t().requires_grad_()  # non-contiguous rows
    expanded = K.segment_expand(rows, off)
    assert torch.equal(expanded, R.segment_expand(rows, off))
    grad = torch.randn(12, int(off[-1])).t()  # non-contiguous grad_out
    expanded.backward(grad)
    torch.testing.assert_close(rows.grad, R.segment_reduce(grad, off, "sum"), rtol=1e-5, atol=1e-6)


@pytest.mark.interpreter
def test_strided_offsets(triton_backend):
    off = offsets_of([3, 0, 2, 4, 1])  # short: the kernels read the offsets directly
    strided = torch.stack([off, off * 100], dim=1)[:, 0]  # a view with stride 2
    values = torch.randn(int(off[-1]), 5)
    torch.testing.assert_close(K.segment_reduce(values, strided, "mean"), R.segment_reduce(values, off, "mean"))
    rows = torch.randn(off.numel() - 1, 5)
    assert torch.equal(K.segment_expand(rows, strided), R.segment_expand(rows, off))


@pytest.mark.interpreter
def test_float64_follows_reference_closely(triton_backend):
    off = offsets_of(LENGTHS["long_mixed"])
    values = torch.randn(int(off[-1]), 5, dtype=torch.float64)
    for reduce in ("mean", "sum", "max"):
        out = K.segment_reduce(values, off, reduce)
        assert out.dtype == torch.float64
        assert rel_err(out, R.segment_reduce(values, off, reduce)) < 1e-12


@pytest.mark.interpreter
@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
def test_no_rows_or_no_segments(triton_backend, reduce):
    values = torch.randn(0, 6, requires_grad=True)
    out = K.segment_reduce(values, torch.zeros(4, dtype=torch.int64), reduce)
    assert out.shape == (3, 6) and out.abs().sum().item() == 0
    out.sum().backward()
    assert values.grad.shape == (0, 6)
    assert K.segment_reduce(torch.randn(0, 6), torch.zeros(1, dtype=torch.int32), reduce).shape == (0, 6)
    assert K.segment_expand(torch.randn(3, 6), torch.zeros(4, dtype=torch.int64)).shape == (0, 6)


def _penalised_grads(module, op, values, weight, offsets):
    """Gradients of ``|out|^2 + 10 |d|out|^2 / d values|^2`` for ``out = op(values @ weight)``: the
    penalty differentiates the op's backward, and the output gradient depends on ``weight``."""
    mixed = values @ weight
    out = module.segment_expand(mixed, offsets) if op == "expand" else module.segment_reduce(mixed, offsets, op)
    (grad,) = torch.autograd.grad(out.square().sum(), values, create_graph=True)
    return torch.autograd.grad(out.square().sum() + 10 * grad.square().sum(), [values, weight])


@pytest.mark.interpreter
@pytest.mark.parametrize("op", ["mean", "sum", "max", "expand"])
@pytest.mark.parametrize("case", ["empty_edges", "long_mixed", "no_rows"])
def test_double_backward_matches_reference(triton_backend, op, case):
    """Each backward is the adjoint op run through autograd: double backward (create_graph=True) works."""
    off = offsets_of([0, 0] if case == "no_rows" else LENGTHS[case])
    values = torch.randn(off.numel() - 1 if op == "expand" else int(off[-1]), 4, dtype=torch.float64)
    weight = torch.randn(4, 4, dtype=torch.float64)
    grads = [_penalised_grads(module, op, values.clone().requires_grad_(), weight.clone().requires_grad_(), off)
             for module in (K, R)]
    for out, ref in zip(*grads):
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-12


@pytest.mark.interpreter
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_deterministic_to_the_bit(triton_backend, reduce):
    off = offsets_of(LENGTHS["long_mixed"])
    values = torch.randn(int(off[-1]), 20)
    grad = torch.randn(off.numel() - 1, 20)
    results = []
    for _ in range(2):
        v = values.clone().requires_grad_()
        out = K.segment_reduce(v, off, reduce)
        out.backward(grad)
        results.append((out, v.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.interpreter
def test_segment_agg_layer_uses_the_kernel(triton_backend):
    off = offsets_of(LENGTHS["mixed"])
    values = torch.randn(int(off[-1]), 7)
    torch.testing.assert_close(K.SegmentAgg("mean")(values, off), R.segment_reduce(values, off, "mean"))


# Compiles (no launch) for an H100 in a subprocess: this process has Triton in interpret mode.
SM90_COMPILE = textwrap.dedent(
    """
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from ptxas_spills import assert_no_spills
    from hiertcn_kernels.triton import segment as S

    POINTERS = {"src": "*bf16", "out": "*bf16", "src_idx": "*i32", "out_idx": "*i32", "argmax": "*i32",
                "ptr": "*i64", "count_ptr": "*i32", "piece_seg": "*i64", "seg_ptr": "*i64"}

    def compile_sm90(kernel, num_warps, **constexprs):
        sig = {name: "constexpr" if name in constexprs else POINTERS.get(name, "i32") for name in kernel.arg_names}
        src = ASTSource(kernel, sig, constexprs)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        assert "cubin" in kernel.asm
        assert_no_spills(kernel, (kernel.name, num_warps, constexprs))

    common = dict(ACC_DTYPE=tl.float32, IDX_DTYPE=tl.int32, BLOCK_C=128)
    for (block_n, block_t, warps) in (S._GPU_TILING.narrow, S._GPU_TILING.wide):
        tile = dict(BLOCK_N=block_n, BLOCK_T=block_t, **common)
        compile_sm90(S._segment_reduce_kernel, warps, REDUCE=2, HAS_SRC_IDX=True, STORE_IDX=True, **tile)
        compile_sm90(S._segment_reduce_kernel, warps, REDUCE=1, HAS_SRC_IDX=False, STORE_IDX=False, **tile)
        compile_sm90(S._segment_broadcast_kernel, warps, MODE=2, HAS_PIECE_SEG=True, **tile)
        compile_sm90(S._segment_broadcast_kernel, warps, MODE=1, HAS_PIECE_SEG=False, **tile)
    """
)


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    here = Path(__file__).resolve().parent  # ptxas_spills.py
    env["PYTHONPATH"] = os.pathsep.join([str(here.parents[1]), str(here), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", SM90_COMPILE], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]


# ----------------------------------------------------------------------------- reference spec


@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
@pytest.mark.parametrize(
    "lengths", [[0, 4, 0, 1, 0], [1] * 40, [120], [0, 0], []], ids=["empty", "length_1", "huge", "all_empty", "none"]
)
def test_reference_gradcheck(lengths, reduce):
    off = offsets_of(lengths)
    values = torch.randn(int(off[-1]), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: R.segment_reduce(v, off, reduce), (values,))


def test_reference_max_ties_gradient_goes_to_first_row():
    values = torch.tensor([[2.0, 1.0], [2.0, 3.0], [1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    out = R.segment_reduce(values, offsets_of([3]), "max")
    out.backward(torch.tensor([[5.0, 7.0]], dtype=torch.float64))
    assert values.grad.tolist() == [[5.0, 0.0], [0.0, 7.0], [0.0, 0.0]]


def test_reference_max_propagates_nan_to_the_first_nan_row():
    # NaN in a segment is its max (as torch's max): the output is NaN and the gradient goes to the first NaN
    # row, so a diverged model shows a NaN loss instead of crashing inside the op.
    nan = float("nan")
    x = torch.tensor([[1.0, 2.0], [nan, 0.5], [nan, 3.0], [0.25, 1.0]], requires_grad=True)
    out = R.segment_reduce(x, offsets_of([3, 1]), "max")
    assert out[0, 0].isnan() and out[0, 1] == 3.0 and out[1].tolist() == [0.25, 1.0]
    out.backward(torch.ones_like(out))
    assert x.grad.tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_reference_sum_and_mean_keep_no_copy_of_values_for_backward(reduce):
    """Their gradient is an expand of the output gradient: only the (N,) lengths need keeping."""
    off = offsets_of([3, 0, 5, 1])
    values = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = R.segment_reduce(values, off, reduce)
    assert saved and all(t.shape in ((4,), (4, 1)) for t in saved)
    grad = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, values, grad)
    scale = 1 / off.diff().clamp(min=1).double()[:, None] if reduce == "mean" else 1.0
    torch.testing.assert_close(got, (grad * scale).repeat_interleave(off.diff(), dim=0))


@pytest.mark.parametrize("lengths", [[3, 0, 1], [1] * 30, [90], [0, 0]])
def test_reference_expand_gradcheck(lengths):
    off = offsets_of(lengths)
    rows = torch.randn(len(lengths), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: R.segment_expand(r, off), (rows,))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "offsets,match",
    [
        (torch.tensor([0, 3, 2, 5]), "non-decreasing"),
        (torch.tensor([1, 3, 5]), r"offsets\[0\] must be 0"),
        (torch.tensor([0, 3, 4]), r"offsets\[-1\] must equal"),
        (torch.tensor([0.0, 5.0]), "offsets must be int32 or int64"),
        (torch.tensor([[0, 5]]), "offsets must be 1-D"),
    ],
)
def test_bad_offsets(offsets, match):
    with pytest.raises((ValueError, TypeError), match=match):
        K.segment_reduce(torch.randn(5, 2), offsets)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduce must be one of"):
        K.segment_reduce(torch.randn(5, 2), torch.tensor([0, 5]), "min")
    with pytest.raises(TypeError, match="values must be a floating tensor"):
        K.segment_reduce(torch.ones(5, 2, dtype=torch.int64), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="values must have 2 dims"):
        K.segment_reduce(torch.randn(5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="offsets must be 1-D of length"):
        K.segment_expand(torch.randn(3, 2), torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="rows must be a floating tensor"):
        K.segment_expand(torch.ones(1, 2, dtype=torch.int32), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="SegmentAgg|reduce must be one of"):
        K.SegmentAgg("median")


@pytest.mark.cuda
def test_offsets_on_another_device():
    with pytest.raises(ValueError, match="offsets is on cpu"):
        K.segment_reduce(torch.randn(5, 2, device="cuda"), torch.tensor([0, 5]))


# ----------------------------------------------------------------------------- CUDA, benchmark shapes

CUDA_LENGTHS = {
    "length_1": lambda: torch.ones(2**20, dtype=torch.int64),
    "sessions_1_20": lambda: _lengths_1_20(2**20),
    "few_100k": lambda: torch.tensor([100_000] * 10 + [2**20 - 1_000_000], dtype=torch.int64),
}


def _lengths_1_20(total):
    lengths = torch.randint(1, 21, (total // 10,))
    lengths = lengths[: int((lengths.cumsum(0) <= total).sum())]
    return torch.cat([lengths, torch.tensor([total - int(lengths.sum())])])


TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _in(ref, dtype):
    """A float64 reference as the kernel's output is compared with it: as is for fp32, rounded for fp16/bf16."""
    return ref if dtype == torch.float32 else ref.to(dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
@pytest.mark.parametrize("case", list(CUDA_LENGTHS))
def test_cuda_reduce_matches_reference(poisoned, case, reduce, dtype):
    lengths = CUDA_LENGTHS[case]()
    off = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).cuda()
    values = torch.randn(2**20, 128, device="cuda").to(dtype).requires_grad_()
    out = K.segment_reduce(values, off, reduce)
    # A float64 reference: an fp32 one summing 100k-row segments drifts by about as much as the fp32 tolerance.
    ref_values = values.detach().double().requires_grad_()
    ref = R.segment_reduce(ref_values, off, reduce)
    assert out.dtype == dtype
    # fp32: compared in float64; fp16/bf16: one rounding of the exact result to the output dtype
    # (the kernel accumulates in fp32; fp16 mean grads of 100k rows are subnormal)
    assert rel_err(out, _in(ref, dtype)) < TOLERANCE[dtype]
    grad = torch.randn(ref.shape, device="cuda")
    out.backward(grad.to(dtype))
    ref.backward(grad.double())
    assert rel_err(values.grad, _in(ref_values.grad, dtype)) < TOLERANCE[dtype]


@pytest.mark.cuda
def test_cuda_max_propagates_nan_to_the_first_nan_row(poisoned):
    _check_nan_max("cuda")  # tl.max may take fmax semantics on a GPU: the kernel handles NaN explicitly


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CUDA_LENGTHS))
def test_cuda_expand_matches_reference(poisoned, case, dtype):
    lengths = CUDA_LENGTHS[case]()
    off = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).cuda()
    rows = torch.randn(lengths.numel(), 128, device="cuda").to(dtype).requires_grad_()
    out = K.segment_expand(rows, off)
    assert torch.equal(out, R.segment_expand(rows.detach(), off))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert rel_err(rows.grad, _in(R.segment_reduce(grad.double(), off, "sum"), dtype)) < TOLERANCE[dtype]


@pytest.mark.cuda
def test_cuda_deterministic_to_the_bit():
    off = torch.cat([torch.zeros(1, dtype=torch.int64), CUDA_LENGTHS["few_100k"]().cumsum(0)]).cuda()
    values = torch.randn(2**20, 128, device="cuda")
    assert torch.equal(K.segment_reduce(values, off, "mean"), K.segment_reduce(values, off, "mean"))


@pytest.mark.cuda
def test_cuda_new_batch_sizes_do_not_recompile():
    from hiertcn_kernels.triton import segment as S

    def n_compiled():
        kernels = (S._segment_reduce_kernel, S._segment_broadcast_kernel)
        return sum(len(cache[0]) for k in kernels for cache in k.device_caches.values())

    def step(n_segments):
        lengths = torch.randint(1, 21, (n_segments,))
        off = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).cuda()
        values = torch.randn(int(lengths.sum()), 128, device="cuda", requires_grad=True)
        K.segment_reduce(values, off, "mean").sum().backward()

    step(1000)
    compiled = n_compiled()
    for n_segments in (1001, 1024, 4099, 77):
        step(n_segments)
    assert n_compiled() == compiled


def test_offsets_facts_reads_first_last_order_and_longest():
    from hiertcn_kernels._checks import offsets_facts

    assert offsets_facts(torch.tensor([0, 3, 3, 10, 11])) == (0, 11, False, 7)
    assert offsets_facts(torch.tensor([0, 4, 2], dtype=torch.int32)) == (0, 2, True, 4)
    assert offsets_facts(torch.tensor([0])) == (0, 0, False, 0)
    # int32 steps would wrap: 2**31 - 1 down to -5 is a decrease
    assert offsets_facts(torch.tensor([0, 2**31 - 1, -5, 10], dtype=torch.int32)).decreasing


@pytest.mark.cuda
def test_cuda_offsets_checks_see_in_place_writes():
    """The facts of CUDA offsets are remembered per tensor (one host sync per batch, not per op), but
    an in-place write makes the next op read them again."""
    x = torch.randn(10, 4, device="cuda")
    offsets = torch.tensor([0, 3, 10], device="cuda")
    torch.testing.assert_close(K.segment_reduce(x, offsets, "sum")[1], x[3:].sum(0))
    offsets[1] = 12
    with pytest.raises(ValueError, match="non-decreasing"):
        K.segment_reduce(x, offsets, "sum")
    offsets[1] = 1  # the longest segment grows from 7 to 9 rows: all of them must be summed
    torch.testing.assert_close(K.segment_reduce(x, offsets, "sum")[1], x[1:].sum(0))


@pytest.mark.cuda
def test_cuda_ops_run_under_inference_mode():
    """Inference tensors keep no version counter: their offsets facts are read every call, not remembered."""
    x = torch.randn(10, 4, device="cuda")
    with torch.inference_mode():
        offsets = torch.tensor([0, 3, 10], device="cuda")
        torch.testing.assert_close(K.segment_reduce(x, offsets, "sum")[1], x[3:].sum(0))
        torch.testing.assert_close(K.segment_expand(x[:2], offsets)[5], x[1])
