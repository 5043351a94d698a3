"""Reading a XING log to a packed SessionCSR: Arrow reader + Numba packer vs pandas.read_csv + pandas packer.

Rows default to 1M; set HIERTCN_BENCH_ROWS (e.g. 10000000) for the README number. Run with
``pytest tests/benchmarks/test_bench_readers.py --benchmark-only -s``.
"""

import os
import time

import numpy as np
import pandas as pd
import pytest

from hiertcn.data.pandas_packer import pack_sessions_pandas
from hiertcn.data.readers import read_log
from hiertcn.data.synthetic import generate_xing
from hiertcn_kernels.packing import pack_sessions

ROWS = int(os.environ.get("HIERTCN_BENCH_ROWS", "1000000"))
ROUNDS = 3


@pytest.fixture(scope="module")
def xing_file(tmp_path_factory):
    n_items = max(2000, ROWS // 80)  # the defaults' shape: ~57 events per user, ~40 items per topic
    files = generate_xing(
        tmp_path_factory.mktemp("bench_xing"),
        n_users=max(100, ROWS // 57),
        n_items=n_items,
        n_topics=n_items // 40,
        impressions=False,
    )
    return files.interactions


def arrow_to_csr(path):
    log = read_log(path)
    return pack_sessions(log.user, log.item, log.timestamp)


def pandas_to_csr(path):
    df = pd.read_csv(path, sep="\t")
    return pack_sessions_pandas(
        df["user_id"].to_numpy(), df["item_id"].to_numpy(), df["created_at"].to_numpy()
    )


def test_read_xing_to_csr(benchmark, xing_file):
    ours = arrow_to_csr(xing_file)  # also warms up Numba
    theirs = pandas_to_csr(xing_file)
    for name in ("user_ptr", "session_ptr", "item", "timestamp", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))

    baseline = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        pandas_to_csr(xing_file)
        baseline.append(time.perf_counter() - start)
    benchmark.pedantic(arrow_to_csr, args=(xing_file,), rounds=ROUNDS, iterations=1)
    ours_s, pandas_s = benchmark.stats.stats.min, min(baseline)
    benchmark.extra_info.update(
        rows=ours.n_interactions, pandas_s=pandas_s, speedup_vs_pandas=pandas_s / ours_s
    )
    print(
        f"\n{ours.n_interactions:,} rows -> CSR: arrow+numba {ours_s:.2f} s, "
        f"pandas.read_csv+pandas packer {pandas_s:.2f} s, speedup {pandas_s / ours_s:.2f}x"
    )
