"""hiertcn_kernels: fused Triton kernels for ragged session tensors, with PyTorch references.

Every op runs the Triton kernel on CUDA tensors and the reference (``reference.py``)
on CPU tensors; ``HIERTCN_BACKEND=reference|triton`` forces one at run time.
"""

from .conv import causal_conv1d, tcn_block
from .layers import CausalConv1d, SegmentAgg, TCNBlock, TemporalConvNet
from .packing import SessionCSR, pack_sessions
from .segment import segment_expand, segment_reduce

__all__ = [
    "causal_conv1d",
    "tcn_block",
    "segment_reduce",
    "segment_expand",
    "CausalConv1d",
    "TCNBlock",
    "TemporalConvNet",
    "SegmentAgg",
    "pack_sessions",
    "SessionCSR",
]
__version__ = "0.1.0"
