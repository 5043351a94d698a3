"""Argument validation shared by every op: clear errors naming the argument."""

from __future__ import annotations

import operator
import weakref
from typing import NamedTuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x, name: str, *, ndim: int | tuple[int, ...] | None = None, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if x.dim() not in dims:
            raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(x.shape)}")


def check_same(x: torch.Tensor, y: torch.Tensor | None, name: str, ref_name: str) -> None:
    """``y`` (named ``name``) must share device and dtype with ``x`` (named ``ref_name``)."""
    if y is None:
        return
    if y.device != x.device:
        raise ValueError(f"{name} is on {y.device} but {ref_name} is on {x.device}")
    if y.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {y.dtype} but {ref_name} has {x.dtype}")


class OffsetFacts(NamedTuple):
    first: int
    last: int
    decreasing: bool
    longest: int  # the longest segment


# Facts of recently seen CUDA offsets, by tensor: a model passes one batch's offsets to every op of a
# step, and each read is a host sync that stalls the launch queue. Keyed by identity, checked against
# the storage pointer and the version counter (bumped by every in-place write through torch).
_FACTS: dict[int, tuple[weakref.ref, int, int, OffsetFacts]] = {}
_FACTS_KEPT = 32


def offsets_facts(offsets: torch.Tensor) -> OffsetFacts:
    """First and last value, whether it ever decreases, and the longest segment: one host read, remembered
    for CUDA tensors until they are written in place through torch (writes through ``.data``, the raw
    storage or DLPack are not seen: make new offsets rather than rewrite them that way)."""
    key = id(offsets)
    remember = offsets.is_cuda and not offsets.is_inference()  # inference tensors have no version counter
    if remember:
        hit = _FACTS.get(key)
        if hit is not None and hit[0]() is offsets and hit[1] == offsets._version and hit[2] == offsets.data_ptr():
            return hit[3]
    if offsets.numel() > 1:
        wide = offsets.long()  # int32 differences could wrap past 2**31 and hide a decrease
        steps = wide[1:] - wide[:-1]
        first, last, decreasing, longest = torch.stack(
            [wide[0], wide[-1], (steps < 0).any().long(), steps.max()]
        ).tolist()
    else:
        first = last = int(offsets[0]) if offsets.numel() else 0
        decreasing, longest = False, 0
    facts = OffsetFacts(first, last, bool(decreasing), longest)
    if remember:
        _remember(offsets, facts)
    return facts


def _remember(offsets: torch.Tensor, facts: OffsetFacts) -> None:
    if len(_FACTS) >= _FACTS_KEPT:
        _FACTS.clear()
    _FACTS[id(offsets)] = (weakref.ref(offsets), offsets._version, offsets.data_ptr(), facts)


def remember_offsets(offsets: torch.Tensor, host_copy: torch.Tensor) -> None:
    """Tell :func:`offsets_facts` the facts of CUDA ``offsets`` from a CPU tensor of the same values (the
    one they were copied from), so that no op reads them back: a batch built on the host knows its offsets."""
    if offsets.is_cuda and not offsets.is_inference() and host_copy.device.type == "cpu":
        _remember(offsets, offsets_facts(host_copy))


def check_offsets(offsets, total: int | None, device: torch.device, name: str = "cu_seqlens") -> torch.Tensor:
    """``offsets``: 1-D int32/int64 on ``device``, starts at 0, non-decreasing, ends at ``total`` (any end: None)."""
    if not isinstance(offsets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(offsets).__name__}")
    if offsets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"{name} must be 1-D with at least one element, got shape {tuple(offsets.shape)}")
    if offsets.device != device:
        raise ValueError(f"{name} is on {offsets.device} but the values are on {device}")
    facts = offsets_facts(offsets)
    if facts.first != 0:
        raise ValueError(f"{name}[0] must be 0, got {facts.first}")
    if total is not None and facts.last != total:
        raise ValueError(f"{name}[-1] must equal the number of rows ({total}), got {facts.last}")
    if facts.decreasing:
        raise ValueError(f"{name} must be non-decreasing")
    return offsets


