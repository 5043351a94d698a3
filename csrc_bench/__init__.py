"""Hand-written CUDA C kernels, built at run time with CuPy: baselines the Triton kernels race against.

Each module builds its ``.cu`` file on first use and needs ``cupy`` (``pip install hiertcn[cuda]``)
and a CUDA GPU; the races live in ``tests/benchmarks``.
"""
