"""pack_sessions (Numba) vs the pandas packer on the same synthetic log, in the same run.

    PYTHONPATH=. python -m pytest tests/benchmarks/test_bench_packing.py --benchmark-only -s

The 10M-interaction throughput and peak-RSS numbers come from benchmarks/bench_packing.py.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hiertcn.data.pandas_packer import pack_sessions_pandas
from hiertcn_kernels import pack_sessions

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_packing import synthetic_log

N = 1_000_000


@pytest.mark.parametrize("time_order", ["shuffled", "sorted"])
def test_bench_pack_sessions_vs_pandas(benchmark, time_order):
    log = synthetic_log(N, time_order=time_order)
    pack_sessions(*synthetic_log(1000))  # load the Numba cache outside the timing
    baseline = []
    for _ in range(3):
        start = time.perf_counter()
        expected = pack_sessions_pandas(*log)
        baseline.append(time.perf_counter() - start)
    csr = benchmark.pedantic(pack_sessions, args=log, rounds=5, warmup_rounds=1)
    for name in ("user_ptr", "session_ptr", "item", "timestamp", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(csr, name), getattr(expected, name), err_msg=name)
    speedup = min(baseline) / benchmark.stats.stats.min
    benchmark.extra_info.update(
        pandas_seconds=min(baseline),
        interactions_per_s=N / benchmark.stats.stats.min,
        speedup_vs_pandas=speedup,
    )
    print(f"\n{time_order}: pack_sessions {benchmark.stats.stats.min:.3f}s, pandas {min(baseline):.3f}s, {speedup:.1f}x")
