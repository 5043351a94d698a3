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
    # Triton runs CPU tensors only in its interpreter, which a CUDA machine does not use (setting it there
    # would send the CUDA tests through the interpreter too): those tests run on machines without CUDA.
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    skip_interpreter = pytest.mark.skip(reason="Triton interpreter test: runs where there is no CUDA")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        on_interpreter = "interpreter" in item.keywords or "triton_backend" in getattr(item, "fixturenames", ())
        if on_interpreter and "cuda" not in item.keywords and not interpreting:
            item.add_marker(skip_interpreter)
        if "benchmarks" in item.nodeid.split("/")[:2] and not benchmarking:
            item.add_marker(skip_bench)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
