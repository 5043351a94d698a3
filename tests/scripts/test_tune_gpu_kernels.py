"""scripts/tune_gpu_kernels.py without a GPU: its first variant of each kernel is the shipped choice."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tune():
    spec = importlib.util.spec_from_file_location("tune_gpu_kernels", ROOT / "scripts" / "tune_gpu_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_first_variants_are_the_shipped_launch_choices(tune):
    shipped = tune.TS._GPU_TILING
    assert tune.segment_tiles(False)[0] == shipped.narrow
    assert tune._SweptTiling(**dataclasses.asdict(shipped)).narrow == shipped.narrow
    assert tune.conv_variants(False)[0] == ("shipped", None, {})  # no override: _bwd_programs_per_sm, _bwd_opts
    names = [name for name, _, _ in tune.conv_variants(False)]
    assert len(names) == len(set(names)) == 13
    assert len(tune.conv_variants(True)) == 4 and len(tune.segment_tiles(True)) == 3


def test_session_offsets_cover_the_tokens_with_lengths_1_to_20(tune):
    offsets = tune.session_offsets(10_007, "cpu")
    lengths = offsets.diff()
    assert int(offsets[0]) == 0 and int(offsets[-1]) == 10_007
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 20


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", ["relu", "gated"])
def test_split_backward_candidate_matches_the_shipped_backward(tune, mode):
    """The three-launch candidate the script races gives the shipped one-launch backward's gradients
    (Triton's interpreter: sessions of 1..20 rows across many row tiles and weight chunks)."""
    import torch

    torch.manual_seed(0)
    c, k, dilation, t = 8, 3, 2, 150
    c_out = 2 * c if mode == "gated" else c
    x = torch.randn(t, c)
    weight, bias = torch.randn(c_out, c, k) / (c * k) ** 0.5, 0.5 * torch.randn(c_out)
    out_weight = torch.randn(c, c) / c**0.5 if mode == "gated" else None
    rows, start = tune.TC._as_rows(x, tune.session_offsets(t, "cpu"))
    wt = weight.permute(2, 1, 0).contiguous()
    dy = torch.randn(t, c)
    needs = {"x": True, "weight": True, "bias": True, "out_weight": mode == "gated", "out_bias": mode == "gated"}
    shipped = tune.TC._backward(dy, rows, start, wt, bias, out_weight, dilation, mode, needs)
    split = tune.split_backward(dy, rows, start, wt, bias, out_weight, dilation, mode, w_per_sm=3)
    for a, b in zip(split, shipped):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
