import os

import pytest
import torch

# With no GPU, the Triton backend runs in Triton's interpreter; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    benchmarking = config.getoption("benchmark_only", default=False)
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_bench = pytest.mark.skip(reason="benchmark: run with pytest tests/benchmarks --benchmark-only")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "benchmarks" in item.nodeid.split("/")[:2] and not benchmarking:
            item.add_marker(skip_bench)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
