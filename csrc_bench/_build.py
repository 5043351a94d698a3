"""Run-time build of the ``.cu`` files in this folder with CuPy (NVRTC)."""

from __future__ import annotations

import functools
from pathlib import Path

HERE = Path(__file__).resolve().parent


@functools.cache
def load_module(source: str):
    """``cupy.RawModule`` of ``csrc_bench/<source>``, built once per process; its quoted includes
    (``dtypes.cuh``) resolve in this folder."""
    import cupy

    return cupy.RawModule(code=(HERE / source).read_text(), options=("--std=c++17", f"-I{HERE}"))
