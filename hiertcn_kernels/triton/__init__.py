"""Triton kernels. Import only when ``triton`` is installed."""