def check_count(name: str, value, least: int = 1) -> int:
    """``value`` as a plain int: any integer-like >= ``least`` (``operator.index``, as ``nn.Conv1d`` takes
    sizes: numpy integers, 0-d integer tensors); bools and floats are rejected, naming ``name``."""
    is_bool = isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)
    try:
        count = None if is_bool else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < least:
        wanted = "a positive int" if least == 1 else f"an int >= {least}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return count


def check_conv(x, weight, bias, dilation, cu_seqlens, *, weight_name: str = "weight", bias_name: str = "bias"):
    """Validate ``causal_conv1d`` arguments; returns ``(C_out, C_in, K)``."""
    check_tensor(x, "x", ndim=(2, 3))
    check_tensor(weight, weight_name, ndim=3)
    check_same(x, weight, weight_name, "x")
    check_count("dilation", dilation)
    c_out, c_in, k = weight.shape
    if k < 1 or c_out < 1:
        raise ValueError(f"{weight_name} must have shape (C_out, C_in, K) with K, C_out >= 1, got {tuple(weight.shape)}")
    if x.shape[-1] != c_in:
        raise ValueError(f"x has {x.shape[-1]} channels but {weight_name} expects C_in={c_in} (shape {tuple(weight.shape)})")
    if bias is not None:
        check_tensor(bias, bias_name, ndim=1)
        check_same(x, bias, bias_name, "x")
        if bias.shape[0] != c_out:
            raise ValueError(f"{bias_name} must have shape ({c_out},), got {tuple(bias.shape)}")
    if cu_seqlens is None:
        if x.dim() != 3:
            raise ValueError(f"x must be (B, L, C) when cu_seqlens is not given, got shape {tuple(x.shape)}")
    else:
        if x.dim() != 2:
            raise ValueError(f"x must be packed (T, C) when cu_seqlens is given, got shape {tuple(x.shape)}")
        check_offsets(cu_seqlens, x.shape[0], x.device)
    return c_out, c_in, k


ACTIVATIONS = ("relu", "gated")


def check_tcn_block(x, conv_weight, conv_bias, dilation, activation, out_weight, out_bias, cu_seqlens) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    c_out, c_in, _ = check_conv(
        x, conv_weight, conv_bias, dilation, cu_seqlens, weight_name="conv_weight", bias_name="conv_bias"
    )
    if activation == "relu":
        if c_out != c_in:
            raise ValueError(
                f"conv_weight must be (C, C, K) for activation='relu' (residual), got {tuple(conv_weight.shape)}"
            )
        if out_weight is not None or out_bias is not None:
            raise ValueError("out_weight/out_bias are only used with activation='gated'")
        return
    if c_out % 2:
        raise ValueError(f"conv_weight must have an even C_out (2H) for activation='gated', got {c_out}")
    if out_weight is None:
        raise ValueError("out_weight (C, H) is required for activation='gated'")
    check_tensor(out_weight, "out_weight", ndim=2)
    check_same(x, out_weight, "out_weight", "x")
    if tuple(out_weight.shape) != (c_in, c_out // 2):
        raise ValueError(f"out_weight must have shape ({c_in}, {c_out // 2}), got {tuple(out_weight.shape)}")
    if out_bias is not None:
        check_tensor(out_bias, "out_bias", ndim=1)
        check_same(x, out_bias, "out_bias", "x")
        if out_bias.shape[0] != c_in:
            raise ValueError(f"out_bias must have shape ({c_in},), got {tuple(out_bias.shape)}")


REDUCES = ("mean", "sum", "max")


def check_segment(values, offsets, name: str = "values") -> None:
    check_tensor(values, name, ndim=2)
    check_offsets(offsets, values.shape[0], values.device, name="offsets")


def check_expand(rows, offsets) -> None:
    check_tensor(rows, "rows", ndim=2)
    if not isinstance(offsets, torch.Tensor):
        raise TypeError(f"offsets must be a torch.Tensor, got {type(offsets).__name__}")
    if offsets.dim() != 1 or offsets.numel() != rows.shape[0] + 1:
        raise ValueError(
            f"offsets must be 1-D of length rows.shape[0] + 1 = {rows.shape[0] + 1}, got shape {tuple(offsets.shape)}"
        )
    check_offsets(offsets, None, rows.device, name="offsets")  # its end is the output's row count
