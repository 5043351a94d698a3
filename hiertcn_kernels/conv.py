"""Public conv ops: validate, then run the Triton kernel or the reference."""

from __future__ import annotations

import operator
import warnings

import torch

from . import reference
from ._backend import backend_name, triton_ops, use_triton
from ._checks import check_conv, check_tcn_block

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The fused gated kernel keeps the whole gate width in one tile: up to 512 fits sm_90's shared memory.
MAX_FUSED_GATE = 512


def _use_triton(x, weight=None, activation="conv") -> bool:
    # float64 has no Triton kernel: auto dispatch keeps it on the reference; a forced
    # HIERTCN_BACKEND=triton reaches the kernel module, which rejects it with a TypeError.
    if not (use_triton(x) and (x.dtype in _TRITON_DTYPES or backend_name() == "triton")):
        return False
    if weight is None or (weight.shape[1] > 0 and not (activation == "gated" and weight.shape[0] // 2 > MAX_FUSED_GATE)):
        return True
    # Shapes the fused kernels do not cover run on the reference (cuDNN on CUDA), unless Triton is forced.
    what = (f"C_in={weight.shape[1]}" if weight.shape[1] == 0 else f"a gated block with hidden size {weight.shape[0] // 2}")
    if backend_name() == "triton":
        raise ValueError(f"the fused Triton kernels cover C_in >= 1 and gated hidden sizes up to {MAX_FUSED_GATE}, "
                         f"not {what}; unset HIERTCN_BACKEND to run it on the reference")  # fmt: skip
    warnings.warn(f"{what}: beyond the fused Triton kernels, running the PyTorch reference", stacklevel=3)
    return False


def autocast_state(x: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """``(device_type, enabled, dtype)`` of ``torch.autocast`` for ``x``'s device (off for devices it lacks)."""
    device_type = x.device.type if x.device.type in ("cpu", "cuda") else "cpu"
    enabled = x.device.type == device_type and torch.is_autocast_enabled(device_type)
    return device_type, enabled, torch.get_autocast_dtype(device_type)


def _autocast(*tensors):
    """Under ``torch.autocast`` the floating tensors in its dtype, as ``F.conv1d`` runs there (the casts are
    differentiable: parameters keep their own dtype and get gradients in it); unchanged otherwise."""
    if not isinstance(tensors[0], torch.Tensor):  # the checks after the cast name it
        return tensors
    _, enabled, dtype = autocast_state(tensors[0])
    if not enabled:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def causal_conv1d(x, weight, bias=None, *, dilation=1, cu_seqlens=None):
    """Dilated causal conv over padded ``(B, L, C_in)`` or packed ``(T, C_in)`` + ``cu_seqlens``.

    ``y[t, o] = bias[o] + sum_k sum_i weight[o, i, k] * x[t - (K-1-k)*dilation, i]``, where a
    position before the start of ``t``'s own sequence reads as zero. ``weight``: ``(C_out, C_in, K)``.

    Double backward (``create_graph=True``) works on the reference; the fused Triton kernels
    raise ``NotImplementedError`` for it. Under ``torch.autocast`` it runs in the autocast dtype.
    """
    x, weight, bias = _autocast(x, weight, bias)
    check_conv(x, weight, bias, dilation, cu_seqlens)
    dilation = operator.index(dilation)  # an integer-like (validated) as the plain int the kernels take
    if _use_triton(x, weight):
        return triton_ops("conv", x).causal_conv1d(x, weight, bias, dilation=dilation, cu_seqlens=cu_seqlens)
    return reference.causal_conv1d(x, weight, bias, dilation=dilation, cu_seqlens=cu_seqlens)


def tcn_block(
    x, conv_weight, conv_bias=None, *, dilation=1, activation="relu", out_weight=None, out_bias=None, cu_seqlens=None
):
    """Residual TCN block.

    ``relu``: ``y = relu(x + relu(conv(x)))`` with ``conv_weight`` ``(C, C, K)``.
    ``gated``: ``a = conv(x)`` with ``conv_weight`` ``(2H, C, K)``,
    ``y = x + (tanh(a[:H]) * sigmoid(a[H:])) @ out_weight.T + out_bias``.

    Double backward as :func:`causal_conv1d`: the reference only. Under ``torch.autocast`` it runs
    in the autocast dtype.
    """
    x, conv_weight, conv_bias, out_weight, out_bias = _autocast(x, conv_weight, conv_bias, out_weight, out_bias)
    check_tcn_block(x, conv_weight, conv_bias, dilation, activation, out_weight, out_bias, cu_seqlens)
    dilation = operator.index(dilation)
    kwargs = {"dilation": dilation, "activation": activation, "out_weight": out_weight, "out_bias": out_bias,
                  "cu_seqlens": cu_seqlens}
    if _use_triton(x, conv_weight, activation):
        return triton_ops("conv", x).tcn_block(x, conv_weight, conv_bias, **kwargs)
    return reference.tcn_block(x, conv_weight, conv_bias, **kwargs)
