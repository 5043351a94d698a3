"""Choose between the Triton kernels and the PyTorch reference for each call.

Default: Triton for CUDA tensors, reference for CPU tensors. ``HIERTCN_BACKEND``
(``auto`` | ``reference`` | ``triton``) overrides it and is read at every call,
so it can be flipped at run time.

``triton`` on CPU tensors runs the real kernels in Triton's interpreter.
Triton fixes interpret mode when it is first imported (its standard library
is built then), so the choice is per process: on a machine with no CUDA we set
``TRITON_INTERPRET=1`` before importing Triton; on a CUDA machine, set it
yourself to run kernels on CPU tensors.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys

import torch

BACKENDS = ("auto", "reference", "triton")

HAS_TRITON = importlib.util.find_spec("triton") is not None


def backend_name() -> str:
    name = os.environ.get("HIERTCN_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"HIERTCN_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def launch_device(x: torch.Tensor):
    """Context for a kernel launch on ``x``: its GPU (Triton launches on the current device and stream,
    which need not be ``x``'s), or nothing for CPU tensors (the interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def use_triton(x: torch.Tensor) -> bool:
    """True when the op on ``x`` should run the Triton kernel."""
    name = backend_name()
    if name == "reference":
        return False
    if name == "triton":
        if not HAS_TRITON:
            raise RuntimeError("HIERTCN_BACKEND=triton but the triton package is not installed")
        return True
    return x.is_cuda and HAS_TRITON


_NO_INTERPRETER = (
    "Triton kernels on CPU tensors run in Triton's interpreter: set TRITON_INTERPRET=1 "
    "before triton is first imported (or use CUDA tensors, or HIERTCN_BACKEND=reference)"
)


def _interpreter_built() -> bool:
    """Whether Triton's standard library was built for the interpreter: it is fixed when triton is
    first imported, so TRITON_INTERPRET=1 set later (``import torch._dynamo`` imports triton) leaves
    compiled functions that the interpreter cannot call."""
    import triton
    import triton.language as tl

    return not isinstance(tl.sigmoid, triton.JITFunction)


def triton_ops(module: str, x: torch.Tensor):
    """Import ``hiertcn_kernels.triton.<module>`` ready to run on ``x``'s device."""
    if not x.is_cuda and not interpreting():
        if "triton" in sys.modules or torch.cuda.is_available():
            raise RuntimeError(_NO_INTERPRETER)
        os.environ["TRITON_INTERPRET"] = "1"
    ops = importlib.import_module(f"hiertcn_kernels.triton.{module}")
    if not x.is_cuda and not _interpreter_built():
        raise RuntimeError(f"{_NO_INTERPRETER}; it was set after triton had been imported")
    return ops
